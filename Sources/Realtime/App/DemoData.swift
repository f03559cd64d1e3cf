import Foundation
import Logging
import PostgresNIO

/// The demo seeded on the first embedded start: one branch, an admin, an editor and a viewer, and a plan with a
/// few tasks. Its ids are fixed so that the README's walk-through can name them.
public enum DemoData {
    public static let branchID = UUID(uuidString: "11111111-1111-4111-8111-111111111111")!
    public static let planID = UUID(uuidString: "22222222-2222-4222-8222-222222222222")!

    /// A demo user and their role in the demo branch.
    public struct User: Sendable {
        public var id: UUID
        public var name: String
        public var role: MemberRole
    }

    public static let users = [
        User(id: UUID(uuidString: "aaaaaaaa-0000-4000-8000-000000000001")!, name: "Demo admin", role: .admin),
        User(id: UUID(uuidString: "aaaaaaaa-0000-4000-8000-000000000002")!, name: "Demo editor", role: .editor),
        User(id: UUID(uuidString: "aaaaaaaa-0000-4000-8000-000000000003")!, name: "Demo viewer", role: .viewer),
    ]

    /// Seeds the demo when the database has no branch yet; returns whether it did.
    @discardableResult
    public static func seedIfEmpty(client: PostgresClient, logger: Logger) async throws -> Bool {
        try await client.withConnection { connection in
            try await connection.queryIfOpen("BEGIN", logger: logger)
            do {
                try await connection.queryIfOpen("LOCK TABLE branch IN EXCLUSIVE MODE", logger: logger)
                let existing = try await connection.queryIfOpen("SELECT count(*) FROM branch", logger: logger).decode(Int.self)
                var count = 0
                for try await value in existing { count = value }
                guard count == 0 else {
                    try await connection.queryIfOpen("ROLLBACK", logger: logger)
                    return false
                }
                try await connection.queryIfOpen("INSERT INTO branch (id, name) VALUES (\(branchID), 'Demo branch')", logger: logger)
                for user in users {
                    try await connection.queryIfOpen("INSERT INTO app_user (id, display_name) VALUES (\(user.id), \(user.name))", logger: logger)
                    try await connection.queryIfOpen(
                        "INSERT INTO branch_member (branch_id, user_id, role) VALUES (\(branchID), \(user.id), \(user.role.rawValue))",
                        logger: logger
                    )
                }
                try await connection.queryIfOpen(
                    """
                    INSERT INTO plan (id, branch_id, title, period_start, period_end, updated_by)
                    VALUES (\(planID), \(branchID), 'Demo week', current_date, current_date + 6, \(users[0].id))
                    """,
                    logger: logger
                )
                let tasks: [(String, Int, String)] = [("Morning shift", 9, "taken"), ("Client visit", 13, "done"), ("Weekly report", 16, "posted")]
                for (title, hour, status) in tasks {
                    try await connection.queryIfOpen(
                        """
                        INSERT INTO task (branch_id, plan_id, title, starts_at, ends_at, status, updated_by)
                        VALUES (\(branchID), \(planID), \(title), date_trunc('day', now()) + make_interval(hours => \(hour)::int),
                                date_trunc('day', now()) + make_interval(hours => \(hour + 2)::int), \(status), \(users[1].id))
                        """,
                        logger: logger
                    )
                }
                try await connection.queryIfOpen("COMMIT", logger: logger)
                logger.info("seeded the demo branch, users and plan")
                return true
            } catch {
                _ = try? await connection.queryIfOpen("ROLLBACK", logger: logger)
                throw error
            }
        }
    }
}
