import Foundation
import Logging
import PostgresNIO
import Testing

@testable import Realtime

/// Migrations against a real database: applied once, recorded, and guarded against edits after the fact.
@Suite struct MigratorTests {
    @Test func appliesOnceAndRefusesAChangedFile() async throws {
        let server = try await TestServer.make()
        let files = try MigrationFile.load(from: TestServer.repositoryRoot + "/Migrations")
        let logger = server.logger
        let database = Database(endpoint: server.endpoint, poolSize: 2, logger: logger)
        try await withThrowingTaskGroup(of: Void.self) { group in
            group.addTask { await database.client.run() }
            defer { group.cancelAll() }
            let first = try await Migrator(files: files, logger: logger).migrate(client: database.client)
            #expect(first == files.map(\.name))
            let second = try await Migrator(files: files, logger: logger).migrate(client: database.client)
            #expect(second.isEmpty)
            #expect(await database.readiness(migrations: files) == nil)

            var edited = files
            edited[0] = MigrationFile(version: files[0].version, name: files[0].name, sql: files[0].sql + "\n-- edited\n")
            await #expect(throws: MigrationError.self) { try await Migrator(files: edited, logger: logger).migrate(client: database.client) }

            // A failing new file rolls back whole and is not recorded.
            let broken = files + [MigrationFile(version: 999, name: "0999_broken.sql", sql: "CREATE TABLE half (x int); SELECT nonsense();")]
            await #expect(throws: MigrationError.self) { try await Migrator(files: broken, logger: logger).migrate(client: database.client) }
            let half = try await database.client.query("SELECT to_regclass('half') IS NULL").collect().first?.decode(Bool.self)
            #expect(half == true)
            #expect(await database.readiness(migrations: broken) != nil)
        }
    }
}
