import Foundation

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
