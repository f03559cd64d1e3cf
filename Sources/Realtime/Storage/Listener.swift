import Logging
import PostgresNIO
import ServiceLifecycle

/// LISTEN on a dedicated connection that is kept open: reconnects with backoff (100 ms doubling to 5 s) until
/// graceful shutdown or cancellation.
struct Listener: Sendable {
    let endpoint: DatabaseEndpoint
    let channel: String
    let logger: Logger

    /// Runs until shutdown. `connected` runs each time LISTEN is in place (nothing sent from then on is missed), with
    /// the connection, which may also run queries; `disconnected` each time it is lost; `receive` for each payload.
    func run(
        connected: @escaping @Sendable (PostgresConnection) -> Void = { _ in },
        disconnected: @escaping @Sendable () -> Void = {},
        receive: @escaping @Sendable (String) -> Void
    ) async {
        var backoff = Duration.milliseconds(100)
        while !Task.isShuttingDownGracefully && !Task.isCancelled {
            do {
                let connection = try await PostgresConnection.connect(
                    configuration: DatabaseProbe.connectionConfiguration(endpoint),
                    id: Int.random(in: 1...Int(Int32.max)),
                    logger: logger
                )
                backoff = .milliseconds(100)
                defer { disconnected() }
                do {
                    try await cancelWhenGracefulShutdown {
                        // PostgresNIO never answers a LISTEN written to a connection that closed meanwhile (killed
                        // right after it opened): give up on it then, and reconnect.
                        let notifications = try await Relay.whileOpen(connection) { try await connection.listen(channel) }
                        connected(connection)
                        for try await notification in notifications { receive(notification.payload) }
                    }
                } catch {
                    try? await connection.close()
                    throw error
                }
                try? await connection.close()
            } catch {
                if Task.isShuttingDownGracefully || Task.isCancelled { return }
                logger.info("listener reconnecting", metadata: ["channel": "\(channel)", "error": "\(String(reflecting: error))"])
                let delay = backoff
                try? await cancelWhenGracefulShutdown { try await Task.sleep(for: delay) }
                backoff = min(backoff * 2, .seconds(5))
            }
        }
    }
}
