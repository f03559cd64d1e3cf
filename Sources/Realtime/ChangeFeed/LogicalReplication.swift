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

/// A failure of the replication connection or of decoding its stream, with libpq's or the server's message.
public struct ReplicationError: Error, CustomStringConvertible, Sendable, Equatable {
    /// What went wrong, e.g. libpq's error message.
    public var message: String
    /// The server's SQLSTATE when it reported the error, e.g. `55006` when the slot is active in another process.
    public var sqlState: String?

    public init(_ message: String, sqlState: String? = nil) {
        self.message = message
        self.sqlState = sqlState
    }

    /// SQLSTATE of "replication slot … is active for PID …": another connection streams from the slot; wait and retry.
    public static let slotInUse = "55006"

    public var description: String {
        sqlState.map { "replication: \(message) (SQLSTATE \($0))" } ?? "replication: \(message)"
    }
}

/// A logical replication client (pgoutput, protocol version 1) over libpq that yields committed transactions.
///
/// Each call to `transactions()` opens its own replication connection and runs it on a dedicated thread, never on the
/// Swift concurrency pool or a NIO event loop, since libpq blocks. The server replays everything after the slot's
/// confirmed position, so confirm a transaction's `endLSN` with `confirm(_:)` only once it is durably stored.
///
/// When nothing it delivered is left unconfirmed, the stream also reports the server's idle WAL position (from keepalives
/// and from transactions without row changes), so the slot does not hold back WAL while the publication's tables are quiet.
public final class LogicalReplicationStream: Sendable {
    /// The replication slot.
    public let slot: String
    /// The publication whose tables are streamed.
    public let publication: String
    private let conninfo: String
    private let logger: Logger
    private let state = Mutex(State())

    /// How often a standby status update is sent even when nothing changes.
    static let statusInterval: Duration = .seconds(10)

    private struct State {
        var confirmedLSN: UInt64 = 0
        var stopped = false
        var nextSessionID = 0
        var sessions: [Int: SessionControl] = [:]
        var closeWaiters: [CheckedContinuation<Void, Never>] = []
    }

    /// A client for `slot` that streams the tables of `publication`; `conninfo` must contain `replication=database`.
    ///
    /// `slot` and `publication` must match `^[a-z0-9_]+$`; otherwise `ensureSlot()` and the streams fail.
    public init(conninfo: String, slot: String, publication: String, logger: Logger) {
        self.conninfo = conninfo
        self.slot = slot
        self.publication = publication
        var logger = logger
        logger[metadataKey: "replication.slot"] = "\(slot)"
        self.logger = logger
    }

    /// A libpq connection string for `endpoint` with `replication=database`; values are single-quoted and escaped.
    public static func conninfo(for endpoint: DatabaseEndpoint, applicationName: String = "realtime-replication") -> String {
        var parameters: [(String, String)] = [
            ("host", endpoint.host),
            ("port", String(endpoint.port)),
            ("user", endpoint.username),
        ]
        if let password = endpoint.password { parameters.append(("password", password)) }
        parameters += [
            ("dbname", endpoint.database),
            ("sslmode", endpoint.tls.rawValue),
            ("replication", "database"),
            ("application_name", applicationName),
            ("connect_timeout", "10"),
        ]
        return parameters.map { key, value in
            let escaped = value.replacingOccurrences(of: "\\", with: "\\\\").replacingOccurrences(of: "'", with: "\\'")
            return "\(key)='\(escaped)'"
        }.joined(separator: " ")
    }

    /// `0/16B3748` for 0x16B3748, as PostgreSQL writes LSNs.
    public static func formatLSN(_ lsn: UInt64) -> String {
        String(lsn >> 32, radix: 16, uppercase: true) + "/" + String(lsn & 0xffff_ffff, radix: 16, uppercase: true)
    }

    /// Parses an LSN as PostgreSQL writes it (`16/B374D848`).
    public static func parseLSN(_ text: String) -> UInt64? {
        let parts = text.split(separator: "/", omittingEmptySubsequences: false)
        guard parts.count == 2, let high = UInt32(parts[0], radix: 16), let low = UInt32(parts[1], radix: 16) else { return nil }
        return UInt64(high) << 32 | UInt64(low)
    }

    // MARK: - Slot

