import Foundation
import Hummingbird
import PostgresNIO

/// Branches, users and memberships: `POST /branches`, `POST /users`, and a branch's members.
///
/// The service role may do all of it; a branch's admin manages that branch's members and may create users.
struct AdminController {
    let database: Database
    let maxBodyBytes: Int

    func addRoutes(to group: RouterGroup<AppRequestContext>) {
        group.get("branches", use: listBranches)
        group.post("branches", use: createBranch)
        group.post("users", use: createUser)
        group.get("branches/:branch_id/members", use: listMembers)
        group.put("branches/:branch_id/members/:user_id", use: putMember)
        group.delete("branches/:branch_id/members/:user_id", use: deleteMember)
    }

    @Sendable func listBranches(request: Request, context: AppRequestContext) async throws -> Response {
        let principal = try context.requirePrincipal()
        let rows = try await database.withRequestTransaction(as: principal) { transaction in
            let memberships = transaction.memberships()
            return try await transaction.texts(
                """
                SELECT row_to_json(b)::text FROM branch b
                WHERE \(principal.isService) OR b.id = ANY(\(memberships.branchIDs)::uuid[])
                ORDER BY b.name, b.id
                """
            )
        }
        return .json(.ok, "[" + rows.joined(separator: ",") + "]")
    }

    @Sendable func createBranch(request: Request, context: AppRequestContext) async throws -> Response {
        let principal = try context.requirePrincipal()
        guard Policy.mayCreateBranch(principal) else { throw APIError.forbidden("Only the service role creates branches.") }
        var request = request
        let (body, bytes) = try await request.jsonObject(limit: maxBodyBytes)
        let fields = try Self.fields(body, allowed: ["id": .uuid, "name": .text], required: ["name"], table: "branch")
        return try await database.withIdempotentCreate(as: principal, Idempotency(request: request, body: bytes)) { transaction in
            try await transaction.texts(
                """
                INSERT INTO branch (id, name, updated_by)
                VALUES (coalesce(\(fields["id"])::uuid, gen_random_uuid()), \(fields["name"]), \(principal.userID))
                RETURNING row_to_json(branch.*)::text
                """
            )[0]
        }
    }

    @Sendable func createUser(request: Request, context: AppRequestContext) async throws -> Response {
        let principal = try context.requirePrincipal()
        var request = request
        let (body, bytes) = try await request.jsonObject(limit: maxBodyBytes)
        let fields = try Self.fields(body, allowed: ["id": .uuid, "display_name": .text], required: ["display_name"], table: "app_user")
        return try await database.withIdempotentCreate(as: principal, Idempotency(request: request, body: bytes)) { transaction in
            guard Policy.mayCreateUser(principal, transaction.memberships()) else {
                throw APIError.forbidden("Only the service role or a branch admin creates users.")
            }
            return try await transaction.texts(
                """
                INSERT INTO app_user (id, display_name, created_by, updated_by)
                VALUES (coalesce(\(fields["id"])::uuid, gen_random_uuid()), \(fields["display_name"]), \(principal.userID), \(principal.userID))
                RETURNING row_to_json(app_user.*)::text
                """
            )[0]
        }
    }

    @Sendable func listMembers(request: Request, context: AppRequestContext) async throws -> Response {
        let branch = try context.uuidParameter("branch_id")
        let principal = try context.requirePrincipal()
        let rows = try await database.withRequestTransaction(as: principal) { transaction in
            try await requireBranch(branch, access: .read, in: transaction)
            // With each member's display name as the caller may read it (row-level security on app_user: the people of
            // the caller's branches), so that a page can name who is present while presence itself carries ids only.
            return try await transaction.texts(
                """
                SELECT row_to_json(listed)::text FROM (
                    SELECT m.*, u.display_name FROM branch_member m LEFT JOIN app_user u ON u.id = m.user_id
                    WHERE m.branch_id = \(branch) ORDER BY m.created_at, m.id
                ) listed
                """
            )
        }
        return .json(.ok, "[" + rows.joined(separator: ",") + "]")
    }

