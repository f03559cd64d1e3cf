import Foundation

/// The ids of a run's tasks: the tool chooses them (the REST API takes client-made ids), a random prefix of the run
/// and the task's index in the last 12 hex digits, e.g. `1f0c3a9e-77d2-4b10-8e41-00000000002a` for task 42. A frame's
/// task is then known from its bytes at once, and a row of another run is never taken for one of this run's.
struct TaskIDs: Sendable {
    /// The first 24 characters of every id of the run, with the last dash, in lower case.
    let prefix: [UInt8]
    private let prefixText: String

    init() {
        let random = UUID().uuidString.lowercased()
        prefixText = String(random.prefix(24))
        prefix = Array(prefixText.utf8)
    }

    /// The id of task `index`.
    func id(_ index: Int) -> UUID {
        let tail = String(index, radix: 16)
        return UUID(uuidString: prefixText + String(repeating: "0", count: max(0, 12 - tail.count)) + tail)!
    }

    /// The index of a task id of the run, from its text; -1 when it is not one.
    static func index(_ text: UnsafeRawBufferPointer, prefix: [UInt8]) -> Int32 {
        guard text.count == 36, text.starts(with: prefix) else { return -1 }
        var value: Int64 = 0
        for byte in text[24...] {
            let digit = hexValue(byte)
            guard digit < 16 else { return -1 }
            value = value << 4 | Int64(digit)
        }
        return value <= Int64(Int32.max) ? Int32(value) : -1
    }

    /// The value of a hex digit (either case); 16 or more when it is not one.
    static func hexValue(_ byte: UInt8) -> UInt8 {
        switch byte {
        case UInt8(ascii: "0")...UInt8(ascii: "9"): byte - UInt8(ascii: "0")
        case UInt8(ascii: "a")...UInt8(ascii: "f"): byte - UInt8(ascii: "a") + 10
        case UInt8(ascii: "A")...UInt8(ascii: "F"): byte - UInt8(ascii: "A") + 10
        default: 255
        }
    }
}