    /// Creates the slot (LOGICAL pgoutput, not temporary) if it does not exist yet. Returns true when created.
    ///
    /// Creating a logical slot waits until the transactions running on the cluster at that moment have ended, as told
    /// by the WAL's running-transactions records, which PostgreSQL 15 writes only every 15 s or at a checkpoint. On a
    /// busy cluster that takes one or two such records. `nudge`, when given, runs every second while the slot is being
    /// created: a `CHECKPOINT` there writes such a record at once.
    public func ensureSlot(nudge: (@Sendable () async -> Void)? = nil) async throws -> Bool {
        try validateNames()
        // The nudges run in a task of their own that is cancelled, not awaited, once the slot exists: a nudge stuck on a
        // query (its connection killed) must not keep the caller waiting.
        let nudging = nudge.map { nudge in
            Task {
                while (try? await Task.sleep(for: .seconds(1))) != nil { await nudge() }
            }
        }
        defer { nudging?.cancel() }
        return try await createSlotIfMissing()
    }

    private func createSlotIfMissing() async throws -> Bool {
        let conninfo = self.conninfo
        let slot = self.slot
        let created = try await withThrowingTaskGroup(of: Bool?.self) { group in
            group.addTask {
                try await Self.onOwnThread(named: "replication-slot \(slot)") { () throws(ReplicationError) -> Bool in
                    let connection = try LibPQ.connect(conninfo)
                    defer { PQfinish(connection) }
                    do throws(ReplicationError) {
                        try LibPQ.execute(
                            "CREATE_REPLICATION_SLOT \(slot) LOGICAL pgoutput NOEXPORT_SNAPSHOT",
                            on: connection,
                            expecting: PGRES_TUPLES_OK
                        )
                        return true
                    } catch let error where error.sqlState == "42710" {
                        return false  // duplicate_object: the slot exists.
                    }
                }
            }
            defer { group.cancelAll() }
            while let result = try await group.next() {
                if let result { return result }
            }
            return false
        }
        if created { logger.info("created logical replication slot \(slot)") }
        return created
    }

    // MARK: - Streaming

    /// Starts streaming from the slot's confirmed position; transactions arrive in commit order.
    ///
    /// Every call opens a new connection. The stream finishes with an error when the connection breaks (the caller
    /// reconnects by calling this again; the confirmed position is kept) and without one after `stop()` or when its consumer
    /// goes away. A slot streamed by another connection fails with `sqlState` `55006` (`ReplicationError.slotInUse`).
    /// Transactions without row changes or TRUNCATEs (e.g. of tables outside the publication) are not delivered; a large
    /// one arrives in pieces (``WALTransaction/isComplete``).
    ///
    /// - Parameter inFlightLimit: with a limit, the session stops reading the server once the consumer holds that many
    ///   changes (``WALTransaction/weight``) it has not given back with ``release(_:)``: memory stays bounded whatever
    ///   the backlog (pieces are bounded in bytes too).
    public func transactions(inFlightLimit: Int? = nil) -> AsyncThrowingStream<WALTransaction, any Error> {
        let (stream, continuation) = AsyncThrowingStream.makeStream(of: WALTransaction.self, throwing: (any Error).self)
        let control: SessionControl
        do {
            try validateNames()
            control = try SessionControl()
        } catch {
            continuation.finish(throwing: error)
            return stream
        }
        let id: Int? = state.withLock { state in
            guard !state.stopped else { return nil }
            defer { state.nextSessionID += 1 }
            state.sessions[state.nextSessionID] = control
            return state.nextSessionID
        }
        guard let id else {
            continuation.finish()
            return stream
        }
        continuation.onTermination = { _ in control.requestStop() }

        let parameters = ReplicationSession.Parameters(
            conninfo: conninfo, slot: slot, publication: publication, logger: logger, inFlightLimit: inFlightLimit)
        let thread = Thread { [self] in
            let session = ReplicationSession(
                parameters: parameters,
                control: control,
                confirmedLSN: { [self] in confirmedLSN },
                continuation: continuation
            )
            session.run()
            sessionEnded(id)
        }
        thread.name = "replication \(slot)"
        thread.start()
        return stream
    }

    /// The highest LSN passed to `confirm(_:)`.
    public var confirmedLSN: UInt64 { state.withLock { $0.confirmedLSN } }

    /// Reports everything up to `lsn` as durably stored (flush/apply position); sent at once and in every later status update.
    /// Smaller values than an earlier confirmation are ignored.
    public func confirm(_ lsn: UInt64) {
        let controls = state.withLock { state -> [SessionControl] in
            guard lsn > state.confirmedLSN else { return [] }
            state.confirmedLSN = lsn
            return Array(state.sessions.values)
        }
        for control in controls { control.requestStatusUpdate() }
    }

