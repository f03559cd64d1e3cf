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

/// Decodes pgoutput messages (protocol version 1), the payload of the XLogData messages of a logical replication stream.
///
/// The decoder keeps the relations announced by Relation messages, so it must see every message of a session in order.
/// It does no I/O: feed it the bytes after the 25-byte XLogData header.
public struct PgOutputDecoder: Sendable {
    /// A table as announced by a Relation message.
    public struct Relation: Sendable, Equatable {
        /// One column of a relation.
        public struct Column: Sendable, Equatable {
            /// 1 when the column is part of the replica identity key, else 0.
            public var flags: UInt8
            public var name: String
            public var typeOID: UInt32
            public var typeModifier: Int32

            public init(flags: UInt8, name: String, typeOID: UInt32, typeModifier: Int32) {
                self.flags = flags
                self.name = name
                self.typeOID = typeOID
                self.typeModifier = typeModifier
            }
        }

        public var oid: UInt32
        /// The schema (empty for `pg_catalog`).
        public var schema: String
        public var name: String
        /// `relreplident`: `d` default, `n` nothing, `f` full, `i` index.
        public var replicaIdentity: UInt8
        public var columns: [Column]

        public init(oid: UInt32, schema: String, name: String, replicaIdentity: UInt8, columns: [Column]) {
            self.oid = oid
            self.schema = schema
            self.name = name
            self.replicaIdentity = replicaIdentity
            self.columns = columns
        }
    }

    /// One decoded pgoutput message.
    public enum DecodedMessage: Sendable, Equatable {
        /// 'B': a transaction starts; `finalLSN` is the LSN of its commit record.
        case begin(finalLSN: UInt64, commitTime: Date, xid: UInt32)
        /// 'C': the transaction committed.
        case commit(flags: UInt8, commitLSN: UInt64, endLSN: UInt64, commitTime: Date)
        /// 'R': a relation's layout, cached by the decoder.
        case relation(Relation)
        /// 'I', 'U' or 'D'. `unresolvedColumns` names the columns of the new tuple that the server sent as unchanged
        /// TOASTed values ('u') and that no old tuple could supply: their values are nil although they are not NULL.
        case change(WALRowChange, unresolvedColumns: [String])
        /// 'T': tables truncated (`schema.name`, or the OID when the relation is unknown).
        case truncate(relations: [String], options: UInt8)
        /// 'O': the origin of the transaction.
        case origin(lsn: UInt64, name: String)
        /// 'Y': a data type's name.
        case type(oid: UInt32, schema: String, name: String)
        /// 'M': a logical decoding message (`pg_logical_emit_message`).
        case message(transactional: Bool, lsn: UInt64, prefix: String, content: [UInt8])
    }

    /// The relations announced so far, by OID.
    public private(set) var relations: [UInt32: Relation] = [:]

    public init() {}

    /// Decodes one pgoutput message; Relation messages update the relation cache.
    public mutating func decode(_ bytes: [UInt8]) throws(ReplicationError) -> DecodedMessage {
        var reader = ByteReader(bytes)
        let kind = try reader.readUInt8()
        let message: DecodedMessage
        switch kind {
        case UInt8(ascii: "B"):
            let finalLSN = try reader.readUInt64()
            let time = try reader.readTimestamp()
            message = .begin(finalLSN: finalLSN, commitTime: time, xid: try reader.readUInt32())
        case UInt8(ascii: "C"):
            let flags = try reader.readUInt8()
            let commitLSN = try reader.readUInt64()
            let endLSN = try reader.readUInt64()
            message = .commit(flags: flags, commitLSN: commitLSN, endLSN: endLSN, commitTime: try reader.readTimestamp())
        case UInt8(ascii: "R"):
            let relation = try Self.readRelation(&reader)
            relations[relation.oid] = relation
            message = .relation(relation)
        case UInt8(ascii: "I"), UInt8(ascii: "U"), UInt8(ascii: "D"):
            message = try decodeChange(kind: kind, &reader)
        case UInt8(ascii: "T"):
            let count = try reader.readUInt32()
            let options = try reader.readUInt8()
            var names: [String] = []
            for _ in 0..<count {
                let oid = try reader.readUInt32()
                names.append(relations[oid].map { "\($0.schema).\($0.name)" } ?? "\(oid)")
            }
            message = .truncate(relations: names, options: options)
        case UInt8(ascii: "O"):
            let lsn = try reader.readUInt64()
            message = .origin(lsn: lsn, name: try reader.readString())
        case UInt8(ascii: "Y"):
            let oid = try reader.readUInt32()
            let schema = try reader.readString()
            message = .type(oid: oid, schema: schema, name: try reader.readString())
        case UInt8(ascii: "M"):
            let flags = try reader.readUInt8()
            let lsn = try reader.readUInt64()
            let prefix = try reader.readString()
            let length = try reader.readUInt32()
            let content = try reader.readBytes(Int(length))
            message = .message(transactional: flags & 1 == 1, lsn: lsn, prefix: prefix, content: content)
        default:
            throw ReplicationError("unknown pgoutput message type \(Self.describe(kind))")
        }
        guard reader.isAtEnd else {
            throw ReplicationError("pgoutput message \(Self.describe(kind)) has \(reader.remaining) unexpected trailing bytes")
        }
        return message
    }

