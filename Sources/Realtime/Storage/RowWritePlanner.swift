import Foundation

/// A row by table and id, whose branch a request needs.
public struct RowLocation: Hashable, Sendable {
    public var table: String
    public var id: UUID

    public init(table: String, id: UUID) {
        self.table = table
        self.id = id
    }
}

/// Who asks, what they are a member of, and in which branch each row a write names lies (nil: no such row), as read in
/// a write's first round trip: what the Swift policy decides with.
struct CallerView: Sendable {
    var principal: Principal
    var memberships: Memberships
    var located: [RowLocation: UUID?]

    /// The branch of a row the write named; nil when there is no such row.
    func branch(of row: RowLocation) -> UUID? { located[row] ?? nil }
}

/// A write the Swift policy allowed, for `realtime.commit_write` (migration 0008) to run as the caller: the statement
/// (returning one text, the row's JSON or the deleted id), the stale check before it (returning the stored row's JSON
/// and whether it is newer than the client's copy), and the values both read as `$1[n]`.
struct PlannedWrite: Sendable {
    var statement: String
    var staleCheck: String?
    var values: [String?]
}

/// The values of a planned write, handed over as one text array: each placeholder reads its element, and the statement
/// casts it to the column's type.
struct TextParameters {
    private(set) var values: [String?] = []

    mutating func bind(_ value: String?) -> String {
        values.append(value)
        return "($1[\(values.count)])"
    }

    mutating func bind(_ value: UUID?) -> String { bind(value?.uuidString.lowercased()) }
}

/// Plans the writes of one table: checks the body and the Swift policy (with their clear errors) and builds the
/// statement that `realtime.commit_write` runs under row-level security. No I/O: everything it needs is in the
/// ``CallerView``.
struct RowWritePlanner {
    let schema: TableSchema
    let caller: CallerView

    private var principal: Principal { caller.principal }
    private var table: String { identifier(schema.table) }

    /// The rows whose branch a write needs (the row it changes, the rows its body references), located in the write's
    /// first round trip.
    static func rowsToLocate(in schema: TableSchema, changing id: UUID?, body: [String: JSONValue]) -> [RowLocation] {
        var rows = id.map { [RowLocation(table: schema.table, id: $0)] } ?? []
        for reference in schema.references {
            guard case .string(let value)? = body[reference.column], let target = UUID(uuidString: value) else { continue }
            rows.append(RowLocation(table: reference.table, id: target))
        }
        return rows
    }

    /// Inserts a row from a create body; the statement returns the new row.
    func create(_ body: [String: JSONValue]) throws -> PlannedWrite {
        try RowValidator(schema: schema).validateCreate(body)
        let branch = try branchForCreate(body)
        try requireWrite(inBranch: branch)

        var fields = body
        let clientTime = fields.removeValue(forKey: "updated_at")?.stringValue
        fields.removeValue(forKey: "branch_id")
        let columns = fields.keys.sorted()
        var parameters = TextParameters()
        let record = parameters.bind(JSONValue.text(of: fields))
        let branchParameter = parameters.bind(branch)
        let userParameter = parameters.bind(principal.userID)
        let timeParameter = parameters.bind(clientTime)
        let names = (columns + ["branch_id", "updated_by", "updated_at"]).map(identifier).joined(separator: ", ")
        let values =
            (columns.map { "r." + identifier($0) } + [
                "\(branchParameter)::uuid", "\(userParameter)::uuid", "least(\(timeParameter)::timestamptz, clock_timestamp())",
            ]).joined(separator: ", ")
        let sql = """
            INSERT INTO \(table) (\(names)) SELECT \(values) FROM json_populate_record(NULL::\(table), \(record)::json) r
            RETURNING row_to_json(\(table).*)::text
            """
        return PlannedWrite(statement: sql, staleCheck: nil, values: parameters.values)
    }

