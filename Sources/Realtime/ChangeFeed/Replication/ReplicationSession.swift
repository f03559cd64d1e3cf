import CLibPQ
import Foundation
import Logging
import Synchronization

#if canImport(Glibc)
    import Glibc
#elseif canImport(Musl)
    import Musl
#elseif canImport(Darwin)
    import Darwin
#endif

/// One replication connection and its socket loop; lives on, and is used only by, its own thread.
final class ReplicationSession {
    struct Parameters: Sendable {
        var conninfo: String
        var slot: String
        var publication: String
        var logger: Logger
        /// The most weight (changes) the consumer may hold before the session stops reading (nil: no limit).
        var inFlightLimit: Int?
    }

    private let parameters: Parameters
    private let control: SessionControl
    private let confirmedLSN: @Sendable () -> UInt64
    private let continuation: AsyncThrowingStream<WALTransaction, any Error>.Continuation
    private var logger: Logger { parameters.logger }
    private let clock = ContinuousClock()

    private var decoder = PgOutputDecoder()
    private var assembler = WALTransactionAssembler()
    /// What to report of the slot's position, and when (the rules live there, tested without libpq).
    private var position: SlotPosition
    /// libpq holds output it could not send yet.
    private var flushPending = false

    init(
        parameters: Parameters,
        control: SessionControl,
        confirmedLSN: @escaping @Sendable () -> UInt64,
        continuation: AsyncThrowingStream<WALTransaction, any Error>.Continuation
    ) {
        self.parameters = parameters
        self.control = control
        self.confirmedLSN = confirmedLSN
        self.continuation = continuation
        self.position = SlotPosition(interval: LogicalReplicationStream.statusInterval, now: clock.now)
    }

    /// Connects, streams until stopped or until the connection fails, closes the connection, then finishes the stream.
    func run() {
        var failure: ReplicationError?
        do throws(ReplicationError) {
            let connection = try LibPQ.connect(parameters.conninfo)
            do throws(ReplicationError) {
                try stream(on: connection)
            } catch {
                failure = error
            }
            PQfinish(connection)
        } catch {
            failure = error
        }
        if let failure {
            logger.warning("replication stream failed: \(failure.message)", metadata: ["replication.sqlstate": "\(failure.sqlState ?? "")"])
            continuation.finish(throwing: failure)
        } else {
            logger.debug("replication stream stopped")
            continuation.finish()
        }
    }

    private func stream(on connection: OpaquePointer) throws(ReplicationError) {
        guard !control.isStopRequested else { return }
        let system = try LibPQ.query("IDENTIFY_SYSTEM", on: connection)
        let slotRow = try LibPQ.query(
            "SELECT confirmed_flush_lsn::text FROM pg_replication_slots WHERE slot_name = '\(parameters.slot)'",
            on: connection
        )
        let startLSN = slotRow.first?.first.flatMap { $0 }.flatMap(LogicalReplicationStream.parseLSN) ?? 0
        // IDENTIFY_SYSTEM returns systemid, timeline, xlogpos, dbname.
        let serverLSN = system.first.flatMap { $0.count > 2 ? $0[2] : nil } ?? "?"
        logger.debug(
            "starting replication",
            metadata: [
                "replication.server_lsn": "\(serverLSN)",
                "replication.confirmed_flush_lsn": "\(LogicalReplicationStream.formatLSN(startLSN))",
            ]
        )
        try LibPQ.execute(
            "START_REPLICATION SLOT \(parameters.slot) LOGICAL 0/0 (proto_version '1', publication_names '\(parameters.publication)')",
            on: connection,
            expecting: PGRES_COPY_BOTH
        )
        guard PQsetnonblocking(connection, 1) == 0 else { throw LibPQ.connectionError(connection, "could not enter non-blocking mode") }
        position.started(confirmedFlushLSN: startLSN)
        try loop(on: connection)
    }

    private func loop(on connection: OpaquePointer) throws(ReplicationError) {
        let socket = PQsocket(connection)
        guard socket >= 0 else { throw LibPQ.connectionError(connection, "the connection has no socket") }
        while true {
            let requests = control.takeRequests()
            if requests.stop { return }
            try perform(position.turn(now: clock.now, requested: requests.statusUpdate, confirmedLSN: confirmedLSN()), on: connection)
            if flushPending {
                let flushed = PQflush(connection)
                guard flushed >= 0 else { throw LibPQ.connectionError(connection, "could not send a status update") }
                flushPending = flushed == 1
            }

            // Backpressure: with as many pieces handed over as the consumer allows, read nothing more; the server's
            // walsender then waits on the socket, and the WAL waits in the slot.
            if control.isFull(limit: parameters.inFlightLimit) {
                try wait(on: connection, socket: socket, reading: false)
                continue
            }
            var buffer: UnsafeMutablePointer<CChar>?
            let count = PQgetCopyData(connection, &buffer, 1)
            if count > 0, let buffer {
                let bytes = Array(UnsafeRawBufferPointer(start: buffer, count: Int(count)))
                PQfreemem(buffer)
                try handle(bytes, on: connection)
            } else if count == 0 {
                try wait(on: connection, socket: socket)
            } else if count == -1 {
                throw LibPQ.endOfCopyError(connection)
            } else {
                throw LibPQ.connectionError(connection, "could not read from the replication stream")
            }
        }
    }