    private static func readRelation(_ reader: inout ByteReader) throws(ReplicationError) -> Relation {
        let oid = try reader.readUInt32()
        let schema = try reader.readString()
        let name = try reader.readString()
        let replicaIdentity = try reader.readUInt8()
        let count = try reader.readUInt16()
        var columns: [Relation.Column] = []
        columns.reserveCapacity(Int(count))
        for _ in 0..<count {
            let flags = try reader.readUInt8()
            let columnName = try reader.readString()
            let typeOID = try reader.readUInt32()
            let typeModifier = Int32(bitPattern: try reader.readUInt32())
            columns.append(Relation.Column(flags: flags, name: columnName, typeOID: typeOID, typeModifier: typeModifier))
        }
        return Relation(oid: oid, schema: schema, name: name, replicaIdentity: replicaIdentity, columns: columns)
    }

    /// One value of a TupleData part.
    private enum TupleValue {
        case null
        case unchangedToast
        case text(String)

        var text: String? {
            if case .text(let value) = self { value } else { nil }
        }
    }

    private func decodeChange(kind: UInt8, _ reader: inout ByteReader) throws(ReplicationError) -> DecodedMessage {
        let oid = try reader.readUInt32()
        guard let relation = relations[oid] else {
            throw ReplicationError("pgoutput message \(Self.describe(kind)) refers to relation \(oid), which no Relation message announced")
        }
        var old: [TupleValue]?
        var new: [TupleValue]?
        var part = try reader.readUInt8()
        switch kind {
        case UInt8(ascii: "I"):
            guard part == UInt8(ascii: "N") else { throw Self.unexpectedPart(part, in: kind) }
            new = try Self.readTuple(&reader, relation: relation)
        case UInt8(ascii: "U"):
            if part == UInt8(ascii: "K") || part == UInt8(ascii: "O") {
                old = try Self.readTuple(&reader, relation: relation)
                part = try reader.readUInt8()
            }
            guard part == UInt8(ascii: "N") else { throw Self.unexpectedPart(part, in: kind) }
            new = try Self.readTuple(&reader, relation: relation)
        default:
            guard part == UInt8(ascii: "K") || part == UInt8(ascii: "O") else { throw Self.unexpectedPart(part, in: kind) }
            old = try Self.readTuple(&reader, relation: relation)
        }

        var unresolved: [String] = []
        let newValues: [String?]? = new.map { tuple in
            tuple.enumerated().map { index, value in
                guard case .unchangedToast = value else { return value.text }
                // An unchanged TOASTed value: the server did not send it; the old tuple may have it.
                if let substitute = old?[index].text { return substitute }
                unresolved.append(relation.columns[index].name)
                return nil
            }
        }
        let operation: WALRowChange.Operation =
            switch kind {
            case UInt8(ascii: "I"): .insert
            case UInt8(ascii: "U"): .update
            default: .delete
            }
        let change = WALRowChange(
            schema: relation.schema,
            table: relation.name,
            operation: operation,
            columns: relation.columns.map(\.name),
            typeOIDs: relation.columns.map(\.typeOID),
            newValues: newValues,
            oldValues: old.map { $0.map(\.text) }
        )
        return .change(change, unresolvedColumns: unresolved)
    }

    private static func readTuple(_ reader: inout ByteReader, relation: Relation) throws(ReplicationError) -> [TupleValue] {
        let count = Int(try reader.readUInt16())
        guard count == relation.columns.count else {
            throw ReplicationError(
                "a tuple of \(relation.schema).\(relation.name) has \(count) columns; its Relation message announced \(relation.columns.count)"
            )
        }
        var values: [TupleValue] = []
        values.reserveCapacity(count)
        for _ in 0..<count {
            let kind = try reader.readUInt8()
            switch kind {
            case UInt8(ascii: "n"): values.append(.null)
            case UInt8(ascii: "u"): values.append(.unchangedToast)
            case UInt8(ascii: "t"):
                let length = try reader.readUInt32()
                values.append(.text(String(decoding: try reader.readBytes(Int(length)), as: UTF8.self)))
            default:
                throw ReplicationError("unknown TupleData value kind \(describe(kind)) in a tuple of \(relation.schema).\(relation.name)")
            }
        }
        return values
    }

    private static func unexpectedPart(_ part: UInt8, in kind: UInt8) -> ReplicationError {
        ReplicationError("unexpected part \(describe(part)) in pgoutput message \(describe(kind))")
    }

