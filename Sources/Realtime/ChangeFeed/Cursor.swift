/// A position in the event log from which a stream or a poll resumes.
///
/// Usually just a sequence number (`"1234"`, the SSE event id). A snapshot's cursor also carries the PostgreSQL
/// snapshot it was read in (`"1234~100:105:101,103"`): events logged after the sequence number whose transaction the
/// snapshot already saw are skipped, so snapshot plus stream repeats nothing and misses nothing — the relay may log a
/// transaction that committed before the snapshot only after the snapshot was taken.
public struct Cursor: Sendable, Equatable, CustomStringConvertible {
    /// The transactions a PostgreSQL snapshot (`pg_current_snapshot()`) saw as committed.
    public struct Snapshot: Sendable, Equatable {
        /// Transaction ids as 32-bit values, as logical decoding reports them.
        public var xmin: UInt32
        public var xmax: UInt32
        public var inProgress: [UInt32]

        /// Whether the transaction `xid` had committed when the snapshot was taken (wraparound-aware comparisons).
        public func sawCommitted(_ xid: UInt32) -> Bool {
            if Self.precedes(xid, xmin) { return true }
            if !Self.precedes(xid, xmax) { return false }
            return !inProgress.contains(xid)
        }

        /// Whether an event of transaction `xid`, logged after the snapshot's sequence, ends the snapshot's part in
        /// a cursor: its transaction took its id after the snapshot was taken, so it committed after it, and so did
        /// every transaction logged after it (the log is in commit order). The snapshot saw none of them.
        ///
        /// An event of a transaction the snapshot saw in progress is not enough: PostgreSQL writes a commit to the WAL
        /// before it makes it visible, so a transaction in progress for the snapshot may be logged before one the
        /// snapshot saw committed.
        public func isSettled(by xid: UInt32) -> Bool { !Self.precedes(xid, xmax) }

        static func precedes(_ a: UInt32, _ b: UInt32) -> Bool { Int32(bitPattern: a &- b) < 0 }
    }

    public var sequence: Int64
    public var snapshot: Snapshot?

    public init(sequence: Int64, snapshot: Snapshot? = nil) {
        self.sequence = sequence
        self.snapshot = snapshot
    }

    /// Parses an SSE `Last-Event-ID` or a cursor handed out by a snapshot or a poll; nil when malformed.
    public init?(_ text: String) {
        let parts = text.split(separator: "~", maxSplits: 1, omittingEmptySubsequences: false)
        guard let sequence = Int64(parts[0]), sequence >= 0 else { return nil }
        self.sequence = sequence
        guard parts.count == 2 else { return }
        let fields = parts[1].split(separator: ":", omittingEmptySubsequences: false)
        guard fields.count == 3, let xmin = UInt64(fields[0]), let xmax = UInt64(fields[1]) else { return nil }
        var inProgress: [UInt32] = []
        for xid in fields[2].split(separator: ",") {
            guard let value = UInt64(xid) else { return nil }
            inProgress.append(UInt32(truncatingIfNeeded: value))
        }
        self.snapshot = Snapshot(xmin: UInt32(truncatingIfNeeded: xmin), xmax: UInt32(truncatingIfNeeded: xmax), inProgress: inProgress)
    }

    /// Whether an event at `sequence` from transaction `xid` is already covered by this cursor.
    public func covers(sequence eventSequence: Int64, xid: UInt32) -> Bool {
        if eventSequence <= sequence { return true }
        return snapshot?.sawCommitted(xid) ?? false
    }

    public var description: String {
        guard let snapshot else { return String(sequence) }
        return "\(sequence)~\(snapshot.xmin):\(snapshot.xmax):" + snapshot.inProgress.map(String.init).joined(separator: ",")
    }
}
