import Foundation
import Hummingbird
import PostgresNIO

/// Consistent starting points for a client: a plan with its tasks, or a branch's client cards, plus the cursor from
/// which to stream so that nothing committed after the snapshot is missed and nothing in it is repeated.
///
/// Both read in one REPEATABLE READ transaction as the caller, so the rows, the log head and PostgreSQL's snapshot
/// (which transactions were visible) all describe the same moment.
struct SnapshotController {
    let database: Database

    func addRoutes(to group: RouterGroup<AppRequestContext>) {
        group.get("plans/:id/snapshot", use: planSnapshot)
        group.get("branches/:branch_id/client_cards/snapshot", use: clientCardSnapshot)
    }

    @Sendable func planSnapshot(request: Request, context: AppRequestContext) async throws -> Response {
        let plan = try context.uuidParameter("id")
        let body = try await database.withRequestTransaction(as: context.requirePrincipal(), repeatableRead: true) { transaction in
            let cursor = try await Self.cursor(in: transaction)
            let store = RowStore(schema: .plan, transaction: transaction, memberships: transaction.memberships())
            let planRow = try await store.get(plan)
            let tasks = try await transaction.texts(
                "SELECT row_to_json(t)::text FROM task t WHERE t.plan_id = \(plan) ORDER BY t.starts_at, t.id"
            )
            return #"{"plan":"# + planRow + #","tasks":["# + tasks.joined(separator: ",") + #"],"cursor":"# + JSONText.quote(cursor) + "}"
        }
        return .json(.ok, body)
    }

    @Sendable func clientCardSnapshot(request: Request, context: AppRequestContext) async throws -> Response {
        let branch = try context.uuidParameter("branch_id")
        let principal = try context.requirePrincipal()
        let body = try await database.withRequestTransaction(as: principal, repeatableRead: true) { transaction in
            let cursor = try await Self.cursor(in: transaction)
            let memberships = transaction.memberships()
            guard Policy.decide(principal, memberships, .read, .clientCard, inBranch: branch) == .allowed else {
                throw APIError.notFound("No branch with id \(branch.uuidString.lowercased()).")
            }
            let cards = try await transaction.texts(
                "SELECT row_to_json(c)::text FROM client_card c WHERE c.branch_id = \(branch) ORDER BY c.name, c.id"
            )
            return #"{"client_cards":["# + cards.joined(separator: ",") + #"],"cursor":"# + JSONText.quote(cursor) + "}"
        }
        return .json(.ok, body)
    }

    /// The log head and the transaction's snapshot, read before any row so that all share one snapshot.
    static func cursor(in transaction: RequestTransaction) async throws -> String {
        let rows = try await transaction.query("SELECT realtime.event_log_head(), pg_current_snapshot()::text")
        let (head, snapshot) = try rows[0].decode((Int64, String).self)
        guard let cursor = Cursor("\(head)~\(snapshot)") else { return String(head) }
        return cursor.description
    }
}