    @Sendable func putMember(request: Request, context: AppRequestContext) async throws -> Response {
        let branch = try context.uuidParameter("branch_id")
        let user = try context.uuidParameter("user_id")
        let principal = try context.requirePrincipal()
        var request = request
        let (body, _) = try await request.jsonObject(limit: maxBodyBytes)
        let fields = try Self.fields(body, allowed: ["role": .oneOf(MemberRole.allCases.map(\.rawValue))], required: ["role"], table: "branch_member")
        let (created, row) = try await database.withRequestTransaction(as: principal) { transaction in
            try await requireBranch(branch, access: .write, in: transaction)
            do {
                let rows = try await transaction.query(
                    """
                    INSERT INTO branch_member (branch_id, user_id, role, updated_by)
                    VALUES (\(branch), \(user), \(fields["role"]), \(principal.userID))
                    ON CONFLICT (branch_id, user_id) DO UPDATE SET role = excluded.role, updated_by = excluded.updated_by
                    RETURNING (xmax = 0), row_to_json(branch_member.*)::text
                    """
                )
                return try rows[0].decode((Bool, String).self)
            } catch let error as PSQLError where error.sqlState == "23503" {
                throw APIError.notFound("No user with id \(user.uuidString.lowercased()).")
            }
        }
        return .json(created ? .created : .ok, row)
    }

    @Sendable func deleteMember(request: Request, context: AppRequestContext) async throws -> Response {
        let branch = try context.uuidParameter("branch_id")
        let user = try context.uuidParameter("user_id")
        try await database.withRequestTransaction(as: context.requirePrincipal()) { transaction in
            try await requireBranch(branch, access: .write, in: transaction)
            let rows = try await transaction.query(
                "DELETE FROM branch_member WHERE branch_id = \(branch) AND user_id = \(user) RETURNING id"
            )
            if rows.isEmpty { throw APIError.notFound("That user is not a member of this branch.") }
        }
        return .noContent
    }

    /// 404 when the branch does not exist or the caller is not in it; 403 when their role is too low.
    private func requireBranch(_ branch: UUID, access: Access, in transaction: RequestTransaction) async throws {
        let memberships = transaction.memberships()
        let exists = try await !transaction.query("SELECT 1 FROM branch WHERE id = \(branch)").isEmpty
        let decision = Policy.decide(transaction.principal, memberships, access, .branchMember, inBranch: branch)
        guard exists, decision != .notVisible else { throw APIError.notFound("No branch with id \(branch.uuidString.lowercased()).") }
        if case .denied(let reason) = decision { throw APIError.forbidden(reason) }
    }

    /// Checks a small body against allowed fields and types; returns string values by name.
    static func fields(
        _ body: [String: JSONValue],
        allowed: [String: ColumnKind],
        required: [String],
        table: String
    ) throws(APIError) -> [String: String] {
        var values: [String: String] = [:]
        for (name, value) in body {
            guard let kind = allowed[name] else { throw .unknownField(name, table: table) }
            guard case .string(let text) = value else { throw .invalidValue("\(name) must be a string, not \(value.typeName).") }
            switch kind {
            case .uuid where UUID(uuidString: text) == nil: throw .invalidValue("\(name) must be a uuid; got '\(text)'.")
            case .oneOf(let options) where !options.contains(text):
                throw .invalidValue("\(name) must be one of \(options.joined(separator: ", ")); got '\(text)'.")
            default: values[name] = text
            }
        }
        for name in required where values[name] == nil { throw .missingField(name) }
        return values
    }
}

extension Database {
    /// Runs one of the admin endpoints' creates in a request transaction, honouring an `Idempotency-Key`: 201 with the new row, or the replay of
    /// the first answer given to that key.
    func withIdempotentCreate(
        as principal: Principal,
        _ idempotency: Idempotency?,
        _ create: @escaping (RequestTransaction) async throws -> String
    ) async throws -> Response {
        let (status, body, replayed) = try await withRequestTransaction(as: principal) { transaction in
            if let idempotency, let stored = try await idempotency.claim(in: transaction) {
                return (stored.status, stored.body, true)
            }
            let row = try await create(transaction)
            try await idempotency?.record(status: 201, body: row, in: transaction)
            return (201, row, false)
        }
        var headers = HTTPFields()
        if replayed { headers[Idempotency.replayedHeader] = "true" }
        return .json(HTTPResponse.Status(code: status), body, headers: headers)
    }
}
