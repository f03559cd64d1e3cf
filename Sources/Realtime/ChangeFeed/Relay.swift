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
        self.publication = Self.publicationName
        self.logger = logger
    }

    /// The publication of migration 0003.
    static let publicationName = "realtime_changes"

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
        let leadership = SharedLeadership(RelayLeadership(lockRetry: retryInterval, maximumBackoff: Self.maximumBackoff))
        var action = leadership.update { $0.start() }
        while true {
            if Task.isShuttingDownGracefully || Task.isCancelled { action = leadership.update { $0.shutDown() } }
            switch action {
            case .stop:
                return
            case .startOver(let delay):
                try? await cancelWhenGracefulShutdown { try await Task.sleep(for: delay) }
                action = leadership.update { $0.backoffElapsed() }
            case .connectAndAskForLock:
                do {
                    try await cancelWhenGracefulShutdown { try await leadWhenElected(leadership) }
                    action = leadership.update { $0.attemptEnded() }
                } catch is CancellationError {
                    action = leadership.update { $0.shutDown() }
                } catch {
                    if Task.isShuttingDownGracefully || Task.isCancelled { return }
                    logger.warning("relay stopped; retrying", metadata: ["error": "\(String(reflecting: error))"])
                    action = leadership.update { $0.attemptFailed(at: ContinuousClock.now) }
                }
            }
        }
    }

    /// The longest wait before trying again after failures in a row.
    static let maximumBackoff: Duration = .seconds(5)

    /// Waits for the lock on a dedicated connection, then relays until the connection or the stream fails.
    private func leadWhenElected(_ leadership: SharedLeadership) async throws {
        let connection = try await PostgresConnection.connect(
            configuration: DatabaseProbe.connectionConfiguration(endpoint),
            id: Int.random(in: 1...Int(Int32.max)),
            logger: logger
        )
        do {
            try await lead(on: connection, leadership)
        } catch {
            try? await connection.close()
            throw error
        }
        try? await connection.close()
    }

    private func lead(on connection: PostgresConnection, _ leadership: SharedLeadership) async throws {
        // The slot's position is confirmed only after a batch's COMMIT answers: that commit must be durable then, even
        // on a server tuned to synchronous_commit = off, or a crash could lose a batch the slot will never send again.
        try await Self.whileOpen(connection) { [logger] in _ = try await connection.queryIfOpen("SET synchronous_commit = on", logger: logger) }
        while true {
            try Task.checkCancellation()
            let acquired = try await Self.whileOpen(connection) { [logger] in
                let locked = try await connection.queryIfOpen("SELECT pg_try_advisory_lock(\(Self.lockKey))", logger: logger)
                var acquired = false
                for try await value in locked.decode(Bool.self) { acquired = value }
                return acquired
            }
            guard case .askAgain(let wait) = leadership.update({ $0.lockAnswered(acquired: acquired) }) else { break }
            try await Task.sleep(for: wait)
        }
        logger.info("this node is now the relay", metadata: ["slot": "\(slot)"])
        defer { logger.info("this node stopped relaying", metadata: ["slot": "\(slot)"]) }
        try await relay(on: connection, leadership)
    }

    private func relay(on connection: PostgresConnection, _ leadership: SharedLeadership) async throws {
        let stream = LogicalReplicationStream(
            conninfo: LogicalReplicationStream.conninfo(for: endpoint),
            slot: slot,
            publication: publication,
            logger: logger
        )
        let lost = try await dropSlotIfInvalidated(on: connection)
        let created = try await stream.ensureSlot(nudge: { [logger] in
            // A checkpoint logs the running transactions, which slot creation waits for; without the right, it waits.
            try? await Self.whileOpen(connection) { _ = try await connection.queryIfOpen("CHECKPOINT", logger: logger) }
        })
        if created { logger.info("created the replication slot", metadata: ["slot": "\(slot)"]) }
        if lost {
            // The changes between the lost slot's position and the new one never reach the log: every stream and poll
            // must reload (a TRUNCATE of every table, before the memberships are brought in line below).
            try await Self.whileOpen(connection) { [logger] in
                _ = try await connection.queryIfOpen(Self.everyTableResetStatement, logger: logger)
                _ = try await connection.queryIfOpen(EventLog.wakeUpStatement, logger: logger)
            }
        }
        if created || lost {
            // The log has none of the changes made before the slot: bring its memberships in line with the table.
            try await Self.whileOpen(connection) { [logger] in
                try await MembershipHistory.reconcile(logger: logger) { try await connection.rowsIfOpen($0, logger: logger) }
            }
        }
        defer { stream.stop() }
        leadership.update { $0.startedRelaying(at: ContinuousClock.now) }
        let pending = PendingTransactions()
        try await withThrowingTaskGroup(of: Void.self) { group in
            // Decoding: transactions (and pieces of large ones) queue up while the previous batch is being written, and
            // form the next batch. At most `inFlightChanges` changes are decoded and not yet written: then the stream
            // stops reading, and the backlog waits in the slot, not in memory.
            group.addTask {
                defer { pending.finish() }
                for try await piece in stream.transactions(inFlightLimit: Self.inFlightChanges) { pending.append(piece) }
                throw ReplicationError("the replication stream ended")
            }
            // Writing: batches of at most `EventLog.maxBatchChanges` changes, one statement each, in one database
            // transaction that commits only at the end of a source transaction (so that readers never see part of one),
            // then the slot's flush position.
            group.addTask {
                var writer = LogWriter()
                while let batch = await pending.next(maxChanges: EventLog.maxBatchChanges) {
                    try await Self.whileOpen(connection) { [writer] in try await write(batch, after: writer, on: connection) }
                    stream.release(batch.reduce(0) { $0 + $1.weight })
                    if let committed = writer.wrote(batch) {
                        stream.confirm(committed)
                        leadership.update { $0.wroteBatch() }
                    }
                }
            }
            // Leadership: the lock lives as long as this connection answers.
            group.addTask {
                while true {
                    try await Task.sleep(for: retryInterval)
                    try await Self.whileOpen(connection) { _ = try await connection.queryIfOpen("SELECT 1", logger: logger) }
                }
            }
            try await group.next()
            group.cancelAll()
        }
    }

    /// Runs `operation`, which uses `connection`, and gives up on it as soon as the connection closes or the task is
    /// cancelled.
    ///
    /// PostgresNIO never answers a query written to a connection that has already closed (e.g. after its backend was
    /// terminated): awaiting it directly would wait forever, and the relay would neither notice that it lost the lock nor
    /// retry nor shut down. So the operation runs in a task of its own, left behind when given up on; the relay then
    /// closes the connection (if it is not closed already), so that an operation left behind can commit nothing more.
    static func whileOpen<Value: Sendable>(
        _ connection: PostgresConnection,
        _ operation: @escaping @Sendable () async throws -> Value
    ) async throws -> Value {
        let outcome = FirstOutcome<Value>()
        let work = Task {
            do {
                outcome.offer(.success(try await operation()))
            } catch {
                outcome.offer(.failure(error))
            }
        }
        let watch = Task {
            while !connection.isClosed {
                do { try await Task.sleep(for: .milliseconds(100)) } catch { return }
            }
            outcome.offer(.failure(ReplicationError("the relay's database connection closed")))
        }
        defer { watch.cancel() }
        return try await withTaskCancellationHandler {
            try await withCheckedThrowingContinuation { outcome.wait($0) }
        } onCancel: {
            work.cancel()
            outcome.offer(.failure(CancellationError()))
        }
    }

    /// Logs that the feed lost changes: a TRUNCATE of ``ChangeEvent/everyTable`` at the current WAL position, at an index
    /// no relayed change has.
    static let everyTableResetStatement: PostgresQuery = """
        INSERT INTO realtime.event_log (commit_lsn, tx_index, xid, commit_time, table_name, op, record, old_record)
        VALUES (pg_current_wal_lsn(), -2147483648, 0, now(), '*', 'TRUNCATE', '{}', '{}')
        ON CONFLICT ON CONSTRAINT event_log_position_key DO NOTHING
        """

    /// Drops the slot when PostgreSQL invalidated it (it kept more WAL than `max_slot_wal_keep_size` allows, so it can
    /// stream nothing more); returns whether it did, for the slot to be created anew.
    private func dropSlotIfInvalidated(on connection: PostgresConnection) async throws -> Bool {
        try await Self.whileOpen(connection) { [logger, slot] in
            let rows = try await connection.queryIfOpen(
                "SELECT coalesce(wal_status = 'lost', false) FROM pg_replication_slots WHERE slot_name = \(slot)", logger: logger)
            var lost = false
            for try await value in rows.decode(Bool.self) { lost = value }
            guard lost else { return false }
            logger.error(
                "the replication slot was invalidated: it kept more WAL than max_slot_wal_keep_size allows; recreating it, and every stream reloads",
                metadata: ["slot": "\(slot)"]
            )
            _ = try await connection.queryIfOpen("SELECT pg_drop_replication_slot(\(slot))", logger: logger)
            return true
        }
    }

    /// The most changes decoded and not yet written (in pieces of at most `WALTransactionAssembler.maxPieceChanges`
    /// changes and about `maxPieceBytes` bytes).
    static let inFlightChanges = 4 * WALTransactionAssembler.maxPieceChanges

    /// Where the log's writing stands between batches: whether a database transaction is open.
    struct LogWriter: Sendable {
        var isOpen = false
        var appended = 0

        /// Notes a written batch; returns the end LSN to confirm when the batch ended a source transaction and so was
        /// committed.
        mutating func wrote(_ batch: [WALTransaction]) -> UInt64? {
            appended += batch.reduce(0) { $0 + $1.changes.count }
            guard let last = batch.last, last.isComplete else {
                isOpen = true
                return nil
            }
            isOpen = false
            appended = 0
            return last.endLSN
        }
    }

    /// Writes a batch in the open database transaction (opening one if needed); commits, with one NOTIFY, when the
    /// batch ends with the last piece of a source transaction.
    private func write(_ batch: [WALTransaction], after writer: LogWriter, on connection: PostgresConnection) async throws {
        if !writer.isOpen { try await connection.queryIfOpen("BEGIN", logger: logger) }
        do {
            let appended = try await EventLog.append(batch, on: connection, logger: logger)
            guard let last = batch.last, last.isComplete else { return }
            if appended + writer.appended > 0 {
                try await connection.queryIfOpen(EventLog.wakeUpStatement, logger: logger)
            }
            try await connection.queryIfOpen("COMMIT", logger: logger)
        } catch {
            _ = try? await connection.queryIfOpen("ROLLBACK", logger: logger)
            throw error
        }
    }
}
