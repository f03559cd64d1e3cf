/// What the replication session tells the server about the slot's position, as a state machine: it takes what
/// happened (the stream started, a keepalive or a transaction arrived, time passed) and returns what to do, without
/// touching libpq, so that its rules are tested on their own (`SlotPositionTests`).
///
/// The rules:
/// - never report less than the slot's `confirmed_flush_lsn` when the session started;
/// - report what the consumer confirmed (its rows are committed in the log);
/// - a position with nothing left to deliver (a keepalive outside a transaction, a transaction without changes) may
///   be reported too, but only once the consumer has confirmed everything delivered before it;
/// - answer a keepalive that asks for a reply at once, and otherwise report every ``interval``; a report that libpq
///   could not queue (its buffer full) is retried at the next turn.
struct SlotPosition {
    /// What the session should do.
    enum Action: Equatable {
        case none
        /// Send a standby status update reporting `lsn` as written, flushed and applied.
        case sendStatusUpdate(lsn: UInt64)
    }

    /// What to do with a transaction (or a piece of one) the assembler completed.
    enum Handling: Equatable {
        /// Hand it to the consumer.
        case deliver
        /// Nothing in it to deliver: it only moves the idle position.
        case skip
    }

    /// How often a status update goes out when nothing asks for one sooner.
    let interval: Duration
    /// The slot's confirmed_flush_lsn when the session started: never report less.
    private(set) var startLSN: UInt64 = 0
    /// The end LSN of the last complete transaction handed to the consumer.
    private(set) var lastDeliveredLSN: UInt64 = 0
    /// A position up to which nothing is left to deliver.
    private(set) var idleLSN: UInt64 = 0
    /// The last position sent.
    private(set) var lastReportedLSN: UInt64 = 0
    private(set) var nextStatusUpdate: ContinuousClock.Instant
    /// A status update libpq could not queue yet.
    private(set) var statusUpdatePending = false

    init(interval: Duration, now: ContinuousClock.Instant) {
        self.interval = interval
        self.nextStatusUpdate = now + interval
    }

    /// The stream starts from the slot's confirmed position.
    mutating func started(confirmedFlushLSN: UInt64) {
        startLSN = confirmedFlushLSN
        lastReportedLSN = confirmedFlushLSN
    }

    /// A keepalive: everything before `walEnd` has been sent, so unless a transaction is half received nothing below it
    /// is missing.
    mutating func keepalive(walEnd: UInt64, replyRequested: Bool, inTransaction: Bool, confirmedLSN: UInt64) -> Action {
        if !inTransaction { idleLSN = max(idleLSN, walEnd) }
        return replyRequested ? .sendStatusUpdate(lsn: reportableLSN(confirmedLSN: confirmedLSN)) : .none
    }

    /// A transaction or piece the assembler completed.
    mutating func assembled(_ transaction: WALTransaction) -> Handling {
        if transaction.changes.isEmpty && transaction.firstIndex == 0 {
            idleLSN = max(idleLSN, transaction.endLSN)
            return .skip
        }
        if transaction.isComplete { lastDeliveredLSN = transaction.endLSN }
        return .deliver
    }

    /// A turn of the session's loop: a status update goes out when asked for, when one is pending, or when due.
    func turn(now: ContinuousClock.Instant, requested: Bool, confirmedLSN: UInt64) -> Action {
        guard requested || statusUpdatePending || now >= nextStatusUpdate else { return .none }
        return .sendStatusUpdate(lsn: reportableLSN(confirmedLSN: confirmedLSN))
    }

    /// libpq queued the status update: the next is due an interval from now. Returns whether the position moved.
    mutating func statusUpdateSent(lsn: UInt64, now: ContinuousClock.Instant) -> Bool {
        statusUpdatePending = false
        nextStatusUpdate = now + interval
        guard lsn != lastReportedLSN else { return false }
        lastReportedLSN = lsn
        return true
    }

    /// libpq's buffer was full: the update goes out at the next turn.
    mutating func statusUpdateDeferred() {
        statusUpdatePending = true
    }

    /// The position to report: what the consumer confirmed, or the idle position once it confirmed everything
    /// delivered; never less than where the session started.
    func reportableLSN(confirmedLSN: UInt64) -> UInt64 {
        let idle = confirmedLSN >= lastDeliveredLSN ? idleLSN : 0
        return max(startLSN, confirmedLSN, idle)
    }
}
