/// A point in time read from ISO-8601 text, exact to the nanosecond, for comparing timestamps written differently.
///
/// `2024-05-01T12:00:00+02:00`, `2024-05-01 10:00:00.000000+00` and `2024-05-01T10:00:00Z` are the same instant; as text
/// they do not compare correctly. It reads the shapes `ISO8601Text.isTimestamp` accepts (and PostgreSQL prints): a date,
/// `T` or a space, `hh:mm`, optional `:ss` and up to nine fraction digits, then `Z` or an offset `±hh`, `±hhmm`, `±hh:mm`.
/// Hand-written rather than `ISO8601DateFormatter` because that one neither reads a space, `±hh`, nor more than
/// millisecond precision, and microseconds matter for `updated_at`.
struct Instant: Comparable, Sendable {
    /// Seconds since 1970-01-01T00:00:00Z.
    var seconds: Int64
    var nanoseconds: Int32

    static func < (lhs: Instant, rhs: Instant) -> Bool {
        (lhs.seconds, lhs.nanoseconds) < (rhs.seconds, rhs.nanoseconds)
    }

    init(seconds: Int64, nanoseconds: Int32) {
        self.seconds = seconds
        self.nanoseconds = nanoseconds
    }

    init?(iso8601 text: String) {
        var text = text
        guard let instant = text.withUTF8({ Self.parse(UTF8Reader(bytes: $0)) }) else { return nil }
        self = instant
    }

    private static func parse(_ input: UTF8Reader) -> Instant? {
        var reader = input
        guard let year = reader.number(digits: 4), reader.skip("-"), let month = reader.number(digits: 2), reader.skip("-"),
            let day = reader.number(digits: 2), reader.skip("T") || reader.skip("t") || reader.skip(" "),
            let hour = reader.number(digits: 2), reader.skip(":"), let minute = reader.number(digits: 2)
        else { return nil }
        var second: Int64 = 0
        var nanoseconds: Int64 = 0
        if reader.skip(":") {
            guard let value = reader.number(digits: 2) else { return nil }
            second = value
            if reader.skip(".") {
                var digits = 0
                while let digit = reader.digit() {
                    digits += 1
                    guard digits <= 9 else { return nil }
                    nanoseconds = nanoseconds * 10 + digit
                }
                guard digits > 0 else { return nil }
                for _ in digits..<9 { nanoseconds *= 10 }
            }
        }
        guard (1...12).contains(month), (1...31).contains(day), (0...24).contains(hour), (0...59).contains(minute),
            (0...60).contains(second), let offset = reader.offsetSeconds(), reader.isAtEnd
        else { return nil }
        let days = daysSinceEpoch(year: year, month: month, day: day)
        let seconds = days * 86_400 + hour * 3_600 + minute * 60 + second - offset
        return Instant(seconds: seconds, nanoseconds: Int32(nanoseconds))
    }

    /// Days from 1970-01-01 to a proleptic Gregorian date (Howard Hinnant's `days_from_civil`).
    private static func daysSinceEpoch(year: Int64, month: Int64, day: Int64) -> Int64 {
        let year = month <= 2 ? year - 1 : year
        let era = (year >= 0 ? year : year - 399) / 400
        let yearOfEra = year - era * 400
        let dayOfYear = (153 * (month > 2 ? month - 3 : month + 9) + 2) / 5 + day - 1
        let dayOfEra = yearOfEra * 365 + yearOfEra / 4 - yearOfEra / 100 + dayOfYear
        return era * 146_097 + dayOfEra - 719_468
    }
}

/// Reads ASCII pieces off UTF-8 bytes.
private struct UTF8Reader {
    let bytes: UnsafeBufferPointer<UInt8>
    var index = 0

    init(bytes: UnsafeBufferPointer<UInt8>) { self.bytes = bytes }

    var isAtEnd: Bool { index == bytes.count }

    mutating func skip(_ character: Unicode.Scalar) -> Bool {
        guard index < bytes.count, bytes[index] == UInt8(ascii: character) else { return false }
        index += 1
        return true
    }

    mutating func digit() -> Int64? {
        guard index < bytes.count, (UInt8(ascii: "0")...UInt8(ascii: "9")).contains(bytes[index]) else { return nil }
        defer { index += 1 }
        return Int64(bytes[index] - UInt8(ascii: "0"))
    }

    mutating func number(digits: Int) -> Int64? {
        var value: Int64 = 0
        for _ in 0..<digits {
            guard let digit = digit() else { return nil }
            value = value * 10 + digit
        }
        return value
    }

    /// `Z`, `z`, `±hh`, `±hhmm` or `±hh:mm`, as seconds east of UTC.
    mutating func offsetSeconds() -> Int64? {
        if skip("Z") || skip("z") { return 0 }
        let sign: Int64
        if skip("+") {
            sign = 1
        } else if skip("-") {
            sign = -1
        } else {
            return nil
        }
        guard let hours = number(digits: 2) else { return nil }
        var minutes: Int64 = 0
        if !isAtEnd {
            _ = skip(":")
            guard let value = number(digits: 2) else { return nil }
            minutes = value
        }
        return sign * (hours * 3_600 + minutes * 60)
    }
}
