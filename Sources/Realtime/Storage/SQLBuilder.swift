import Foundation
import PostgresNIO

/// Builds a statement whose SQL text is assembled from trusted pieces (table and column names of a `TableSchema`)
/// while every value travels as a bound parameter.
struct SQLBuilder {
    private(set) var bindings = PostgresBindings()

    /// Binds a value and returns its placeholder, e.g. `$3`.
    mutating func bind(_ value: some PostgresDynamicTypeEncodable) -> String {
        bindings.append(value)
        return "$\(bindings.count)"
    }

    /// Binds a value or NULL.
    mutating func bind(_ value: (some PostgresDynamicTypeEncodable)?) -> String {
        if let value { bindings.append(value) } else { bindings.appendNull() }
        return "$\(bindings.count)"
    }

    func query(_ sql: String) -> PostgresQuery { PostgresQuery(unsafeSQL: sql, binds: bindings) }
}

/// A column name quoted as an SQL identifier. Only names from a `TableSchema` reach here.
func identifier(_ name: String) -> String { "\"" + name.replacingOccurrences(of: "\"", with: "\"\"") + "\"" }
