import Foundation

/// A list request's PostgREST-style query: column filters, order, limit and offset.
///
/// `?plan_id=eq.<uuid>&status=in.(taken,done)&order=starts_at.desc&limit=50&offset=100`
public struct ListQuery: Sendable, Equatable {
    /// A comparison operator of a filter.
    public enum Operator: String, Sendable, CaseIterable {
        case eq, neq, lt, lte, gt, gte, `in`, `is`
    }

    /// One `column=op.value` condition, possibly negated with `not.`.
    public struct Filter: Sendable, Equatable {
        public var column: String
        public var negated: Bool
        public var op: Operator
        /// One value, or several for `in`.
        public var values: [String]
    }

    /// One `column.asc|desc` term of `order`.
    public struct Ordering: Sendable, Equatable {
        public var column: String
        public var descending: Bool
    }

    public static let defaultLimit = 100
    public static let maxLimit = 1000
    public static let maxFilters = 20
    public static let maxOrderColumns = 3
    static let maxInValues = 1000

    public var filters: [Filter] = []
    public var order: [Ordering] = []
    public var limit = defaultLimit
    public var offset = 0

    /// Parses query parameters against a table's columns.
    ///
    /// - Throws: `APIError` 400 `invalid_filter` or `invalid_parameter` with a message naming the culprit.
    public init(parameters: [(String, String)], schema: TableSchema) throws(APIError) {
        for (name, value) in parameters {
            switch name {
            case "limit":
                guard let limit = Int(value), (1...Self.maxLimit).contains(limit) else {
                    throw .invalidParameter("limit must be an integer from 1 to \(Self.maxLimit).")
                }
                self.limit = limit
            case "offset":
                guard let offset = Int(value), offset >= 0 else { throw .invalidParameter("offset must be a non-negative integer.") }
                self.offset = offset
            case "order":
                order = try Self.parseOrder(value, schema: schema)
            default:
                guard let column = schema.column(name) else {
                    throw .invalidFilter("'\(name)' is not a column of \(schema.table) (nor order, limit or offset).")
                }
                filters.append(try Self.parseFilter(column: column, value))
                if filters.count > Self.maxFilters { throw .invalidFilter("At most \(Self.maxFilters) filters are allowed.") }
            }
        }
    }

    static func parseOrder(_ value: String, schema: TableSchema) throws(APIError) -> [Ordering] {
        let terms = value.split(separator: ",", omittingEmptySubsequences: false)
        guard terms.count <= maxOrderColumns else { throw .invalidParameter("order takes at most \(maxOrderColumns) columns.") }
        var result: [Ordering] = []
        for term in terms {
            let parts = term.split(separator: ".", omittingEmptySubsequences: false).map(String.init)
            guard (1...2).contains(parts.count), schema.column(parts[0]) != nil else {
                throw .invalidParameter("order must be <column>.asc or <column>.desc with a column of \(schema.table); got '\(term)'.")
            }
            let direction = parts.count == 2 ? parts[1] : "asc"
            guard direction == "asc" || direction == "desc" else {
                throw .invalidParameter("order direction must be asc or desc; got '\(direction)'.")
            }
            result.append(Ordering(column: parts[0], descending: direction == "desc"))
        }
        return result
    }

    static func parseFilter(column: Column, _ raw: String) throws(APIError) -> Filter {
        var rest = Substring(raw)
        var negated = false
        if rest.hasPrefix("not.") {
            negated = true
            rest = rest.dropFirst(4)
        }
        guard let dot = rest.firstIndex(of: "."), let op = Operator(rawValue: String(rest[..<dot])) else {
            throw .invalidFilter(
                "The filter on \(column.name) must be <operator>.<value> with an operator of \(Operator.allCases.map(\.rawValue).joined(separator: ", "))."
            )
        }
        let operand = String(rest[rest.index(after: dot)...])
        switch op {
        case .is:
            guard operand == "null" else {
                throw .invalidFilter("is. takes null (no column is boolean); got '\(operand)'. Use not.is.null for the opposite.")
            }
            return Filter(column: column.name, negated: negated, op: op, values: [operand])
        case .in:
            guard operand.hasPrefix("("), operand.hasSuffix(")"), operand.count >= 2 else {
                throw .invalidFilter("in. takes a list in parentheses, e.g. in.(a,b); got '\(operand)'.")
            }
            let values = try splitList(String(operand.dropFirst().dropLast()))
            guard values.count <= maxInValues else { throw .invalidFilter("in. takes at most \(maxInValues) values.") }
            for value in values { try check(value, for: column) }
            return Filter(column: column.name, negated: negated, op: op, values: values)
        default:
            try check(operand, for: column)
            return Filter(column: column.name, negated: negated, op: op, values: [operand])
        }
    }

    /// Splits `a,b,"c,d"` into values; double quotes protect commas.
    static func splitList(_ list: String) throws(APIError) -> [String] {
        if list.isEmpty { return [] }
        var values: [String] = []
        var current = ""
        var quoted = false
        var wasQuoted = false
        var iterator = list.makeIterator()
        while let character = iterator.next() {
            switch character {
            case "\"":
                quoted.toggle()
                wasQuoted = true
            case "\\" where quoted:
                if let next = iterator.next() { current.append(next) }
            case "," where !quoted:
                values.append(wasQuoted ? current : current.trimmingCharacters(in: .whitespaces))
                current = ""
                wasQuoted = false
            default:
                current.append(character)
            }
        }
        guard !quoted else { throw .invalidFilter("Unbalanced quote in list '\(list)'.") }
        values.append(wasQuoted ? current : current.trimmingCharacters(in: .whitespaces))
        return values
    }

    /// Checks a filter value's shape; what PostgreSQL still refuses (e.g. month 13) is reported as 400 too.
    static func check(_ value: String, for column: Column) throws(APIError) {
        switch column.kind {
        case .uuid:
            guard UUID(uuidString: value) != nil else { throw .invalidFilter("'\(value)' is not a uuid (column \(column.name)).") }
        case .integer:
            guard Int64(value) != nil else { throw .invalidFilter("'\(value)' is not an integer (column \(column.name)).") }
        case .oneOf(let allowed):
            guard allowed.contains(value) else {
                throw .invalidFilter("'\(value)' is not one of \(allowed.joined(separator: ", ")) (column \(column.name)).")
            }
        case .timestamp:
            guard ISO8601Text.isTimestamp(value) else {
                throw .invalidFilter("'\(value)' is not an ISO-8601 timestamp with a time zone (column \(column.name)).")
            }
        case .date:
            guard ISO8601Text.isDate(value) else { throw .invalidFilter("'\(value)' is not a date, YYYY-MM-DD (column \(column.name)).") }
        case .text:
            break
        }
    }
}
