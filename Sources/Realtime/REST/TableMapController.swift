import Foundation
import HTTPTypes
import Hummingbird

/// `GET /realtime/v1/tables`: the registry's tables as a client needs them (its REST collection, whether it may be
/// written, the channels its changes stream on), so that the browser client keeps no copy of its own.
///
/// No token is needed: it says nothing the OpenAPI document does not.
struct TableMapController {
    /// One table of the map.
    struct Entry: Codable, Equatable, Sendable {
        var table: String
        var path: String
        var writable: Bool
        /// `plan` and/or `branch`; empty for a table that does not stream.
        var channels: [String]

        init(_ schema: TableSchema) {
            table = schema.table
            path = schema.path
            writable = schema.writable
            var channels: [String] = []
            if TableSchema.planScopedTables.contains(schema.table) { channels.append("plan") }
            if schema.feed != nil { channels.append("branch") }
            self.channels = channels
        }
    }

    struct Body: Codable, Equatable, Sendable {
        var tables: [Entry]
    }

    /// The map of the tables served under `/rest/v1/<path>`, in the registry's order.
    static let body = Body(tables: TableSchema.exposed.map(Entry.init))

    func addRoutes(to router: Router<AppRequestContext>) {
        let json = Self.encoded()
        router.get("realtime/v1/tables") { _, _ in
            var headers = HTTPFields()
            headers[.cacheControl] = "no-cache"
            return Response.json(.ok, json, headers: headers)
        }
    }

    private static func encoded() -> String {
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.sortedKeys]
        // Encoding plain strings and booleans cannot fail.
        return (try? String(decoding: encoder.encode(body), as: UTF8.self)) ?? #"{"tables":[]}"#
    }
}
