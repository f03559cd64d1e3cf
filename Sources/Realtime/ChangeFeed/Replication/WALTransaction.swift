import Foundation

/// One decoded row change from pgoutput.
public struct WALRowChange: Sendable, Equatable {
    /// What happened to the row: the same three operations as the events made of it.
    public typealias Operation = ChangeEvent.Operation

    /// The table's schema, e.g. `public`.
    public var schema: String
    /// The table, e.g. `task`.
    public var table: String
    public var operation: Operation
    /// Column names in table order, from the Relation message.
    public var columns: [String]
    /// The columns' type OIDs, in the same order.
    public var typeOIDs: [UInt32]
    /// The new row's values as text (nil: SQL NULL); nil for a DELETE.
    public var newValues: [String?]?
    /// The old row ('O', with `REPLICA IDENTITY FULL`) or its key ('K', other columns nil) for an UPDATE or DELETE when the
    /// server sent it; else nil.
    public var oldValues: [String?]?

    public init(
        schema: String,
        table: String,
        operation: Operation,
        columns: [String],
        typeOIDs: [UInt32],
        newValues: [String?]?,
        oldValues: [String?]?
    ) {
        self.schema = schema
        self.table = table
        self.operation = operation
        self.columns = columns
        self.typeOIDs = typeOIDs
        self.newValues = newValues
        self.oldValues = oldValues
    }
}

extension WALRowChange {
    /// `schema.table` as a Truncate message names a relation, split at the first dot (a bare OID has no schema).
    static func split(_ relation: String) -> (schema: String, table: String) {
        guard let dot = relation.firstIndex(of: ".") else { return ("", relation) }
        return (String(relation[..<dot]), String(relation[relation.index(after: dot)...]))
    }
}

/// One committed transaction, with its row changes in the order they were made — or, for a transaction larger than a
/// piece (``WALTransactionAssembler/maxPieceChanges`` changes or ``WALTransactionAssembler/maxPieceBytes`` of values),
/// one piece of it: its pieces arrive in order, and only the last is ``isComplete``.
public struct WALTransaction: Sendable, Equatable {
    public var xid: UInt32
    /// The LSN of the commit record (from the Begin message, which announces it).
    public var commitLSN: UInt64
    /// The end LSN of the transaction (Commit message): what to confirm once the whole transaction is stored; 0 in a
    /// piece that is not the last.
    public var endLSN: UInt64
    /// The commit time (UTC).
    public var commitTime: Date
    public var changes: [WALRowChange]
    /// The position in the transaction of the first of `changes`.
    public var firstIndex = 0
    /// Whether this is the transaction's last piece (its Commit was read).
    public var isComplete = true

    /// What it counts for in a consumer's in-flight limit: its changes (at least 1).
    public var weight: Int { max(1, changes.count) }

    public init(xid: UInt32, commitLSN: UInt64, endLSN: UInt64, commitTime: Date, changes: [WALRowChange]) {
        self.xid = xid
        self.commitLSN = commitLSN
        self.endLSN = endLSN
        self.commitTime = commitTime
        self.changes = changes
    }
}
