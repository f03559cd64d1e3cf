import Hummingbird
import PostgresNIO

/// `GET /healthz` (the process answers) and `GET /readyz` (the database answers, every migration is applied, and —
/// with the change feed on — this node's feed follows the log and a relay keeps up with the WAL).
struct HealthController {
    let database: Database
    let migrations: [MigrationFile]
    /// This node's change feed, or nil when it is off.
    var feed: FeedHealth?
    /// The replication slot the relay streams.
    var slot: String

    func addRoutes(to router: Router<AppRequestContext>) {
        router.get("healthz") { _, _ in Response.json(.ok, #"{"status":"ok"}"#) }
        router.get("readyz") { _, context in
            if let problem = await database.readiness(migrations: migrations) { throw APIError.notReady("Not ready: \(problem).") }
            if let feed {
                let rows = try? await database.client.rowsIfOpen(
                    """
                    SELECT active, pg_wal_lsn_diff(pg_current_wal_lsn(), confirmed_flush_lsn)::float8, confirmed_flush_lsn::text
                    FROM pg_replication_slots WHERE slot_name = \(slot)
                    """,
                    logger: context.logger
                )
                let slotState = try? rows?.first?.decode((Bool, Double?, String?).self)
                if let problem = feed.problem(slotActive: slotState?.0, unconfirmedBytes: slotState?.1, confirmedLSN: slotState?.2) {
                    throw APIError.notReady("Not ready: \(problem).")
                }
            }
            return Response.json(.ok, #"{"status":"ready"}"#)
        }
    }
}