    static func describe(_ byte: UInt8) -> String {
        (0x20..<0x7f).contains(byte) ? "'\(Character(Unicode.Scalar(byte)))'" : "0x\(String(byte, radix: 16))"
    }
}

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

// MARK: - Streaming replication protocol (the CopyData messages around pgoutput)

/// The messages of the streaming replication protocol inside CopyBoth mode, and the PostgreSQL time and LSN formats.
enum ReplicationProtocol {
    /// A message from the server.
    enum ServerMessage: Equatable {
        /// 'w' XLogData: a pgoutput message.
        case xLogData(start: UInt64, end: UInt64, sendTime: Date, payload: [UInt8])
        /// 'k' Primary keepalive.
        case keepalive(walEnd: UInt64, sendTime: Date, replyRequested: Bool)
    }

    static func parse(_ bytes: [UInt8]) throws(ReplicationError) -> ServerMessage {
        var reader = ByteReader(bytes)
        let kind = try reader.readUInt8()
        switch kind {
        case UInt8(ascii: "w"):
            let start = try reader.readUInt64()
            let end = try reader.readUInt64()
            let time = try reader.readTimestamp()
            return .xLogData(start: start, end: end, sendTime: time, payload: reader.readRest())
        case UInt8(ascii: "k"):
            let walEnd = try reader.readUInt64()
            let time = try reader.readTimestamp()
            let reply = try reader.readUInt8()
            return .keepalive(walEnd: walEnd, sendTime: time, replyRequested: reply != 0)
        default:
            throw ReplicationError("unknown replication message type \(PgOutputDecoder.describe(kind))")
        }
    }

    /// A Standby status update ('r') reporting `lsn` as written, flushed and applied.
    static func statusUpdate(lsn: UInt64, now: Date, replyRequested: Bool = false) -> [UInt8] {
        var bytes: [UInt8] = [UInt8(ascii: "r")]
        bytes.reserveCapacity(34)
        for value in [lsn, lsn, lsn, UInt64(bitPattern: microseconds(since2000: now))] {
            withUnsafeBytes(of: value.bigEndian) { bytes.append(contentsOf: $0) }
        }
        bytes.append(replyRequested ? 1 : 0)
        return bytes
    }

    /// 2000-01-01 00:00:00 UTC, PostgreSQL's epoch, in seconds since 1970.
    static let postgresEpoch: TimeInterval = 946_684_800

    static func date(microsecondsSince2000 value: Int64) -> Date {
        Date(timeIntervalSince1970: postgresEpoch + TimeInterval(value) / 1_000_000)
    }

    static func microseconds(since2000 date: Date) -> Int64 {
        Int64(((date.timeIntervalSince1970 - postgresEpoch) * 1_000_000).rounded())
    }
}

/// Reads the big-endian integers and NUL-terminated strings of the replication protocol.
struct ByteReader {
    private let bytes: [UInt8]
    private var index = 0

    init(_ bytes: [UInt8]) { self.bytes = bytes }

    var remaining: Int { bytes.count - index }
    var isAtEnd: Bool { index == bytes.count }

    mutating func readUInt8() throws(ReplicationError) -> UInt8 {
        try need(1)
        defer { index += 1 }
        return bytes[index]
    }

    mutating func readUInt16() throws(ReplicationError) -> UInt16 { UInt16(truncatingIfNeeded: try readInteger(size: 2)) }
    mutating func readUInt32() throws(ReplicationError) -> UInt32 { UInt32(truncatingIfNeeded: try readInteger(size: 4)) }
    mutating func readUInt64() throws(ReplicationError) -> UInt64 { try readInteger(size: 8) }

    /// A timestamp: microseconds since 2000-01-01 UTC.
    mutating func readTimestamp() throws(ReplicationError) -> Date {
        ReplicationProtocol.date(microsecondsSince2000: Int64(bitPattern: try readUInt64()))
    }

    /// A NUL-terminated UTF-8 string.
    mutating func readString() throws(ReplicationError) -> String {
        guard let end = bytes[index...].firstIndex(of: 0) else { throw ReplicationError("a string is not NUL-terminated") }
        defer { index = end + 1 }
        return String(decoding: bytes[index..<end], as: UTF8.self)
    }

    mutating func readBytes(_ count: Int) throws(ReplicationError) -> [UInt8] {
        try need(count)
        defer { index += count }
        return Array(bytes[index..<index + count])
    }

    mutating func readRest() -> [UInt8] {
        defer { index = bytes.count }
        return Array(bytes[index...])
    }

    private mutating func readInteger(size: Int) throws(ReplicationError) -> UInt64 {
        try need(size)
        var value: UInt64 = 0
        for byte in bytes[index..<index + size] { value = value << 8 | UInt64(byte) }
        index += size
        return value
    }

    private func need(_ count: Int) throws(ReplicationError) {
        guard count >= 0, remaining >= count else {
            throw ReplicationError("message truncated: needed \(count) more bytes at offset \(index), \(remaining) left")
        }
    }
}