    /// Gives back transactions or pieces the consumer is done with, by their total ``WALTransaction/weight`` (see
    /// `transactions(inFlightLimit:)`).
    public func release(_ weight: Int) {
        let controls = state.withLock { Array($0.sessions.values) }
        for control in controls { control.released(weight) }
    }

    /// Ends the streams and closes their connections (promptly, on their threads); later `transactions()` finish at once.
    ///
    /// Each stream finishes once its connection is closed; `waitUntilClosed()` waits for all of them.
    public func stop() {
        let controls = state.withLock { state in
            state.stopped = true
            return Array(state.sessions.values)
        }
        for control in controls { control.requestStop() }
    }

    /// Returns once no stream of this client has an open connection or a running thread.
    public func waitUntilClosed() async {
        await withCheckedContinuation { (continuation: CheckedContinuation<Void, Never>) in
            let closed = state.withLock { state in
                guard !state.sessions.isEmpty else { return true }
                state.closeWaiters.append(continuation)
                return false
            }
            if closed { continuation.resume() }
        }
    }

    private func sessionEnded(_ id: Int) {
        let waiters = state.withLock { state -> [CheckedContinuation<Void, Never>] in
            state.sessions[id] = nil
            guard state.sessions.isEmpty else { return [] }
            defer { state.closeWaiters.removeAll() }
            return state.closeWaiters
        }
        for waiter in waiters { waiter.resume() }
    }

    private func validateNames() throws(ReplicationError) {
        for (what, name) in [("slot", slot), ("publication", publication)] {
            guard Self.isValidName(name) else { throw ReplicationError("invalid \(what) name '\(name)': expected ^[a-z0-9_]+$") }
        }
    }

    static func isValidName(_ name: String) -> Bool {
        !name.isEmpty
            && name.utf8.allSatisfy { byte in
                (UInt8(ascii: "a")...UInt8(ascii: "z")).contains(byte) || (UInt8(ascii: "0")...UInt8(ascii: "9")).contains(byte)
                    || byte == UInt8(ascii: "_")
            }
    }

    /// Runs blocking `body` on a new thread and returns its result.
    private static func onOwnThread<Result: Sendable>(
        named name: String,
        _ body: @escaping @Sendable () throws(ReplicationError) -> Result
    ) async throws(ReplicationError) -> Result {
        let result = await withCheckedContinuation { (continuation: CheckedContinuation<Swift.Result<Result, ReplicationError>, Never>) in
            let thread = Thread {
                do throws(ReplicationError) {
                    continuation.resume(returning: .success(try body()))
                } catch {
                    continuation.resume(returning: .failure(error))
                }
            }
            thread.name = name
            thread.start()
        }
        return try result.get()
    }
}

// MARK: - One streaming session

/// The stop and status-update requests for one session's thread, with a pipe that wakes its `poll`.
private final class SessionControl: Sendable {
    private struct Flags {
        var stop = false
        var statusUpdate = false
        /// The weight (``WALTransaction/weight``) of what was handed to the consumer and not yet released by it.
        var inFlight = 0
    }

    private let flags = Mutex(Flags())
    /// The pipe's ends: the session polls `wakeReader`; `requestStop()` and `requestStatusUpdate()` write to `wakeWriter`.
    let wakeReader: Int32
    private let wakeWriter: Int32

    init() throws(ReplicationError) {
        var descriptors: [Int32] = [-1, -1]
        guard pipe(&descriptors) == 0 else { throw ReplicationError("could not create a pipe: " + String(cString: strerror(errno))) }
        for descriptor in descriptors {
            _ = fcntl(descriptor, F_SETFL, fcntl(descriptor, F_GETFL) | O_NONBLOCK)
            _ = fcntl(descriptor, F_SETFD, FD_CLOEXEC)
        }
        wakeReader = descriptors[0]
        wakeWriter = descriptors[1]
    }

    deinit {
        close(wakeReader)
        close(wakeWriter)
    }

    func requestStop() {
        flags.withLock { $0.stop = true }
        wake()
    }

    func requestStatusUpdate() {
        flags.withLock { $0.statusUpdate = true }
        wake()
    }

    var isStopRequested: Bool { flags.withLock { $0.stop } }

    /// The session handed the consumer a transaction or piece of this weight.
    func delivered(_ weight: Int) { flags.withLock { $0.inFlight += weight } }

    /// The consumer is done with transactions or pieces of this total weight: room for as much more.
    func released(_ weight: Int) {
        flags.withLock { $0.inFlight = max(0, $0.inFlight - weight) }
        wake()
    }

