import Foundation
import Logging
import PostgresNIO
import ServiceLifecycle
import Synchronization

/// Moves committed changes from the WAL into the event log, on exactly one node at a time.
///
/// Every node runs a `Relay`; the one that holds a PostgreSQL advisory lock is the leader. The leader reads the
/// replication slot (pgoutput), appends each batch of transactions to `realtime.event_log` in one transaction on the
/// same connection that holds the lock (so a node that lost the lock cannot write), sends one NOTIFY per batch, and
/// only then confirms the slot's flush position. A crash at any moment therefore loses nothing, and a transaction
/// decoded twice is skipped by the log's unique key on (commit LSN, index). When the leader dies, its session ends,
/// the lock is released, and another node's relay takes over within its retry interval.
public struct Relay: Service {
    /// Identifies the relay's advisory lock; distinct from the migrator's.
    static let lockKey: Int64 = 0x7265_6c61_795f_6c6b  // "relay_lk"

    let endpoint: DatabaseEndpoint
    let slot: String
    let publication: String
    let logger: Logger
    let gate: StartupGate
    /// How often a follower tries to take the lead, and how often the leader checks it still holds it.
    var retryInterval: Duration = .seconds(1)

    public init(endpoint: DatabaseEndpoint, gate: StartupGate, logger: Logger) {
        self.endpoint = endpoint
        self.gate = gate
        self.slot = Self.slotName(for: endpoint.database)
        self.publication = "realtime_changes"
        self.logger = logger
    }

    /// One slot per database, since slots belong to the whole cluster: `realtime_<database>`.
    static func slotName(for database: String) -> String {
        let cleaned = database.lowercased().map { $0.isLetter || $0.isNumber ? $0 : "_" }
        return String(("realtime_" + String(cleaned)).prefix(63))
    }

    public func run() async throws {
        do {
            try await cancelWhenGracefulShutdown { try await gate.wait() }
        } catch {
            return
        }
        var backoff = Duration.milliseconds(200)
        while !Task.isShuttingDownGracefully && !Task.isCancelled {
            do {
                try await cancelWhenGracefulShutdown { try await leadWhenElected() }
                backoff = .milliseconds(200)
            } catch is CancellationError {
                return
            } catch {
                if Task.isShuttingDownGracefully || Task.isCancelled { return }
                logger.warning("relay stopped; retrying", metadata: ["error": "\(String(reflecting: error))"])
                let delay = backoff
                try? await cancelWhenGracefulShutdown { try await Task.sleep(for: delay) }
                backoff = min(backoff * 2, .seconds(5))
            }
        }
    }

    /// Waits for the lock on a dedicated connection, then relays until the connection or the stream fails.
    private func leadWhenElected() async throws {
        let connection = try await PostgresConnection.connect(
            configuration: DatabaseProbe.connectionConfiguration(endpoint),
            id: Int.random(in: 1...Int(Int32.max)),
            logger: logger
        )
        do {
            try await lead(on: connection)
        } catch {
            try? await connection.close()
            throw error
        }
        try? await connection.close()
    }

    private func lead(on connection: PostgresConnection) async throws {
        while true {
            try Task.checkCancellation()
            let locked = try await connection.query("SELECT pg_try_advisory_lock(\(Self.lockKey))", logger: logger)
            var acquired = false
            for try await value in locked.decode(Bool.self) { acquired = value }
            if acquired { break }
            try await Task.sleep(for: retryInterval)
        }
        logger.info("this node is now the relay", metadata: ["slot": "\(slot)"])
        defer { logger.info("this node stopped relaying", metadata: ["slot": "\(slot)"]) }
        try await relay(on: connection)
    }

    private func relay(on connection: PostgresConnection) async throws {
        let stream = LogicalReplicationStream(
            conninfo: LogicalReplicationStream.conninfo(for: endpoint),
            slot: slot,
            publication: publication,
            logger: logger
        )
        let created = try await stream.ensureSlot(nudge: { [logger] in
            // A checkpoint logs the running transactions, which slot creation waits for; without the right, it waits.
            _ = try? await connection.query("CHECKPOINT", logger: logger)
        })
        if created { logger.info("created the replication slot", metadata: ["slot": "\(slot)"]) }
        defer { stream.stop() }
        let pending = PendingTransactions()
        try await withThrowingTaskGroup(of: Void.self) { group in
            // Decoding: transactions queue up while the previous batch is being written, and form the next batch.
            group.addTask {
                defer { pending.finish() }
                for try await transaction in stream.transactions() { pending.append(transaction) }
                throw ReplicationError("the replication stream ended")
            }
            // Writing: one database transaction per batch, then the slot's flush position.
            group.addTask {
                while let batch = await pending.next() {
                    try await write(batch, on: connection)
                    if let last = batch.last { stream.confirm(last.endLSN) }
                }
            }
            // Leadership: the lock lives as long as this connection answers.
            group.addTask {
                while true {
                    try await Task.sleep(for: retryInterval)
                    try await connection.query("SELECT 1", logger: logger)
                }
            }
            try await group.next()
            group.cancelAll()
        }
    }

    private func write(_ batch: [WALTransaction], on connection: PostgresConnection) async throws {
        try await connection.query("BEGIN", logger: logger)
        do {
            let appended = try await EventLog.append(batch, on: connection, logger: logger)
            if appended > 0 {
                try await connection.query("SELECT pg_notify(\(EventLog.wakeUpChannel), '')", logger: logger)
            }
            try await connection.query("COMMIT", logger: logger)
        } catch {
            _ = try? await connection.query("ROLLBACK", logger: logger)
            throw error
        }
    }
}

/// Transactions decoded but not yet written, handed from the decoding task to the writing task in whole batches.
final class PendingTransactions: Sendable {
    private struct State {
        var queue: [WALTransaction] = []
        var waiter: CheckedContinuation<[WALTransaction]?, Never>?
        var finished = false
    }

    private let state = Mutex(State())

    func append(_ transaction: WALTransaction) {
        let resume: (CheckedContinuation<[WALTransaction]?, Never>, [WALTransaction])? = state.withLock { state in
            if let waiter = state.waiter {
                state.waiter = nil
                return (waiter, [transaction])
            }
            state.queue.append(transaction)
            return nil
        }
        if let (waiter, batch) = resume { waiter.resume(returning: batch) }
    }

    func finish() {
        let waiter = state.withLock { state in
            state.finished = true
            defer { state.waiter = nil }
            return state.waiter
        }
        waiter?.resume(returning: nil)
    }

    /// Everything queued so far, waiting for at least one transaction; nil once finished and drained.
    func next() async -> [WALTransaction]? {
        await withCheckedContinuation { continuation in
            let ready: (batch: [WALTransaction]?, now: Bool) = state.withLock { state in
                if !state.queue.isEmpty {
                    defer { state.queue.removeAll(keepingCapacity: true) }
                    return (state.queue, true)
                }
                if state.finished { return (nil, true) }
                state.waiter = continuation
                return (nil, false)
            }
            if ready.now { continuation.resume(returning: ready.batch) }
        }
    }
}
