import Foundation

/// A `column=op.value` filter of a subscription, ready to test rows of change events.
///
/// Semantics follow SQL as PostgREST applies it: a null (or absent) value matches only `is.null`; any other comparison
/// with null is false, negated or not. Numbers compare as numbers when both sides are numbers, timestamps as instants
/// (see ``Instant``), uuids case-insensitively, everything else as text in Unicode code point order (PostgreSQL's `C`
/// collation; a database with a linguistic collation may order some text differently).
struct RowFilter: Sendable, Equatable {
    var filter: ListQuery.Filter
    /// The column's kind in each streamed table that has it; a row of any other table does not match.
    var kinds: [String: ColumnKind]
    var operands: [Operand]

    /// One value of the filter, pre-read as each kind it might be compared as.
    struct Operand: Sendable, Equatable {
        var text: String
        var integer: Int64?
        var number: Double?
        var instant: Instant?

        init(_ text: String) {
            self.text = text
            integer = Int64(text)
            number = Double(text)
            instant = Instant(iso8601: text)
        }
    }

    init(_ filter: ListQuery.Filter, kinds: [String: ColumnKind]) {
        self.filter = filter
        self.kinds = kinds
        operands = filter.op == .is ? [] : filter.values.map(Operand.init)
    }

    /// Whether a row of `table` (a decoded JSON object) passes this filter.
    func matches(table: String, row: [String: JSONValue]) -> Bool {
        guard let kind = kinds[table] else { return false }
        let value = row[filter.column] ?? .null
        if filter.op == .is { return (value == .null) != filter.negated }
        if value == .null { return false }
        let holds: Bool
        switch filter.op {
        case .in:
            holds = operands.contains { Self.compare(value, $0, kind) == .orderedSame }
        case .eq, .neq, .lt, .lte, .gt, .gte:
            guard let operand = operands.first, let order = Self.compare(value, operand, kind) else { return false }
            holds = Self.holds(filter.op, order)
        case .is:
            return false
        }
        return holds != filter.negated
    }

    private static func holds(_ op: ListQuery.Operator, _ order: ComparisonResult) -> Bool {
        switch op {
        case .eq: order == .orderedSame
        case .neq: order != .orderedSame
        case .lt: order == .orderedAscending
        case .lte: order != .orderedDescending
        case .gt: order == .orderedDescending
        case .gte: order != .orderedAscending
        case .in, .is: false
        }
    }

    /// How a row's value orders against an operand, or nil when they cannot be compared (null, arrays, objects).
    static func compare(_ value: JSONValue, _ operand: Operand, _ kind: ColumnKind) -> ComparisonResult? {
        switch value {
        case .integer(let integer):
            if let other = operand.integer { return order(integer, other) }
            if let other = operand.number { return order(Double(integer), other) }
            return order(String(integer), operand.text)
        case .number(let number):
            if let other = operand.number { return order(number, other) }
            return order(String(number), operand.text)
        case .string(let text):
            switch kind {
            case .timestamp:
                if let other = operand.instant, let instant = Instant(iso8601: text) { return order(instant, other) }
            case .uuid:
                return order(text.lowercased(), operand.text.lowercased())
            case .text, .date, .integer, .oneOf:
                break
            }
            return order(text, operand.text)
        case .bool(let bool):
            return order(String(bool), operand.text)
        case .null, .array, .object:
            return nil
        }
    }

    private static func order<T: Comparable>(_ lhs: T, _ rhs: T) -> ComparisonResult {
        lhs < rhs ? .orderedAscending : lhs == rhs ? .orderedSame : .orderedDescending
    }
}
