import Foundation

/// Gathers decoded pgoutput messages into transactions, handed on in pieces of bounded size: a transaction of millions
/// of rows never sits whole in memory.
struct WALTransactionAssembler {
    /// The most changes in one piece.
    static let maxPieceChanges = 1000
    /// About the most bytes of values in one piece.
    static let maxPieceBytes = 4 << 20

    private var current: WALTransaction?
    private var currentBytes = 0

    /// Whether a Begin was seen and its Commit not yet.
    var isInTransaction: Bool { current != nil }

    /// Takes the next message; returns a piece when it filled one, and the last piece at the transaction's Commit.
    mutating func consume(_ message: PgOutputDecoder.DecodedMessage) throws(ReplicationError) -> WALTransaction? {
        switch message {
        case .begin(let finalLSN, let commitTime, let xid):
            guard current == nil else { throw ReplicationError("a Begin message arrived inside transaction \(current?.xid ?? 0)") }
            current = WALTransaction(xid: xid, commitLSN: finalLSN, endLSN: 0, commitTime: commitTime, changes: [])
            currentBytes = 0
            return nil
        case .change(let change, _):
            guard current != nil else { throw ReplicationError("a row change arrived outside a transaction") }
            return add(change)
        case .commit(_, _, let endLSN, let commitTime):
            guard var transaction = current else { throw ReplicationError("a Commit message arrived outside a transaction") }
            current = nil
            transaction.endLSN = endLSN
            transaction.commitTime = commitTime
            transaction.isComplete = true
            return transaction
        case .truncate(let relations, _):
            guard current != nil else { throw ReplicationError("a Truncate message arrived outside a transaction") }
            for relation in relations {
                let (schema, table) = WALRowChange.split(relation)
                let change = WALRowChange(
                    schema: schema, table: table, operation: .truncate, columns: [], typeOIDs: [], newValues: nil, oldValues: nil)
                if let piece = add(change) { return piece }  // at most one piece: a TRUNCATE names few tables
            }
            return nil
        case .relation, .origin, .type, .message:
            return nil
        }
    }

    /// Adds a change to the current piece; returns the piece when it is full, and starts the next.
    private mutating func add(_ change: WALRowChange) -> WALTransaction? {
        guard var piece = current else { return nil }
        piece.changes.append(change)
        currentBytes += change.estimatedBytes
        guard piece.changes.count >= Self.maxPieceChanges || currentBytes >= Self.maxPieceBytes else {
            current = piece
            return nil
        }
        piece.isComplete = false
        var next = piece
        next.firstIndex = piece.firstIndex + piece.changes.count
        next.changes = []
        current = next
        currentBytes = 0
        return piece
    }
}

extension WALRowChange {
    /// About the bytes this change holds: its values and column names.
    var estimatedBytes: Int {
        var bytes = 64 + table.utf8.count
        for values in [newValues, oldValues] {
            for value in values ?? [] { bytes += 16 + (value?.utf8.count ?? 0) }
        }
        for column in columns { bytes += column.utf8.count }
        return bytes
    }
}
