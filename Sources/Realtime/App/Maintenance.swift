import Logging
import PostgresNIO
import ServiceLifecycle

/// Periodic housekeeping: deletes idempotency keys and events past their retention. Ends on graceful shutdown.
struct Maintenance: Service {
    let client: PostgresClient
    let logger: Logger
    let gate: StartupGate
    /// How long the event log keeps events.
    var eventRetention: Duration = .seconds(24 * 3600)
    var interval: Duration = .seconds(600)

    func run() async throws {
        do {
            try await cancelWhenGracefulShutdown { try await gate.wait() }
        } catch {
            return
        }
        while !Task.isShuttingDownGracefully && !Task.isCancelled {
            try? await cancelWhenGracefulShutdown { try await Task.sleep(for: interval) }
            if Task.isShuttingDownGracefully || Task.isCancelled { return }
            do {
                let seconds = Int(Idempotency.retention.components.seconds)
                try await client.rowsIfOpen(
                    "DELETE FROM realtime.idempotency_key WHERE created_at < now() - make_interval(secs => \(seconds))",
                    logger: logger
                )
            } catch {
                logger.warning("pruning idempotency keys failed", metadata: ["error": "\(String(reflecting: error))"])
            }
            do {
                let seconds = Int(eventRetention.components.seconds)
                try await client.rowsIfOpen(
                    "DELETE FROM realtime.event_log WHERE commit_time < now() - make_interval(secs => \(seconds))",
                    logger: logger
                )
                // Memberships that ended at or before the oldest event left say nothing about any event a replay can see.
                try await client.rowsIfOpen(
                    "DELETE FROM realtime.membership_interval WHERE until_seq <= (SELECT coalesce(min(seq), 0) FROM realtime.event_log)",
                    logger: logger
                )
            } catch {
                logger.warning("pruning the event log failed", metadata: ["error": "\(String(reflecting: error))"])
            }
        }
    }
}