    /// Applies a partial update; the statement returns the row. With the client's `updated_at`, the stale check locks
    /// the row and tells whether the stored one is newer (409 with the current row).
    func update(_ id: UUID, _ body: [String: JSONValue]) throws -> PlannedWrite {
        try RowValidator(schema: schema).validateUpdate(body)
        let branch = try visibleBranch(of: id)
        try requireWrite(inBranch: branch)
        for reference in schema.references {
            guard case .string(let value)? = body[reference.column], let target = UUID(uuidString: value) else { continue }
            if try referencedBranch(reference, target) != branch { throw reference.otherBranchError }
        }

        var fields = body
        let clientTime = fields.removeValue(forKey: "updated_at")?.stringValue
        var parameters = TextParameters()
        let idParameter = parameters.bind(id)
        let userParameter = parameters.bind(principal.userID)
        let timeParameter = parameters.bind(clientTime)
        let staleCheck = clientTime.map { _ in
            """
            SELECT row_to_json(t)::text, t.updated_at > least(\(timeParameter)::timestamptz, clock_timestamp())
            FROM \(table) t WHERE t.id = \(idParameter)::uuid FOR UPDATE
            """
        }
        var assignments = [
            "updated_by = \(userParameter)::uuid", "updated_at = least(\(timeParameter)::timestamptz, clock_timestamp())",
        ]
        let columns = fields.keys.sorted()
        if !columns.isEmpty {
            let record = parameters.bind(JSONValue.text(of: fields))
            let names = columns.map(identifier).joined(separator: ", ")
            let values = columns.map { "r." + identifier($0) }.joined(separator: ", ")
            assignments.insert("(\(names)) = (SELECT \(values) FROM json_populate_record(NULL::\(table), \(record)::json) r)", at: 0)
        }
        let sql = """
            UPDATE \(table) SET \(assignments.joined(separator: ", ")) WHERE id = \(idParameter)::uuid
            RETURNING row_to_json(\(table).*)::text
            """
        return PlannedWrite(statement: sql, staleCheck: staleCheck, values: parameters.values)
    }

    /// Deletes a row by id; the statement returns its id.
    func delete(_ id: UUID) throws -> PlannedWrite {
        let branch = try visibleBranch(of: id)
        try requireWrite(inBranch: branch)
        var parameters = TextParameters()
        let idParameter = parameters.bind(id)
        return PlannedWrite(
            statement: "DELETE FROM \(table) WHERE id = \(idParameter)::uuid RETURNING id::text", staleCheck: nil, values: parameters.values)
    }

    private func notFound(_ id: UUID) -> APIError { .rowNotVisible(schema.table, id) }

    // MARK: Policy and references

    /// The branch of an existing row the caller may see; 404 otherwise.
    private func visibleBranch(of id: UUID) throws -> UUID {
        guard let branch = caller.branch(of: RowLocation(table: schema.table, id: id)),
            Policy.decide(principal, caller.memberships, .read, schema.resource, inBranch: branch) == .allowed
        else { throw notFound(id) }
        return branch
    }

    private func requireWrite(inBranch branch: UUID) throws {
        switch Policy.decide(principal, caller.memberships, .write, schema.resource, inBranch: branch) {
        case .allowed: return
        case .notVisible: throw APIError.forbidden("You are not a member of this branch.")
        case .denied(let reason): throw APIError.forbidden(reason)
        }
    }

    /// The branch a new row belongs to: its `branch_id`, or the branch of the rows it references, which must agree.
    private func branchForCreate(_ body: [String: JSONValue]) throws -> UUID {
        var branch = body["branch_id"]?.stringValue.flatMap(UUID.init(uuidString:))
        for reference in schema.references {
            guard case .string(let value)? = body[reference.column], let target = UUID(uuidString: value) else { continue }
            let targetBranch = try referencedBranch(reference, target)
            if let known = branch, known != targetBranch { throw reference.otherBranchError }
            branch = targetBranch
        }
        guard let branch else { throw APIError.missingField("branch_id") }
        return branch
    }

    /// The branch of a referenced row the caller may see; 422 `invalid_reference` when there is none.
    private func referencedBranch(_ reference: Reference, _ id: UUID) throws -> UUID {
        guard let branch = caller.branch(of: RowLocation(table: reference.table, id: id)),
            Policy.decide(principal, caller.memberships, .read, .plan, inBranch: branch) == .allowed
        else {
            throw APIError.invalidReference("\(reference.column) \(id.uuidString.lowercased()) does not name a \(reference.table) you can see.")
        }
        return branch
    }
}
