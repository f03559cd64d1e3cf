import Foundation
import PostgresNIO

/// Reads and writes the rows of one table for one request, checking the Swift policy before every statement and
/// running every statement as the caller, so that row-level security checks it a second time.
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

    // MARK: Writes

    /// Inserts a row from a create body and returns it.
    func create(_ body: [String: JSONValue]) async throws -> String {
        try RowValidator(schema: schema).validateCreate(body)
        let branch = try await branchForCreate(body)
        try requireWrite(inBranch: branch, creating: true)

        var fields = body
        let clientTime = fields.removeValue(forKey: "updated_at")?.stringValue
        fields.removeValue(forKey: "branch_id")
        let columns = fields.keys.sorted()
        var builder = SQLBuilder()
        let record = builder.bind(JSONValue.text(of: fields))
        let branchParameter = builder.bind(branch)
        let userParameter = builder.bind(principal.userID)
        let timeParameter = builder.bind(clientTime)
        let names = (columns + ["branch_id", "updated_by", "updated_at"]).map(identifier).joined(separator: ", ")
        let values =
            (columns.map { "r." + identifier($0) } + [
                "\(branchParameter)::uuid", "\(userParameter)::uuid", "least(\(timeParameter)::timestamptz, clock_timestamp())",
            ]).joined(separator: ", ")
        let sql = """
            INSERT INTO \(table) (\(names)) SELECT \(values) FROM json_populate_record(NULL::\(table), \(record)::json) r
            RETURNING row_to_json(\(table).*)::text
            """
        return try await transaction.texts(builder.query(sql))[0]
    }

    /// Applies a partial update and returns the row; 409 with the current row when the stored row is newer than
    /// the client's `updated_at`.
    func update(_ id: UUID, _ body: [String: JSONValue]) async throws -> String {
        try RowValidator(schema: schema).validateUpdate(body)
        let branch = try await visibleBranch(of: id)
        try requireWrite(inBranch: branch, creating: false)
        for reference in schema.references {
            guard case .string(let value)? = body[reference.column], let target = UUID(uuidString: value) else { continue }
            let targetBranch = try await referencedBranch(reference, target)
            if targetBranch != branch { throw reference.otherBranchError }
        }

        var fields = body
        let clientTime = fields.removeValue(forKey: "updated_at")?.stringValue
        if let clientTime {
            var builder = SQLBuilder()
            let idParameter = builder.bind(id)
            let timeParameter = builder.bind(clientTime)
            let rows = try await transaction.query(
                builder.query(
                    """
                    SELECT row_to_json(t)::text, t.updated_at > least(\(timeParameter)::timestamptz, clock_timestamp())
                    FROM \(table) t WHERE t.id = \(idParameter) FOR UPDATE
                    """
                )
            )
            guard let row = rows.first else { throw notFound(id) }
            let (current, isNewer) = try row.decode((String, Bool).self)
            if isNewer { throw APIError.staleUpdate(current: current) }
        }

        let columns = fields.keys.sorted()
        var builder = SQLBuilder()
        let idParameter = builder.bind(id)
        let userParameter = builder.bind(principal.userID)
        let timeParameter = builder.bind(clientTime)
        var assignments = [
            "updated_by = \(userParameter)::uuid", "updated_at = least(\(timeParameter)::timestamptz, clock_timestamp())",
        ]
        if !columns.isEmpty {
            let record = builder.bind(JSONValue.text(of: fields))
            let names = columns.map(identifier).joined(separator: ", ")
            let values = columns.map { "r." + identifier($0) }.joined(separator: ", ")
            assignments.insert(
                "(\(names)) = (SELECT \(values) FROM json_populate_record(NULL::\(table), \(record)::json) r)",
                at: 0
            )
        }
        let sql = """
            UPDATE \(table) SET \(assignments.joined(separator: ", ")) WHERE id = \(idParameter)
            RETURNING row_to_json(\(table).*)::text
            """
        guard let row = try await transaction.texts(builder.query(sql)).first else { throw notFound(id) }
        return row
    }

    /// Deletes a row by id.
    func delete(_ id: UUID) async throws {
        let branch = try await visibleBranch(of: id)
        try requireWrite(inBranch: branch, creating: false)
        let rows = try await transaction.query(PostgresQuery(unsafeSQL: "DELETE FROM \(table) WHERE id = $1 RETURNING id", binds: binds(id)))
        if rows.isEmpty { throw notFound(id) }
    }

    // MARK: Policy and references

    /// The rows whose branch a write needs (the row it changes, the rows its body references), for the transaction to
    /// locate in its first statement.
    static func rowsToLocate(in schema: TableSchema, changing id: UUID?, body: [String: JSONValue]) -> [RowLocation] {
        var rows = id.map { [RowLocation(table: schema.table, id: $0)] } ?? []
        for reference in schema.references {
            guard case .string(let value)? = body[reference.column], let target = UUID(uuidString: value) else { continue }
            rows.append(RowLocation(table: reference.table, id: target))
        }
        return rows
    }

    /// The branch of an existing row the caller may see; 404 otherwise.
    private func visibleBranch(of id: UUID) async throws -> UUID {
        guard let branch = try await transaction.branch(of: RowLocation(table: schema.table, id: id)),
            Policy.decide(principal, memberships, .read, schema.resource, inBranch: branch) == .allowed
        else { throw notFound(id) }
        return branch
    }

    private func requireWrite(inBranch branch: UUID, creating: Bool) throws {
        switch Policy.decide(principal, memberships, .write, schema.resource, inBranch: branch) {
        case .allowed: return
        case .notVisible: throw APIError.forbidden("You are not a member of this branch.")
        case .denied(let reason): throw APIError.forbidden(reason)
        }
    }

    /// The branch a new row belongs to: its `branch_id`, or the branch of the rows it references, which must agree.
    private func branchForCreate(_ body: [String: JSONValue]) async throws -> UUID {
        var branch = body["branch_id"]?.stringValue.flatMap(UUID.init(uuidString:))
        for reference in schema.references {
            guard case .string(let value)? = body[reference.column], let target = UUID(uuidString: value) else { continue }
            let targetBranch = try await referencedBranch(reference, target)
            if let known = branch, known != targetBranch { throw reference.otherBranchError }
            branch = targetBranch
        }
        guard let branch else { throw APIError.missingField("branch_id") }
        return branch
    }

    /// The branch of a referenced row the caller may see; 422 `invalid_reference` when there is none.
    private func referencedBranch(_ reference: Reference, _ id: UUID) async throws -> UUID {
        guard let branch = try await transaction.branch(of: RowLocation(table: reference.table, id: id)),
            Policy.decide(principal, memberships, .read, .plan, inBranch: branch) == .allowed
        else {
            throw APIError.invalidReference("\(reference.column) \(id.uuidString.lowercased()) does not name a \(reference.table) you can see.")
        }
        return branch
    }

    private func notFound(_ id: UUID) -> APIError {
        .notFound("No \(schema.table) with id \(id.uuidString.lowercased()) is visible to you.")
    }

    private func binds(_ id: UUID) -> PostgresBindings {
        var bindings = PostgresBindings()
        bindings.append(id)
        return bindings
    }
}
