import Foundation

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
