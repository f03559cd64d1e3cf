import Logging
import PostgresNIO
import ServiceLifecycle

/// Periodic housekeeping: deletes idempotency keys past their retention. Ends on graceful shutdown.
struct Maintenance: Service {
    let client: PostgresClient
    let logger: Logger
    var interval: Duration = .seconds(600)

    func run() async throws {
        while !Task.isShuttingDownGracefully && !Task.isCancelled {
            try? await cancelWhenGracefulShutdown { try await Task.sleep(for: interval) }
            if Task.isShuttingDownGracefully || Task.isCancelled { return }
            do {
                let seconds = Int(Idempotency.retention.components.seconds)
                try await client.query(
                    "DELETE FROM realtime.idempotency_key WHERE created_at < now() - make_interval(secs => \(seconds))",
                    logger: logger
                )
            } catch {
                logger.warning("pruning idempotency keys failed", metadata: ["error": "\(String(reflecting: error))"])
            }
        }
    }
}