    /// Waits until the socket is readable (unless `reading` is false) or writable (when output is pending), a request
    /// arrives (including room freed by the consumer), or a status update is due.
    private func wait(on connection: OpaquePointer, socket: Int32, reading: Bool = true) throws(ReplicationError) {
        let untilStatus = position.nextStatusUpdate - clock.now
        let milliseconds = max(0, min(1000, untilStatus.components.seconds * 1000 + untilStatus.components.attoseconds / 1_000_000_000_000_000))
        var descriptors = [
            pollfd(fd: socket, events: (reading ? Int16(POLLIN) : 0) | (flushPending ? Int16(POLLOUT) : 0), revents: 0),
            pollfd(fd: control.wakeReader, events: Int16(POLLIN), revents: 0),
        ]
        let ready = poll(&descriptors, nfds_t(descriptors.count), Int32(milliseconds + 1))
        if ready < 0 {
            guard errno == EINTR else { throw ReplicationError("poll failed: " + String(cString: strerror(errno))) }
            return
        }
        if descriptors[1].revents != 0 { control.drain() }
        if reading, descriptors[0].revents & ~Int16(POLLOUT) != 0 {
            guard PQconsumeInput(connection) == 1 else { throw LibPQ.connectionError(connection, "the replication connection broke") }
        }
    }

    private func handle(_ bytes: [UInt8], on connection: OpaquePointer) throws(ReplicationError) {
        switch try ReplicationProtocol.parse(bytes) {
        case .keepalive(let walEnd, _, let replyRequested):
            let action = position.keepalive(
                walEnd: walEnd, replyRequested: replyRequested, inTransaction: assembler.isInTransaction, confirmedLSN: confirmedLSN())
            try perform(action, on: connection)
        case .xLogData(_, _, _, let payload):
            let message = try decoder.decode(payload)
            switch message {
            case .change(let change, let unresolved) where !unresolved.isEmpty:
                logger.warning(
                    "\(change.operation.rawValue) on \(change.schema).\(change.table): unchanged TOASTed columns have no value",
                    metadata: ["replication.columns": "\(unresolved.joined(separator: ","))"]
                )
            case .truncate(let relations, _):
                logger.notice("TRUNCATE of \(relations.joined(separator: ", ")): logged, and its channels' streams reset")
            case .relation(let relation):
                logger.trace("relation \(relation.oid) is \(relation.schema).\(relation.name)")
            default:
                break
            }
            guard let transaction = try assembler.consume(message), position.assembled(transaction) == .deliver else { return }
            control.delivered(transaction.weight)
            if case .terminated = continuation.yield(transaction) { control.requestStop() }
        }
    }

    private func perform(_ action: SlotPosition.Action, on connection: OpaquePointer) throws(ReplicationError) {
        switch action {
        case .none: return
        case .sendStatusUpdate(let lsn): try sendStatusUpdate(lsn, on: connection)
        }
    }

    private func sendStatusUpdate(_ lsn: UInt64, on connection: OpaquePointer) throws(ReplicationError) {
        let message = ReplicationProtocol.statusUpdate(lsn: lsn, now: Date())
        let queued = message.withUnsafeBytes { bytes in
            PQputCopyData(connection, bytes.baseAddress?.assumingMemoryBound(to: CChar.self), Int32(bytes.count))
        }
        guard queued >= 0 else { throw LibPQ.connectionError(connection, "could not send a status update") }
        guard queued == 1 else {
            // Non-blocking mode and libpq's buffer is full: try again after the next wait.
            position.statusUpdateDeferred()
            flushPending = true
            return
        }
        let moved = position.statusUpdateSent(lsn: lsn, now: clock.now)
        let flushed = PQflush(connection)
        guard flushed >= 0 else { throw LibPQ.connectionError(connection, "could not send a status update") }
        flushPending = flushed == 1
        if moved { logger.debug("reported \(LogicalReplicationStream.formatLSN(lsn)) as flushed") }
    }
}
