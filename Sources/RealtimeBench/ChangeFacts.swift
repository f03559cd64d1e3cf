/// What a change frame says about the row it carries, read from its `data:` line as it arrives, so that the frame can be
/// matched afterwards to the write that made it by content — the task, the kind of change, the title and status it
/// shows — and not by the server's sequence numbers.
///
/// Kept small and flat (a few dozen bytes a frame): a 10,000-subscriber run keeps millions of them.
struct ChangeFacts: Sendable, Equatable {
    /// The kinds of change the writes make.
    enum Kind: UInt8, Sendable {
        case unknown
        case taskInsert
        case taskUpdate
        case taskDelete
        case historyInsert
        case historyDelete
    }

    /// The task's index in this run (see ``TaskIDs``), or -1 when the row names no task of this run.
    var task: Int32 = -1
    var kind: Kind = .unknown
    /// The task's status, or a history row's `to_status` (see ``TaskStatus``).
    var status: TaskStatus = .none
    /// A history row's `from_status`.
    var fromStatus: TaskStatus = .none
    /// The write number in the task's title (`bench w<n>`), or -1 for another title (the setup's `bench seed`).
    var title: Int32 = -1
    /// Tells two versions of a row apart: a task's `updated_at` (in µs), a history row's id (its last 16 hex digits).
    var identity: UInt64 = 0
    /// The event's `commit_timestamp`, in µs since 1970; 0 when it could not be read.
    var commitMicroseconds: Int64 = 0
}

/// A task status as a byte.
enum TaskStatus: UInt8, Sendable {
    case none
    case taken
    case done
    case posted
    case edited

    init(text: UnsafeRawBufferPointer) {
        switch (text.count, text.first) {
        case (5, UInt8(ascii: "t")): self = .taken
        case (4, UInt8(ascii: "d")): self = .done
        case (6, UInt8(ascii: "p")): self = .posted
        case (6, UInt8(ascii: "e")): self = .edited
        default: self = .none
        }
    }

    /// The status a status change moves a task to from this one (the cycle the writes follow).
    var next: TaskStatus {
        switch self {
        case .taken: .done
        case .done: .posted
        case .posted: .edited
        case .edited, .none: .taken
        }
    }
}

/// Reads ``ChangeFacts`` from a change frame's JSON in one pass, without building strings.
///
/// The frame is `{"type":…,"table":"task","event":"UPDATE","commit_timestamp":"…","channels":[…],"record":{…},
/// "old_record":{…}}`. The first value of each key wins: `record` comes before `old_record`, and a DELETE's `record`
/// is `{}`, so a DELETE's facts come from its `old_record`. Whitespace after a colon is allowed.
struct ChangeFactsReader {
    /// The first 24 characters every task id of this run starts with (``TaskIDs/prefix``).
    let taskPrefix: [UInt8]

