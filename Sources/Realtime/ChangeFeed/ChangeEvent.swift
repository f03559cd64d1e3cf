import Foundation

/// One committed row change, as read back from the event log: the unit that streams, polls and resumes carry.
///
/// `sequence` is the cursor: it grows in commit order, and inside a transaction in the order of its changes.
public struct ChangeEvent: Sendable, Equatable {
    /// What happened to the row.
    public enum Operation: String, Sendable, CaseIterable {
        case insert = "INSERT"
        case update = "UPDATE"
        case delete = "DELETE"
        /// Every row of the table was removed at once. Logged with no row; delivered as a `reset`, never as a change.
        /// With the table ``ChangeEvent/everyTable``, the feed itself lost changes (its replication slot was invalidated):
        /// every stream resets.
        case truncate = "TRUNCATE"
    }

    /// The table of the TRUNCATE logged when the replication slot had to be recreated: changes were lost, so every
    /// subscription's copy may be stale.
    public static let everyTable = "*"

    /// Whether this event resets a subscription of these channels and options: a TRUNCATE of a table it streams on
    /// one of its channels, or of every table.
    func resets(_ channels: Set<Channel>, _ options: SubscriptionOptions) -> Bool {
        guard operation == .truncate else { return false }
        return (table == Self.everyTable || options.streams(table: table)) && channels.contains { $0.carries(table: table) }
    }

    public var sequence: Int64
    /// The id of the transaction that made the change (32 bits, as logical decoding reports it).
    public var xid: UInt32
    /// The table, e.g. `task`.
    public var table: String
    public var operation: Operation
    /// The commit time as ISO-8601 text (UTC), and as a date for delay measurement.
    public var commitTimestamp: String
    public var commitTime: Date
    /// Where the row is after the change (where it was, for a DELETE); nil fields for a TRUNCATE. The channels it goes
    /// to follow from this and the registry (``Channel/placements(of:)``).
    public var place: RowPlace
    /// For an UPDATE that moved the row to another branch or plan: where it was before. Nil when it did not move.
    public var previousPlace: RowPlace?
    /// The new row as a JSON object (`{}` for a DELETE).
    public var record: String
    /// For an UPDATE, the previous values of the columns that changed; for a DELETE, the whole old row; else `{}`.
    public var oldRecord: String

    public init(
        sequence: Int64,
        xid: UInt32 = 0,
        table: String,
        operation: Operation,
        commitTimestamp: String,
        commitTime: Date,
        place: RowPlace,
        previousPlace: RowPlace? = nil,
        record: String,
        oldRecord: String
    ) {
        self.sequence = sequence
        self.xid = xid
        self.table = table
        self.operation = operation
        self.commitTimestamp = commitTimestamp
        self.commitTime = commitTime
        self.place = place
        self.previousPlace = previousPlace
        self.record = record
        self.oldRecord = oldRecord
    }
}

/// Where a row is, as far as channels care: its branch, and its plan for a table whose rows stream on their plan's
/// channel too (``TableSchema/planScopedTables``).
public struct RowPlace: Sendable, Hashable {
    public var branch: UUID?
    public var plan: UUID?

    public init(branch: UUID?, plan: UUID? = nil) {
        self.branch = branch
        self.plan = plan
    }
}
