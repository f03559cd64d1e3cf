import Foundation

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
