import Foundation

/// What a subscriber wants of the events on its channels: some tables, some operations, rows that pass column filters.
///
/// From query parameters: `table=task,status_history` (repeatable), `event=INSERT,UPDATE` (repeatable; `*` for all),
/// and repeatable `filter=<column>=<operator>.<value>`, e.g. `filter=status=in.(taken,done)`, with the operators and
/// `not.` of the REST list filters.
public struct SubscriptionOptions: Sendable, Equatable {
    /// The most filters one subscription may have.
    public static let maxFilters = ListQuery.maxFilters

    /// Only events of these tables; nil for all streamed tables.
    public private(set) var tables: Set<String>?
    /// Only events delivered as these operations (after a move is split, see ``Channel/placements(of:)``); nil for all.
    public private(set) var operations: Set<ChangeEvent.Operation>?
    /// Conditions every delivered row must meet.
    public var filters: [ListQuery.Filter] { rowFilters.map(\.filter) }

    private var rowFilters: [RowFilter]

    /// Every event of the channels.
    public init() {
        tables = nil
        operations = nil
        rowFilters = []
    }

    /// Options from already separated values.
    ///
    /// - Parameter filters: `<column>=<operator>.<value>` texts; a column must exist in at least one table in scope.
    /// - Throws: `APIError` 400 `invalid_parameter` for an unknown table, `invalid_filter` for a bad filter.
    public init(tables: Set<String>? = nil, operations: Set<ChangeEvent.Operation>? = nil, filters: [String] = []) throws(APIError) {
        if let tables {
            for table in tables where TableSchema.streamed(table) == nil {
                throw .invalidParameter("Unknown table '\(table)'; the streamed tables are \(TableSchema.streamedNames.joined(separator: ", ")).")
            }
        }
        guard filters.count <= Self.maxFilters else { throw .invalidFilter("At most \(Self.maxFilters) filters are allowed.") }
        let scope = TableSchema.streamed.filter { tables?.contains($0.table) ?? true }
        self.tables = tables
        self.operations = operations
        rowFilters = []
        for filter in filters { rowFilters.append(try Self.parseFilter(filter, scope: scope)) }
    }

    /// Options from the `table`, `event` and `filter` query parameters; other parameters are left to the caller.
    ///
    /// - Throws: `APIError` 400 `invalid_parameter` or `invalid_filter` naming the culprit.
    public init(parameters: [(String, String)]) throws(APIError) {
        var tables: Set<String>?
        var operations: Set<ChangeEvent.Operation>?
        var filters: [String] = []
        var allOperations = false
        for (name, value) in parameters {
            switch name {
            case "table":
                tables = tables ?? []
                for table in Self.items(value) { tables?.insert(table) }
                if tables?.isEmpty == true { throw .invalidParameter("table must name at least one table.") }
            case "event":
                for item in Self.items(value) {
                    if item == "*" {
                        allOperations = true
                    } else if let operation = ChangeEvent.Operation(rawValue: item.uppercased()), operation != .truncate {
                        operations = (operations ?? []).union([operation])
                    } else {
                        throw .invalidParameter("event must be INSERT, UPDATE, DELETE or *; got '\(item)'.")
                    }
                }
            case "filter":
                filters.append(value)
            default:
                break
            }
        }
        try self.init(tables: tables, operations: allOperations ? nil : operations, filters: filters)
    }

    /// Whether an event, delivered as `operation`, passes the table, operation and filter options.
    ///
    /// Filters test the new row, or the old row for a DELETE (for a move-out DELETE, the row as it was before
    /// the move; see ``ChangeEvent/placed(as:)``). An event whose table lacks a filtered column does not match.
    public func matches(_ event: ChangeEvent, operation: ChangeEvent.Operation) -> Bool {
        var row = LazyRow(text: event.filteredRow(deliveredAs: operation))
        return matches(table: event.table, operation: operation, row: &row)
    }

    /// Whether the table's events are wanted at all, whatever the operation.
    func streams(table: String) -> Bool { tables?.contains(table) ?? true }

    /// Whether the table and operation are wanted; cheap, so checked before any row is decoded.
    func admits(table: String, operation: ChangeEvent.Operation) -> Bool {
        (tables?.contains(table) ?? true) && (operations?.contains(operation) ?? true)
    }

    var hasFilters: Bool { !rowFilters.isEmpty }

    func matches(table: String, operation: ChangeEvent.Operation, row: inout LazyRow) -> Bool {
        guard admits(table: table, operation: operation) else { return false }
        guard hasFilters else { return true }
        guard let object = row.object else { return false }
        return rowFilters.allSatisfy { $0.matches(table: table, row: object) }
    }

    private static func items(_ value: String) -> [String] {
        value.split(separator: ",").map { $0.trimmingCharacters(in: .whitespaces) }.filter { !$0.isEmpty }
    }

    private static func parseFilter(_ text: String, scope: [TableSchema]) throws(APIError) -> RowFilter {
        guard let equals = text.firstIndex(of: "="), equals != text.startIndex else {
            throw .invalidFilter("A filter must be <column>=<operator>.<value>, e.g. status=eq.done; got '\(text)'.")
        }
        let name = String(text[..<equals])
        let condition = String(text[text.index(after: equals)...])
        let columns = scope.compactMap { table in table.column(name).map { (table: table.table, column: $0) } }
        guard let first = columns.first else {
            throw .invalidFilter("'\(name)' is not a column of \(scope.map(\.table).joined(separator: ", ")).")
        }
        var parsed: ListQuery.Filter?
        var firstError: APIError?
        for candidate in columns {
            do {
                parsed = try ListQuery.parseFilter(column: candidate.column, condition)
                break
            } catch {
                firstError = firstError ?? error
            }
        }
        guard let parsed else { throw firstError ?? .invalidFilter("Bad filter on \(first.column.name).") }
        let kinds = Dictionary(columns.map { ($0.table, $0.column.kind) }, uniquingKeysWith: { kind, _ in kind })
        return RowFilter(parsed, kinds: kinds)
    }
}

/// A row's JSON text, decoded on first use and then kept, so that many subscribers' filters decode it once.
struct LazyRow {
    let text: String
    private var decoded: [String: JSONValue]??

    init(text: String) { self.text = text }

    /// The row as an object, or nil if the text is not a JSON object.
    var object: [String: JSONValue]? {
        mutating get {
            if let decoded { return decoded }
            let object = try? JSONDecoder().decode([String: JSONValue].self, from: Data(text.utf8))
            decoded = .some(object)
            return object
        }
    }
}
