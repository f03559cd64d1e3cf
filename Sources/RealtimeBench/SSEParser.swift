#if canImport(Glibc)
    import Glibc
#elseif canImport(Musl)
    import Musl
#endif

/// One frame of a Server-Sent Events stream, as much of it as the load tool needs.
enum SSEFrameKind: Equatable, Sendable {
    /// A change (realtime's `postgres_changes`, or nchan's unnamed message) with its sequence number, and for realtime
    /// what its data says of the row (see ``ChangeFacts``).
    case change(sequence: Int64, facts: ChangeFacts)
    /// A control event that ends or resets the stream (`error`, `revoked`, `token_expired`, `reset`).
    case control(name: String)
}

/// Where a frame's sequence number is read from.
enum SequenceSource: Sendable {
    /// The frame's `id:` line: realtime's event-log cursor, which orders events by commit.
    case eventID
    /// The leading `{"seq":<n>` of the frame's `data:` line: what the nchan publisher writes (nchan's own ids are times).
    case dataPrefix
}

/// An incremental SSE parser that reads `id:`, `event:` and `data:` lines without building strings on the hot path.
///
/// Lines may be split across reads: the unfinished tail is kept until the next read completes it.
struct SSEParser {
    let source: SequenceSource
    /// Reads the facts of a realtime change's data line; nil for nchan.
    let factsReader: ChangeFactsReader?
    private var facts = ChangeFacts()
    private var partialLine: [UInt8] = []
    private var sequence: Int64?
    private var eventName: EventName = .message
    private var hasData = false

    /// The event names told apart without allocating; anything else is kept as text.
    private enum EventName: Equatable {
        case message
        case change
        case other(String)
    }

    private static let changeEventName = Array("postgres_changes".utf8)
    private static let dataSequencePrefix = Array(#"{"seq":"#.utf8)

    init(source: SequenceSource, factsReader: ChangeFactsReader? = nil) {
        self.source = source
        self.factsReader = factsReader
    }

    /// Parses `bytes` (body bytes, in order, in any pieces), calling `onFrame` for every complete frame.
    mutating func feed(_ bytes: UnsafeRawBufferPointer, onFrame: (SSEFrameKind) -> Void) {
        guard let base = bytes.baseAddress else { return }
        let count = bytes.count
        var start = 0
        while start < count, let found = memchr(base + start, Int32(UInt8(ascii: "\n")), count - start) {
            let newline = base.distance(to: UnsafeRawPointer(found))
            if partialLine.isEmpty {
                line(UnsafeRawBufferPointer(start: base + start, count: newline - start), onFrame: onFrame)
            } else {
                partialLine.append(contentsOf: UnsafeRawBufferPointer(start: base + start, count: newline - start))
                // Taken out (not copied) while it is parsed, and put back emptied: its storage is kept for the next.
                var whole: [UInt8] = []
                swap(&whole, &partialLine)
                whole.withUnsafeBytes { line($0, onFrame: onFrame) }
                whole.removeAll(keepingCapacity: true)
                partialLine = whole
            }
            start = newline + 1
        }
        if start < count { partialLine.append(contentsOf: UnsafeRawBufferPointer(start: base + start, count: count - start)) }
    }

    private mutating func line(_ raw: UnsafeRawBufferPointer, onFrame: (SSEFrameKind) -> Void) {
        var line = raw
        if let last = line.last, last == UInt8(ascii: "\r") { line = UnsafeRawBufferPointer(rebasing: line.dropLast()) }
        guard let first = line.first else {
            dispatch(onFrame: onFrame)
            return
        }
        if first == UInt8(ascii: ":") { return }  // a comment: the keepalive
        guard let colon = line.firstIndex(of: UInt8(ascii: ":")) else { return }
        var valueStart = colon + 1
        if valueStart < line.count, line[valueStart] == UInt8(ascii: " ") { valueStart += 1 }
        let field = UnsafeRawBufferPointer(rebasing: line[0..<colon])
        let value = UnsafeRawBufferPointer(rebasing: line[valueStart...])
        switch (field.count, first) {
        case (2, UInt8(ascii: "i")) where source == .eventID:
            sequence = Self.integer(value)
        case (5, UInt8(ascii: "e")):
            if value.elementsEqual(Self.changeEventName) {
                eventName = .change
            } else {
                eventName = .other(String(decoding: value, as: UTF8.self))
            }
        case (4, UInt8(ascii: "d")):
            hasData = true
            if let factsReader, eventName == .change {
                facts = factsReader.read(value)
            } else if source == .dataPrefix, value.starts(with: Self.dataSequencePrefix) {
                sequence = Self.integer(UnsafeRawBufferPointer(rebasing: value[Self.dataSequencePrefix.count...]))
            }
        default:
            break  // retry:, or a field this tool does not read
        }
    }

    private mutating func dispatch(onFrame: (SSEFrameKind) -> Void) {
        defer {
            sequence = nil
            facts = ChangeFacts()
            eventName = .message
            hasData = false
        }
        guard hasData else { return }  // e.g. a lone `retry:` frame
        switch eventName {
        case .change, .message:
            if let sequence { onFrame(.change(sequence: sequence, facts: facts)) }
        case .other(let name):
            onFrame(.control(name: name))
        }
    }

    /// The leading decimal digits of `bytes`, or nil when there are none.
    private static func integer(_ bytes: UnsafeRawBufferPointer) -> Int64? {
        var value: Int64 = 0
        var digits = 0
        for byte in bytes {
            let digit = byte &- UInt8(ascii: "0")
            guard digit < 10 else { break }
            value = value &* 10 &+ Int64(digit)
            digits += 1
        }
        return digits > 0 ? value : nil
    }
}
