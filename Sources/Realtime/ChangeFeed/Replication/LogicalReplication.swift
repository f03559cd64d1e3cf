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