    func read(_ json: UnsafeRawBufferPointer) -> ChangeFacts {
        var facts = ChangeFacts()
        var isTask = false
        var isHistory = false
        var event = UInt8(0)
        var pendingKey = Key.other
        var found = 0
        var index = 0
        let count = json.count
        while index < count {
            let byte = json[index]
            guard byte == UInt8(ascii: "\"") else {
                if pendingKey != .other, byte != UInt8(ascii: ":"), byte != UInt8(ascii: " ") { pendingKey = .other }
                index += 1
                continue
            }
            // A string: find its end (a title may hold escaped quotes).
            let start = index + 1
            var end = start
            while end < count, json[end] != UInt8(ascii: "\"") { end += json[end] == UInt8(ascii: "\\") ? 2 : 1 }
            guard end < count else { break }
            let text = UnsafeRawBufferPointer(rebasing: json[start..<end])
            index = end + 1
            var after = index
            while after < count, json[after] == UInt8(ascii: " ") { after += 1 }
            if after < count, json[after] == UInt8(ascii: ":") {
                pendingKey = Key(text)
                index = after + 1
                continue
            }
            // A string value of the key just read.
            switch pendingKey {
            case .table:
                isTask = text.elementsEqual("task".utf8)
                isHistory = text.elementsEqual("status_history".utf8)
            case .event:
                event = text.first ?? 0
            case .commitTimestamp:
                facts.commitMicroseconds = WallClock.microseconds(iso8601: text) ?? 0
            case .id where found & 1 == 0:
                found |= 1
                if isTask { facts.task = TaskIDs.index(text, prefix: taskPrefix) } else { facts.identity = Self.hexTail(text) }
            case .taskID where found & 2 == 0:
                found |= 2
                if isHistory { facts.task = TaskIDs.index(text, prefix: taskPrefix) }
            case .title where found & 4 == 0:
                found |= 4
                facts.title = Self.writeNumber(text)
            case .status where found & 8 == 0, .toStatus where found & 8 == 0:
                found |= 8
                facts.status = TaskStatus(text: text)
            case .fromStatus where found & 16 == 0:
                found |= 16
                facts.fromStatus = TaskStatus(text: text)
            case .updatedAt where found & 32 == 0:
                found |= 32
                if isTask { facts.identity = UInt64(bitPattern: WallClock.microseconds(iso8601: text) ?? 0) }
            default:
                break
            }
            pendingKey = .other
            // Everything a task's or a history row's facts need is read: the rest of the frame is not.
            if (isTask && found & 45 == 45) || (isHistory && found & 11 == 11 && (found & 16 != 0 || event != UInt8(ascii: "I"))) {
                break
            }
        }
        switch (isTask, isHistory, event) {
        case (true, _, UInt8(ascii: "I")): facts.kind = .taskInsert
        case (true, _, UInt8(ascii: "U")): facts.kind = .taskUpdate
        case (true, _, UInt8(ascii: "D")): facts.kind = .taskDelete
        case (_, true, UInt8(ascii: "I")): facts.kind = .historyInsert
        case (_, true, UInt8(ascii: "D")): facts.kind = .historyDelete
        default: facts.kind = .unknown
        }
        return facts
    }

    /// The keys read; every other key is skipped.
    private enum Key {
        case other, table, event, commitTimestamp, id, taskID, title, status, toStatus, fromStatus, updatedAt

        init(_ text: UnsafeRawBufferPointer) {
            switch text.count {
            case 2 where text.elementsEqual("id".utf8): self = .id
            case 5 where text.elementsEqual("table".utf8): self = .table
            case 5 where text.elementsEqual("event".utf8): self = .event
            case 5 where text.elementsEqual("title".utf8): self = .title
            case 6 where text.elementsEqual("status".utf8): self = .status
            case 7 where text.elementsEqual("task_id".utf8): self = .taskID
            case 9 where text.elementsEqual("to_status".utf8): self = .toStatus
            case 10 where text.elementsEqual("updated_at".utf8): self = .updatedAt
            case 11 where text.elementsEqual("from_status".utf8): self = .fromStatus
            case 16 where text.elementsEqual("commit_timestamp".utf8): self = .commitTimestamp
            default: self = .other
            }
        }
    }

    private static let titlePrefix = Array("bench w".utf8)

    /// `n` of a title `bench w<n>…`; -1 for any other title.
    private static func writeNumber(_ text: UnsafeRawBufferPointer) -> Int32 {
        guard text.starts(with: titlePrefix) else { return -1 }
        var value: Int32 = 0
        var digits = 0
        for byte in text[titlePrefix.count...] {
            let digit = byte &- UInt8(ascii: "0")
            guard digit < 10 else { break }
            value = value &* 10 &+ Int32(digit)
            digits += 1
        }
        return digits > 0 ? value : -1
    }

    /// The last 16 hex digits of a uuid, as a number.
    private static func hexTail(_ text: UnsafeRawBufferPointer) -> UInt64 {
        var value: UInt64 = 0
        for byte in text.suffix(16) { value = value << 4 | UInt64(TaskIDs.hexValue(byte)) }
        return value
    }
}
