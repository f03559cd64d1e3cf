import Foundation
import Logging
import PostgresNIO
import ServiceLifecycle

/// Follows the event log on every node and hands new events, in order, to the fan-out.
///
/// It wakes on the relay's NOTIFY (on a dedicated LISTEN connection) and also polls every `pollInterval`, so a lost
/// notification or a dropped connection costs at most one interval. It reads by sequence number, so after any
/// reconnect it re-reads exactly from where it stopped.
public struct Tailer: Service {
    let client: PostgresClient
    let endpoint: DatabaseEndpoint
    let logger: Logger
    let gate: StartupGate
    let prepare: @Sendable () async throws -> Int64
    let read: @Sendable () -> Void
    let deliver: @Sendable ([ChangeEvent]) async -> Void
    var pollInterval: Duration = .milliseconds(250)
    var batchSize = 1000

    /// - Parameters:
    ///   - gate: opens when the schema is ready.
    ///   - prepare: runs once the gate is open; loads what the fan-out needs and returns the newest sequence it accounts
    ///     for, from which the tailer follows.
    ///   - read: told each time the log was read to its end (for `/readyz`).
    ///   - deliver: receives each batch of new events, in sequence order.
    public init(
        client: PostgresClient,
        endpoint: DatabaseEndpoint,
        gate: StartupGate,
        logger: Logger,
        prepare: @escaping @Sendable () async throws -> Int64,
        read: @escaping @Sendable () -> Void = {},
        deliver: @escaping @Sendable ([ChangeEvent]) async -> Void
    ) {
        self.client = client
        self.endpoint = endpoint
        self.gate = gate
        self.logger = logger
        self.prepare = prepare
        self.read = read
        self.deliver = deliver
    }

    public func run() async throws {
        do {
            try await cancelWhenGracefulShutdown { try await gate.wait() }
        } catch {
            return
        }
        let startAfter = try await prepare()
        let (wakeUps, waker) = AsyncStream.makeStream(of: Void.self, bufferingPolicy: .bufferingNewest(1))
        await withTaskGroup(of: Void.self) { group in
            group.addTask { await listen(waker) }
            group.addTask { await tick(waker) }
            group.addTask { await follow(wakeUps, from: startAfter) }
            await group.next()
            group.cancelAll()
        }
    }

    /// Reads and delivers whatever is new each time it is woken, until shutdown.
    private func follow(_ wakeUps: AsyncStream<Void>, from startAfter: Int64) async {
        var cursor = startAfter
        var iterator = wakeUps.makeAsyncIterator()
        while !Task.isShuttingDownGracefully && !Task.isCancelled {
            do {
                while true {
                    let events = try await EventLog.read(after: cursor, limit: batchSize, client: client, logger: logger)
                    guard let last = events.last else { break }
                    await deliver(events)
                    cursor = last.sequence
                    if events.count < batchSize { break }
                }
                read()
            } catch {
                logger.warning("reading the event log failed", metadata: ["error": "\(String(reflecting: error))"])
            }
            // The ticker finishes the wake-ups at shutdown, which ends this loop.
            guard await iterator.next() != nil else { return }
        }
    }

    /// Wakes the reader every poll interval: the fallback when a notification is missed.
    private func tick(_ waker: AsyncStream<Void>.Continuation) async {
        while (try? await cancelWhenGracefulShutdown { try await Task.sleep(for: pollInterval) }) != nil {
            waker.yield()
        }
        waker.finish()
    }

    /// LISTENs for the relay's wake-up on a dedicated connection, reconnecting with backoff.
    private func listen(_ waker: AsyncStream<Void>.Continuation) async {
        // Re-read after (re)connecting: a notification may have been missed meanwhile.
        await Listener(endpoint: endpoint, channel: EventLog.wakeUpChannel, logger: logger).run(
            connected: { _ in waker.yield() },
            receive: { _ in waker.yield() }
        )
    }
}
