import Foundation
import Logging
import PostgresNIO
import ServiceLifecycle
import Synchronization

/// Carries ephemeral messages between the nodes that share one database, with LISTEN/NOTIFY on one dedicated
/// connection, outside any user transaction.
///
/// Messages are best effort, as presence is: while the connection is down, messages to send are dropped (heartbeats
/// repeat every few seconds, and a missed leave expires within the presence TTL). Each (re)connection says `hello`, so
/// that the other nodes announce the entries they hold.
public final class NodeBus: Sendable {
    /// The NOTIFY channel.
    public static let channel = "realtime_ephemeral"
    /// PostgreSQL refuses NOTIFY payloads of 8000 bytes or more.
    static let maxPayloadBytes = 7900

    public let nodeID: String
    let endpoint: DatabaseEndpoint
    let logger: Logger
    private let outbox: AsyncStream<EphemeralMessage>
    private let outboxInput: AsyncStream<EphemeralMessage>.Continuation
    private let connection = Mutex<PostgresConnection?>(nil)

    public init(endpoint: DatabaseEndpoint, nodeID: String, logger: Logger) {
        self.endpoint = endpoint
        self.nodeID = nodeID
        self.logger = logger
        (outbox, outboxInput) = AsyncStream.makeStream(of: EphemeralMessage.self, bufferingPolicy: .bufferingNewest(10_000))
    }

    /// Queues a message for the other nodes.
    public func publish(_ message: EphemeralMessage) { outboxInput.yield(message) }

    /// Whether the bus is connected now.
    public var isConnected: Bool { connection.withLock { $0 != nil } }

    /// Runs until shutdown: keeps the connection, hands every other node's message to `receive`, and sends the outbox.
    func run(receive: @escaping @Sendable (EphemeralMessage) -> Void) async {
        await withTaskGroup(of: Void.self) { group in
            group.addTask {
                await self.keepListening(receive)
                self.logger.debug("node bus: listener stopped")
            }
            group.addTask {
                await self.send()
                self.logger.debug("node bus: sender stopped")
            }
            await group.next()
            group.cancelAll()
        }
    }

    private func keepListening(_ receive: @escaping @Sendable (EphemeralMessage) -> Void) async {
        await Listener(endpoint: endpoint, channel: Self.channel, logger: logger).run(
            connected: { connection in
                // LISTEN is in place: from now on nothing another node says is missed.
                self.connection.withLock { $0 = connection }
                self.publish(.hello(from: self.nodeID))
            },
            disconnected: { self.connection.withLock { $0 = nil } },
            receive: { payload in
                guard let message = EphemeralMessage.decode(payload), message.node != self.nodeID else { return }
                receive(message)
            }
        )
        outboxInput.finish()
    }

    private func send() async {
        for await message in outbox.cancelOnGracefulShutdown() {
            guard let connection = connection.withLock({ $0 }) else { continue }
            do {
                let payload = try message.encoded()
                guard payload.utf8.count <= Self.maxPayloadBytes else {
                    logger.warning("ephemeral message too large for NOTIFY; dropped", metadata: ["bytes": "\(payload.utf8.count)"])
                    continue
                }
                // A connection that closed meanwhile (terminated, or closed by the listener at shutdown) fails the NOTIFY
                // at once, so the bus never hangs a shutdown.
                try await connection.rowsIfOpen("SELECT pg_notify(\(Self.channel), \(payload))", logger: logger)
            } catch {
                logger.debug("sending an ephemeral message failed", metadata: ["error": "\(String(reflecting: error))"])
            }
        }
    }
}