    /// Whether the consumer holds a weight of `limit` or more (nil: no limit).
    func isFull(limit: Int?) -> Bool {
        guard let limit else { return false }
        return flags.withLock { $0.inFlight >= limit }
    }

    /// The requests made since the last call: whether to stop, whether to send a status update now.
    func takeRequests() -> (stop: Bool, statusUpdate: Bool) {
        flags.withLock { flags in
            defer { flags.statusUpdate = false }
            return (flags.stop, flags.statusUpdate)
        }
    }

    /// Empties the pipe after `poll` reported it readable.
    func drain() {
        var buffer = [UInt8](repeating: 0, count: 64)
        while buffer.withUnsafeMutableBytes({ read(wakeReader, $0.baseAddress, $0.count) }) > 0 {}
    }

    private func wake() {
        var byte: UInt8 = 1
        _ = write(wakeWriter, &byte, 1)  // A full pipe (EAGAIN) already wakes the reader.
    }
}

/// One replication connection and its socket loop; lives on, and is used only by, its own thread.
private final class ReplicationSession {
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

// MARK: - libpq helpers

/// Small wrappers around libpq calls; every function blocks and must run on a thread of its own.
private enum LibPQ {
    static func connect(_ conninfo: String) throws(ReplicationError) -> OpaquePointer {
        guard let connection = PQconnectdb(conninfo) else { throw ReplicationError("libpq could not allocate a connection") }
        guard PQstatus(connection) == CONNECTION_OK else {
            let error = connectionError(connection, "could not connect")
            PQfinish(connection)
            throw error
        }
        return connection
    }

    /// Runs a command that must end with `status`.
    static func execute(_ command: String, on connection: OpaquePointer, expecting status: ExecStatusType) throws(ReplicationError) {
        let result = PQexec(connection, command)
        defer { PQclear(result) }
        try check(result, on: connection, expecting: status, command: command)
    }

    /// Runs a command that returns rows; returns them as text (nil: NULL).
    static func query(_ command: String, on connection: OpaquePointer) throws(ReplicationError) -> [[String?]] {
        let result = PQexec(connection, command)
        defer { PQclear(result) }
        try check(result, on: connection, expecting: PGRES_TUPLES_OK, command: command)
        return (0..<PQntuples(result)).map { row in
            (0..<PQnfields(result)).map { column in
                PQgetisnull(result, row, column) == 1 ? nil : String(cString: PQgetvalue(result, row, column))
            }
        }
    }

    private static func check(
        _ result: OpaquePointer?,
        on connection: OpaquePointer,
        expecting status: ExecStatusType,
        command: String
    ) throws(ReplicationError) {
        guard let result else { throw connectionError(connection, "\(command) failed") }
        guard PQresultStatus(result) == status else { throw resultError(result, connection: connection, context: "\(command) failed") }
    }

    static func resultError(_ result: OpaquePointer, connection: OpaquePointer, context: String) -> ReplicationError {
        // PG_DIAG_SQLSTATE is 'C', PG_DIAG_MESSAGE_PRIMARY 'M' (postgres_ext.h).
        let sqlState = PQresultErrorField(result, Int32(UInt8(ascii: "C"))).map { String(cString: $0) }
        var message = PQresultErrorField(result, Int32(UInt8(ascii: "M"))).map { String(cString: $0) } ?? ""
        if message.isEmpty { message = PQresultErrorMessage(result).map { String(cString: $0) } ?? "" }
        if message.isEmpty { message = String(cString: PQresStatus(PQresultStatus(result))) }
        return ReplicationError("\(context): \(trimmed(message))", sqlState: sqlState)
    }

    static func connectionError(_ connection: OpaquePointer, _ context: String) -> ReplicationError {
        let message = PQerrorMessage(connection).map { trimmed(String(cString: $0)) } ?? ""
        return ReplicationError(message.isEmpty ? context : "\(context): \(message)")
    }

    /// The server ended the COPY: its final result says why.
    static func endOfCopyError(_ connection: OpaquePointer) -> ReplicationError {
        var error = ReplicationError("the server ended the replication stream")
        while let result = PQgetResult(connection) {
            if PQresultStatus(result) == PGRES_FATAL_ERROR {
                error = resultError(result, connection: connection, context: "the server ended the replication stream")
            }
            PQclear(result)
        }
        return error
    }

    private static func trimmed(_ text: String) -> String {
        text.trimmingCharacters(in: .whitespacesAndNewlines)
    }
}
