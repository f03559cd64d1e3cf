import Foundation
import PostgresNIO

/// Reads the rows of one table for one request, checking the Swift policy and running every statement as the caller,
/// so that row-level security checks it a second time. Writes are planned by ``RowWritePlanner``.
///
/// Rows travel as JSON text made by PostgreSQL (`row_to_json`), so field names are the column names.
struct RowStore {
    let schema: TableSchema
    let transaction: RequestTransaction
    let memberships: Memberships

    private var principal: Principal { transaction.principal }
    private var table: String { identifier(schema.table) }

    // MARK: Reads

    /// The rows that match `query`, as a JSON array.
    func list(_ query: ListQuery) async throws -> String {
        var builder = SQLBuilder()
        var conditions: [String] = []
        if !principal.isService {
            conditions.append("t.branch_id = ANY(\(builder.bind(memberships.branchIDs))::uuid[])")
        }
        for filter in query.filters {
            guard let column = schema.column(filter.column) else { continue }
            let name = "t." + identifier(column.name)
            let type = column.kind.sqlType
            let condition: String
            switch filter.op {
            case .eq: condition = "\(name) = \(builder.bind(filter.values[0]))::\(type)"
            case .neq: condition = "\(name) <> \(builder.bind(filter.values[0]))::\(type)"
            case .lt: condition = "\(name) < \(builder.bind(filter.values[0]))::\(type)"
            case .lte: condition = "\(name) <= \(builder.bind(filter.values[0]))::\(type)"
            case .gt: condition = "\(name) > \(builder.bind(filter.values[0]))::\(type)"
            case .gte: condition = "\(name) >= \(builder.bind(filter.values[0]))::\(type)"
            case .in: condition = "\(name) = ANY(\(builder.bind(filter.values))::text[]::\(type)[])"
            case .is: condition = "\(name) IS NULL"
            }
            conditions.append(filter.negated ? "NOT (\(condition))" : condition)
        }
        let orderTerms = query.order.map { "t.\(identifier($0.column)) \($0.descending ? "DESC" : "ASC")" } + ["t.id ASC"]
        let whereClause = conditions.isEmpty ? "" : "WHERE " + conditions.joined(separator: " AND ")
        let limit = builder.bind(query.limit)
        let offset = builder.bind(query.offset)
        let sql = """
            SELECT row_to_json(t)::text FROM \(table) t \(whereClause)
            ORDER BY \(orderTerms.joined(separator: ", ")) LIMIT \(limit) OFFSET \(offset)
            """
        let rows = try await transaction.texts(builder.query(sql))
        return "[" + rows.joined(separator: ",") + "]"
    }

    /// One row by id; 404 when it does not exist or lies in a branch the caller cannot see.
    func get(_ id: UUID) async throws -> String {
        let rows = try await transaction.query(
            PostgresQuery(unsafeSQL: "SELECT row_to_json(t)::text, t.branch_id FROM \(table) t WHERE t.id = $1", binds: binds(id))
        )
        guard let row = rows.first else { throw notFound(id) }
        let (json, branch) = try row.decode((String, UUID).self)
        guard Policy.decide(principal, memberships, .read, schema.resource, inBranch: branch) == .allowed else { throw notFound(id) }
        return json
    }

    private func notFound(_ id: UUID) -> APIError { .rowNotVisible(schema.table, id) }

    private func binds(_ id: UUID) -> PostgresBindings {
        var bindings = PostgresBindings()
        bindings.append(id)
        return bindings
    }
}
