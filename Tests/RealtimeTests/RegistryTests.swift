import Foundation
import HTTPTypes
import PostgresNIO
import Testing
import Yams

@testable import Realtime

/// The table registry (``TableSchema``) is the one place that says what a table is; these tests fail, naming what is
/// missing, when the database the migrations build, the OpenAPI document or the browser client's table map disagree.
@Suite struct RegistryTests {
    /// Every table the registry knows: the REST tables and the streamed ones.
    static let tables: [TableSchema] =
        TableSchema.exposed
        + TableSchema.streamed.filter { streamed in
            !TableSchema.exposed.contains { $0.table == streamed.table }
        }

    /// The catalog's name of a column type.
    static func catalogType(_ kind: ColumnKind) -> String {
        switch kind {
        case .uuid: "uuid"
        case .text, .oneOf: "text"
        case .timestamp: "timestamp with time zone"
        case .date: "date"
        case .integer: "bigint"
        }
    }

    @Test func theRegistryMatchesTheDatabase() async throws {
        let server = try await TestServer.make()
        try await server.testLive { _ in
            try await server.withOwnerConnection { connection in
                var catalog: [String: [String: (type: String, nullable: Bool)]] = [:]
                let columns = try await connection.query(
                    "SELECT table_name::text, column_name::text, data_type::text, is_nullable = 'YES' FROM information_schema.columns WHERE table_schema = 'public'",
                    logger: server.logger)
                for try await (table, column, type, nullable) in columns.decode((String, String, String, Bool).self) {
                    catalog[table, default: [:]][column] = (type, nullable)
                }
                for schema in Self.tables {
                    let actual = try #require(catalog[schema.table], "the registry's table \(schema.table) is not in the database")
                    #expect(
                        Set(actual.keys) == Set(schema.columns.map(\.name)),
                        "\(schema.table): columns in the database but not the registry \(Set(actual.keys).subtracting(schema.columns.map(\.name)).sorted()), in the registry but not the database \(Set(schema.columns.map(\.name)).subtracting(actual.keys).sorted())"
                    )
                    for column in schema.columns {
                        guard let found = actual[column.name] else { continue }
                        #expect(found.type == Self.catalogType(column.kind), "\(schema.table).\(column.name) is \(found.type) in the database")
                        if column.nullable {
                            #expect(found.nullable, "\(schema.table).\(column.name) may be null in the registry but is NOT NULL in the database")
                        }
                    }
                }

                var published: Set<String> = []
                let publication = try await connection.query(
                    "SELECT tablename::text FROM pg_publication_tables WHERE pubname = 'realtime_changes' AND schemaname = 'public'",
                    logger: server.logger)
                for try await table in publication.decode(String.self) { published.insert(table) }
                #expect(
                    published == Set(TableSchema.streamedNames),
                    "published but not streamed by the registry: \(published.subtracting(TableSchema.streamedNames).sorted()); streamed by the registry but not published: \(Set(TableSchema.streamedNames).subtracting(published).sorted())"
                )

                // The registry explains named CHECK constraints: each must exist, on its table.
                let checks = try await connection.query(
                    "SELECT conrelid::regclass::text, conname::text FROM pg_constraint WHERE contype = 'c' AND connamespace = 'public'::regnamespace",
                    logger: server.logger)
                var constraints: Set<String> = []
                for try await (table, name) in checks.decode((String, String).self) { constraints.insert("\(table).\(name)") }
                for schema in Self.tables {
                    for name in schema.checkMessages.keys {
                        #expect(constraints.contains("\(schema.table).\(name)"), "the registry explains \(name), which \(schema.table) does not have")
                    }
                }

                // A DELETE must carry its old row (to find its branch), an UPDATE its old values (to see a move).
                let identities = try await connection.query(
                    "SELECT relname::text, relreplident::text FROM pg_class WHERE relnamespace = 'public'::regnamespace AND relkind = 'r'",
                    logger: server.logger)
                var replicaIdentity: [String: String] = [:]
                for try await (table, identity) in identities.decode((String, String).self) { replicaIdentity[table] = identity }
                for table in TableSchema.streamedNames {
                    #expect(replicaIdentity[table] == "f", "\(table) streams but its REPLICA IDENTITY is not FULL")
                }
            }
        }
    }

    static func openAPI() throws -> [String: Any] {
        let text = try String(contentsOfFile: TestServer.repositoryRoot + "/openapi/openapi.yaml", encoding: .utf8)
        return try #require(try Yams.load(yaml: text) as? [String: Any])
    }

    /// `client_card` → `ClientCard`: the name of a table's schema in the OpenAPI document.
    static func schemaName(_ table: String) -> String {
        table.split(separator: "_").map { $0.prefix(1).uppercased() + $0.dropFirst() }.joined()
    }

    static func properties(_ schema: Any?) -> Set<String> {
        Set(((schema as? [String: Any])?["properties"] as? [String: Any])?.keys.map { $0 } ?? [])
    }

    @Test func theRegistryMatchesTheOpenAPIDocument() throws {
        let document = try Self.openAPI()
        let paths = try #require(document["paths"] as? [String: Any])
        let schemas = try #require((document["components"] as? [String: Any])?["schemas"] as? [String: Any])
        for schema in TableSchema.exposed {
            let collection = try #require(paths["/rest/v1/\(schema.path)"] as? [String: Any], "no path /rest/v1/\(schema.path)")
            let item = try #require(paths["/rest/v1/\(schema.path)/{id}"] as? [String: Any], "no path /rest/v1/\(schema.path)/{id}")
            #expect(collection["get"] != nil && item["get"] != nil, "\(schema.path): GET is missing")
            #expect(
                (collection["post"] != nil) == schema.writable, "\(schema.path): POST is \(schema.writable ? "missing" : "documented but refused")")
            #expect((item["patch"] != nil) == schema.writable, "\(schema.path)/{id}: PATCH does not match the registry")
            #expect((item["delete"] != nil) == schema.writable, "\(schema.path)/{id}: DELETE does not match the registry")

            let name = Self.schemaName(schema.table)
            #expect(Self.properties(schemas[name]) == Set(schema.columns.map(\.name)), "schema \(name) and the registry's columns differ")
            guard schema.writable else { continue }
            let create = schemas[name + "Create"] as? [String: Any]
            let creatable = schema.columns.filter { $0.writability != .readOnly }.map(\.name)
            #expect(Self.properties(create) == Set(creatable), "schema \(name)Create and the registry's writable columns differ")
            let required = Set(create?["required"] as? [String] ?? [])
            #expect(required == Set(schema.columns.filter(\.requiredOnCreate).map(\.name)), "schema \(name)Create requires \(required.sorted())")
            let updatable = schema.columns.filter { $0.writability == .always }.map(\.name)
            #expect(Self.properties(schemas[name + "Update"]) == Set(updatable), "schema \(name)Update and the registry's updatable columns differ")
        }
        for schema in TableSchema.streamed where !TableSchema.exposed.contains(where: { $0.table == schema.table }) {
            let name = Self.schemaName(schema.table)
            #expect(Self.properties(schemas[name]) == Set(schema.columns.map(\.name)), "schema \(name) and the registry's columns differ")
        }
        let streamed = (schemas["StreamedTable"] as? [String: Any])?["enum"] as? [String] ?? []
        #expect(Set(streamed) == Set(TableSchema.streamedNames), "StreamedTable lists \(streamed)")
    }

    /// The browser client keeps no table map of its own: the server serves the registry's at `/realtime/v1/tables`,
    /// without a token, and the client writes each table through the path it names there.
    @Test func theServerServesTheClientTheRegistrysTableMap() async throws {
        let server = try await TestServer.make()
        try await server.test { client in
            let reply = try await client.send(.get, "/realtime/v1/tables", as: nil)
            #expect(reply.status == .ok)
            let served = try JSONDecoder().decode(TableMapController.Body.self, from: Data(reply.text.utf8))
            let expected = TableSchema.exposed.map { schema in
                (
                    schema.table, schema.path, schema.writable,
                    schema.feed == nil ? [] : (TableSchema.planScopedTables.contains(schema.table) ? ["plan", "branch"] : ["branch"])
                )
            }
            #expect(served.tables.map(\.table) == expected.map(\.0), "the served tables differ from the registry's REST tables")
            for (entry, (table, path, writable, channels)) in zip(served.tables, expected) {
                #expect(entry.path == path && entry.writable == writable && entry.channels == channels, "the served entry of \(table) is \(entry)")
            }
        }
        let folder = TestServer.repositoryRoot + "/Sources/Realtime/Web/Public"
        for file in try FileManager.default.contentsOfDirectory(atPath: folder) where file.hasSuffix(".js") {
            let source = try String(contentsOfFile: folder + "/" + file, encoding: .utf8)
            for schema in TableSchema.exposed where schema.path != schema.table {
                let keepsACopy = source.contains("\(schema.table): \"\(schema.path)\"")
                #expect(!keepsACopy, "\(file) keeps its own copy of the table map (\(schema.table) → \(schema.path))")
            }
        }
    }
}
