import Foundation

/// Checks a write body against a table's columns before any SQL runs: known and writable fields, JSON types,
/// required fields. PostgreSQL checks the rest (lengths, periods, references) and those errors map to 422 too.
struct RowValidator {
    let schema: TableSchema

    func validateCreate(_ body: [String: JSONValue]) throws(APIError) {
        for (name, value) in body {
            guard let column = schema.column(name), column.writability != .readOnly || name == "updated_at" else {
                throw .unknownField(name, table: schema.table)
            }
            try check(value, for: column)
        }
        for column in schema.columns where column.requiredOnCreate {
            if body[column.name] == nil || body[column.name] == .null { throw .missingField(column.name) }
        }
        if !schema.exactlyOneOf.isEmpty {
            let present = schema.exactlyOneOf.filter { body[$0] != nil && body[$0] != .null }
            guard present.count == 1 else {
                throw .constraintViolation(
                    "Exactly one of \(schema.exactlyOneOf.joined(separator: ", ")) must be set; got \(present.isEmpty ? "none" : present.joined(separator: ", "))."
                )
            }
        }
    }

    func validateUpdate(_ body: [String: JSONValue]) throws(APIError) {
        guard !body.isEmpty else { throw .invalidValue("The body names no field to change.") }
        for (name, value) in body {
            guard let column = schema.column(name), column.writability == .always else {
                throw .unknownField(name, table: schema.table)
            }
            try check(value, for: column)
        }
    }

    private func check(_ value: JSONValue, for column: Column) throws(APIError) {
        if value == .null {
            guard column.nullable else { throw .invalidValue("\(column.name) cannot be null.") }
            return
        }
        switch (column.kind, value) {
        case (.uuid, .string(let text)):
            guard UUID(uuidString: text) != nil else { throw .invalidValue("\(column.name) must be a uuid; got '\(text)'.") }
        case (.text, .string):
            return
        case (.timestamp, .string(let text)):
            guard ISO8601Text.isTimestamp(text) else {
                throw .invalidValue("\(column.name) must be an ISO-8601 timestamp with a time zone, e.g. 2026-11-30T09:00:00Z; got '\(text)'.")
            }
        case (.date, .string(let text)):
            guard ISO8601Text.isDate(text) else { throw .invalidValue("\(column.name) must be a date, YYYY-MM-DD; got '\(text)'.") }
        case (.integer, .integer):
            return
        case (.oneOf(let allowed), .string(let text)):
            guard allowed.contains(text) else {
                throw .invalidValue("\(column.name) must be one of \(allowed.joined(separator: ", ")); got '\(text)'.")
            }
        default:
            throw .invalidValue("\(column.name) must be \(Self.expected(column.kind)), not \(value.typeName).")
        }
    }

    private static func expected(_ kind: ColumnKind) -> String {
        switch kind {
        case .uuid: "a uuid string"
        case .text, .oneOf: "a string"
        case .timestamp: "an ISO-8601 timestamp string"
        case .date: "a date string (YYYY-MM-DD)"
        case .integer: "an integer"
        }
    }
}

/// Strict shapes of ISO-8601 dates and timestamps. PostgreSQL alone would also accept words such as `yesterday`.
enum ISO8601Text {
    nonisolated(unsafe) private static let timestamp = /^\d{4}-\d{2}-\d{2}[T ]\d{2}:\d{2}(:\d{2}(\.\d{1,9})?)?(Z|z|[+-]\d{2}(:?\d{2})?)$/
    nonisolated(unsafe) private static let date = /^\d{4}-\d{2}-\d{2}$/

    static func isTimestamp(_ text: String) -> Bool { text.wholeMatch(of: timestamp) != nil }
    static func isDate(_ text: String) -> Bool { text.wholeMatch(of: date) != nil }
}
