/// A minimal HTTP/1.1 response decoder for one long-lived streaming answer: it reads the status line and headers once,
/// then hands the body over in place (chunked, by length, or up to the close), without allocating per read or per
/// chunk.
///
/// It replaces NIOHTTP1's decoder on the subscribers' receive path, which allocated a part and a buffer per read and
/// cost more than the checks. It knows only what an SSE answer uses: no `100 Continue`, no trailers kept, no keep-alive
/// after the answer.
struct HTTPStreamDecoder {
    enum Part {
        case head(status: Int)
        /// Body bytes (the chunks' data, without their framing); valid only during the call.
        case body(UnsafeRawBufferPointer)
        /// The body is complete (the last chunk, or its length reached).
        case end
    }

    struct Malformed: Error, CustomStringConvertible {
        var description: String
    }

    private enum State {
        case head
        case chunkSize
        case chunkExtension
        case chunkSizeLineFeed
        case chunkData
        case chunkDataCarriageReturn
        case chunkDataLineFeed
        case identity
        case done
    }

    private var state = State.head
    private var head: [UInt8] = []
    private var chunkSize = 0
    private var remaining = 0
    private var untilClose = false

    private static let maxHeadBytes = 64 * 1024

    /// Decodes the bytes of one read, in order; `onPart` is called for each part found.
    mutating func feed(_ bytes: UnsafeRawBufferPointer, _ onPart: (Part) -> Void) throws {
        var index = 0
        let count = bytes.count
        while index < count {
            switch state {
            case .head:
                index = try readHead(bytes, from: index, onPart)
            case .chunkSize:
                let byte = bytes[index]
                index += 1
                if let digit = Self.hexDigit(byte) {
                    guard chunkSize < 1 << 40 else { throw Malformed(description: "chunk size too large") }
                    chunkSize = chunkSize << 4 | digit
                } else if byte == UInt8(ascii: "\r") {
                    state = .chunkSizeLineFeed
                } else if byte == UInt8(ascii: ";") || byte == UInt8(ascii: " ") {
                    state = .chunkExtension
                } else {
                    throw Malformed(description: "bad chunk size byte \(byte)")
                }
            case .chunkExtension:
                if bytes[index] == UInt8(ascii: "\r") { state = .chunkSizeLineFeed }
                index += 1
            case .chunkSizeLineFeed:
                guard bytes[index] == UInt8(ascii: "\n") else { throw Malformed(description: "chunk size line without LF") }
                index += 1
                if chunkSize == 0 {
                    state = .done
                    onPart(.end)
                    return
                }
                remaining = chunkSize
                chunkSize = 0
                state = .chunkData
            case .chunkData:
                let take = min(remaining, count - index)
                onPart(.body(UnsafeRawBufferPointer(rebasing: bytes[index..<index + take])))
                index += take
                remaining -= take
                if remaining == 0 { state = .chunkDataCarriageReturn }
            case .chunkDataCarriageReturn:
                guard bytes[index] == UInt8(ascii: "\r") else { throw Malformed(description: "chunk without CRLF") }
                index += 1
                state = .chunkDataLineFeed
            case .chunkDataLineFeed:
                guard bytes[index] == UInt8(ascii: "\n") else { throw Malformed(description: "chunk without CRLF") }
                index += 1
                state = .chunkSize
            case .identity:
                let take = untilClose ? count - index : min(remaining, count - index)
                onPart(.body(UnsafeRawBufferPointer(rebasing: bytes[index..<index + take])))
                index += take
                remaining -= take
                if !untilClose, remaining == 0 {
                    state = .done
                    onPart(.end)
                    return
                }
            case .done:
                return  // bytes after the answer: ignored, the connection is closing
            }
        }
    }

    /// Collects the head up to its blank line, then reads the status and how the body is framed.
    private mutating func readHead(_ bytes: UnsafeRawBufferPointer, from index: Int, _ onPart: (Part) -> Void) throws -> Int {
        let searchFrom = max(0, head.count - 3)
        head.append(contentsOf: UnsafeRawBufferPointer(rebasing: bytes[index...]))
        guard let end = Self.blankLine(in: head, from: searchFrom) else {
            guard head.count <= Self.maxHeadBytes else { throw Malformed(description: "response head too large") }
            return bytes.count
        }
        let consumed = end - (head.count - (bytes.count - index))  // bytes of this read that belong to the head
        let text = String(decoding: head[..<end], as: UTF8.self)
        head = []
        var lines = text.split(separator: "\r\n", omittingEmptySubsequences: true).makeIterator()
        let statusParts = lines.next()?.split(separator: " ", maxSplits: 2) ?? []
        guard statusParts.count >= 2, statusParts[0].hasPrefix("HTTP/1."), let status = Int(statusParts[1]) else {
            throw Malformed(description: "bad status line")
        }
        var chunked = false
        var length: Int?
        while let line = lines.next() {
            guard let colon = line.firstIndex(of: ":") else { continue }
            let name = line[..<colon].lowercased()
            let value = line[line.index(after: colon)...].trimmedOfBlanks().lowercased()
            if name == "transfer-encoding" {
                chunked = value.hasSuffix("chunked")
            } else if name == "content-length" {
                length = Int(value)
            }
        }
        if chunked {
            state = .chunkSize
        } else if let length {
            state = .identity
            remaining = length
        } else {
            state = .identity
            untilClose = true
        }
        onPart(.head(status: status))
        if state == .identity, !untilClose, remaining == 0 {
            state = .done
            onPart(.end)
            return bytes.count
        }
        return index + consumed
    }

    /// The index just after the first `\r\n\r\n` at or after `from`, or nil.
    private static func blankLine(in bytes: [UInt8], from: Int) -> Int? {
        var index = from
        while index + 3 < bytes.count {
            if bytes[index] == 13, bytes[index + 1] == 10, bytes[index + 2] == 13, bytes[index + 3] == 10 { return index + 4 }
            index += 1
        }
        return nil
    }

    private static func hexDigit(_ byte: UInt8) -> Int? {
        switch byte {
        case UInt8(ascii: "0")...UInt8(ascii: "9"): Int(byte - UInt8(ascii: "0"))
        case UInt8(ascii: "a")...UInt8(ascii: "f"): Int(byte - UInt8(ascii: "a") + 10)
        case UInt8(ascii: "A")...UInt8(ascii: "F"): Int(byte - UInt8(ascii: "A") + 10)
        default: nil
        }
    }
}

extension Substring {
    /// Without leading and trailing spaces and tabs.
    fileprivate func trimmedOfBlanks() -> Substring {
        let isBlank: (Character) -> Bool = { $0 == " " || $0 == "\t" }
        let start = firstIndex(where: { !isBlank($0) }) ?? endIndex
        let end = lastIndex(where: { !isBlank($0) }).map(index(after:)) ?? start
        return self[start..<Swift.max(start, end)]
    }
}
