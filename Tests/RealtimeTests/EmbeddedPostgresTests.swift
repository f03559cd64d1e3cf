import Foundation
import Logging
import PostgresNIO
import Testing

@testable import EmbeddedCluster
@testable import Realtime

#if canImport(Glibc)
    import Glibc
#elseif canImport(Darwin)
    import Darwin
#endif

@Suite struct EmbeddedPostgresTests {
    // MARK: - The shared test cluster

    @Test func freshDatabaseAcceptsQueries() async throws {
        let endpoint = try await TestCluster.freshDatabase()
        #expect(endpoint.host == "127.0.0.1")
        #expect(endpoint.username == "postgres")
        #expect(endpoint.tls == .disable)
        #expect(endpoint.database.hasPrefix("t_"))

        let (one, database) = try await TestCluster.withConnection(to: endpoint) { connection in
            let rows = try await connection.query("SELECT 1::int4, current_database()", logger: TestCluster.logger)
            var result: [(Int32, String)] = []
            for try await row in rows.decode((Int32, String).self) { result.append(row) }
            return try #require(result.first)
        }
        #expect(one == 1)
        #expect(database == endpoint.database)
    }

    @Test func eachFreshDatabaseIsSeparateAndEmpty() async throws {
        let first = try await TestCluster.freshDatabase()
        let second = try await TestCluster.freshDatabase()
        #expect(first.database != second.database)
        #expect(first.port == second.port)

        try await TestCluster.withConnection(to: first) { connection in
            try await connection.query("CREATE TABLE only_in_first (id int)", logger: TestCluster.logger)
        }
        let tables = try await TestCluster.withConnection(to: second) { connection in
            try await Self.strings("SELECT tablename FROM pg_tables WHERE schemaname = 'public'", on: connection)
        }
        #expect(tables.isEmpty)
    }

    @Test func clusterIsConfiguredForLogicalReplicationOnLoopback() async throws {
        let endpoint = try await TestCluster.freshDatabase()
        try await TestCluster.withConnection(to: endpoint) { connection in
            #expect(try await Self.setting("wal_level", on: connection) == "logical")
            #expect(try await Self.setting("listen_addresses", on: connection) == "127.0.0.1")
            #expect(try await Self.setting("unix_socket_directories", on: connection) == "")
            // The embedded default's limits; the test cluster raises them (its extra settings come last and win).
            for line in ["max_connections = 300", "max_wal_senders = 64", "max_replication_slots = 64"] {
                #expect(EmbeddedPostgres.managedConfiguration.contains(line), "\(line)")
            }
            #expect(try await Self.setting("max_connections", on: connection) == "800")
            #expect(try await Self.setting("max_wal_senders", on: connection) == "128")
            #expect(try await Self.setting("max_replication_slots", on: connection) == "128")
            #expect(try await Self.setting("TimeZone", on: connection) == "UTC")
            #expect(try await Self.setting("server_encoding", on: connection) == "UTF8")
            #expect(try await Self.setting("password_encryption", on: connection) == "scram-sha-256")

            // pg_hba.conf lets scram connections from 127.0.0.1 reach every database and replication, and nothing else.
            let rules = try await Self.strings(
                """
                SELECT type || ' ' || array_to_string(database, ',') || ' ' || coalesce(address, '') || ' ' || auth_method
                FROM pg_hba_file_rules ORDER BY line_number
                """,
                on: connection
            )
            #expect(rules == ["host all 127.0.0.1 scram-sha-256", "host replication 127.0.0.1 scram-sha-256"])

            // wal_level = logical: a logical replication slot can be created.
            let slot = "slot_\(endpoint.database)"
            try await connection.query("SELECT pg_create_logical_replication_slot(\(slot), 'pgoutput')", logger: TestCluster.logger)
            try await connection.query("SELECT pg_drop_replication_slot(\(slot))", logger: TestCluster.logger)
        }
    }

    @Test func createsAndDropsDatabases() async throws {
        let cluster = try await TestCluster.cluster()
        let name = "t_created_\(UInt32.random(in: .min ... .max))"
        let endpoint = try await cluster.createDatabase(named: name)
        #expect(endpoint.database == name)
        #expect(try await Self.databaseExists(name))

        // A fresh database must really be fresh.
        await #expect(throws: EmbeddedPostgresError.self) { try await cluster.createDatabase(named: name) }

        try await cluster.dropDatabase(named: name)
        #expect(try await Self.databaseExists(name) == false)
        try await cluster.dropDatabase(named: name)  // dropping a missing database is fine
    }

    @Test(arguments: ["", "Upper", "semi;colon", "quote\"d", "spa ce", "dash-ed", String(repeating: "a", count: 64)])
    func rejectsUnsafeDatabaseNames(_ name: String) async throws {
        let cluster = try await TestCluster.cluster()
        let error = await #expect(throws: EmbeddedPostgresError.self) { try await cluster.createDatabase(named: name) }
        #expect(error?.description.contains("invalid database name") == true)
    }

    // MARK: - A cluster of its own

    @Test func startsStopsAndRestartsReusingTheCluster() async throws {
        let directory = TestCluster.makeScratchDirectory() + "/data"
        let postgres = EmbeddedPostgres(directory: directory, logger: TestCluster.logger)

        let first = try await postgres.start()
        do {
            #expect(first.database == "realtime")
            #expect(first.host == "127.0.0.1")
            let password = try #require(first.password)
            #expect(password.count >= 32)
            let storedPassword = try String(contentsOfFile: postgres.passwordFile, encoding: .utf8)
            #expect(storedPassword.trimmingCharacters(in: .whitespacesAndNewlines) == password)
            #expect(try Self.permissions(postgres.passwordFile) == 0o600)
            #expect(try Self.owner(postgres.passwordFile) == geteuid())
            #expect(try Self.permissions(postgres.clusterDirectory) == 0o700)
            if geteuid() == 0 {
                // initdb refuses root: the cluster belongs to an unprivileged user, the password stays root's.
                #expect(try Self.owner(postgres.clusterDirectory) != 0)
            }
            #expect(try await postgres.isRunning())
            #expect(try await Self.select1(first) == 1)

            // Starting while it runs reuses the running server.
            let again = try await postgres.start()
            #expect(again == first)

            try await postgres.stop()
            #expect(try await postgres.isRunning() == false)
            await #expect(throws: (any Error).self) { try await Self.select1(first) }
            try await postgres.stop()  // stopping a stopped cluster is fine

            let second = try await postgres.start()
            #expect(second.password == password)
            #expect(second.database == "realtime")
            #expect(try await Self.select1(second) == 1)
            try await postgres.stop()
        } catch {
            try? await postgres.stop()
            throw error
        }
        let log = try String(contentsOfFile: postgres.logFile, encoding: .utf8)
        #expect(log.contains("database system is ready to accept connections"))
    }

    @Test(.enabled(if: geteuid() == 0, "only root hands the cluster to another user"))
    func refusesADataDirectoryTheServerUserCannotEnter() async throws {
        let closed = TestCluster.makeScratchDirectory() + "/closed"
        try FileManager.default.createDirectory(atPath: closed, withIntermediateDirectories: false, attributes: [.posixPermissions: 0o700])
        let postgres = EmbeddedPostgres(directory: closed + "/data", logger: TestCluster.logger)
        let error = await #expect(throws: EmbeddedPostgresError.self) { try await postgres.start() }
        let description = try #require(error?.description)
        #expect(description.contains("cannot enter \(closed)"))
        #expect(description.contains("chmod o+x \(closed)"))
    }

    @Test func failsClearlyWhenTheClusterIsNotRunning() async throws {
        let directory = TestCluster.makeScratchDirectory()
        let postgres = EmbeddedPostgres(directory: directory, logger: TestCluster.logger)
        #expect(try await postgres.isRunning() == false)
        let error = await #expect(throws: EmbeddedPostgresError.self) { try await postgres.createDatabase(named: "t_nothing") }
        #expect(error?.description.contains("not running") == true)
    }

    // MARK: - Finding the server programs

    @Test func missingServerProgramsErrorNamesTheDebianPackage() throws {
        let empty = TestCluster.makeScratchDirectory()
        let error = #expect(throws: EmbeddedPostgresError.self) {
            try PostgresInstallation.locate(path: [empty], versionedRoots: [empty + "/lib/postgresql"])
        }
        let description = try #require(error?.description)
        #expect(description.contains("apt-get install -y postgresql"))
        #expect(description.contains("server programs"))
        #expect(description.contains(empty))
        #expect(description.contains(empty + "/lib/postgresql/<major>/bin"))

        let nowhere = #expect(throws: EmbeddedPostgresError.self) { try PostgresInstallation.locate(path: [], versionedRoots: []) }
        #expect(nowhere?.description.contains("apt-get install -y postgresql") == true)
    }

    @Test func prefersADirectoryHoldingAllThreePrograms() throws {
        let root = TestCluster.makeScratchDirectory()
        try Self.makePrograms(["initdb"], in: root + "/stray")
        try Self.makePrograms(["initdb", "pg_ctl", "postgres"], in: root + "/complete")
        let found = try PostgresInstallation.locate(path: [root + "/stray", root + "/complete"], versionedRoots: [])
        #expect(found.binDirectory == root + "/complete")
        #expect(found.initdb == root + "/complete/initdb")
        #expect(found.pgCtl == root + "/complete/pg_ctl")
        #expect(found.postgres == root + "/complete/postgres")
    }

    @Test func picksTheHighestCompleteMajorVersion() throws {
        let root = TestCluster.makeScratchDirectory() + "/lib/postgresql"
        try Self.makePrograms(["initdb", "pg_ctl", "postgres"], in: root + "/9.6/bin")
        try Self.makePrograms(["initdb", "pg_ctl", "postgres"], in: root + "/15/bin")
        try Self.makePrograms(["initdb", "pg_ctl", "postgres"], in: root + "/16/bin")
        try Self.makePrograms(["initdb", "pg_ctl"], in: root + "/17/bin")
        let found = try PostgresInstallation.locate(path: [], versionedRoots: [root])
        #expect(found.binDirectory == root + "/16/bin")
    }

    @Test func findsTheInstalledServerPrograms() throws {
        let found = try PostgresInstallation.locate()
        for program in [found.initdb, found.pgCtl, found.postgres] {
            #expect(FileManager.default.isExecutableFile(atPath: program))
        }
    }

    // MARK: - Helpers

    private static func select1(_ endpoint: DatabaseEndpoint) async throws -> Int32? {
        try await TestCluster.withConnection(to: endpoint) { connection in
            let rows = try await connection.query("SELECT 1::int4", logger: TestCluster.logger)
            for try await value in rows.decode(Int32.self) { return value }
            return nil
        }
    }

    private static func setting(_ name: String, on connection: PostgresConnection) async throws -> String? {
        try await strings("SELECT current_setting('\(name)')", on: connection).first
    }

    private static func strings(_ sql: String, on connection: PostgresConnection) async throws -> [String] {
        let rows = try await connection.query(PostgresQuery(unsafeSQL: sql), logger: TestCluster.logger)
        var values: [String] = []
        for try await value in rows.decode(String.self) { values.append(value) }
        return values
    }

    private static func databaseExists(_ name: String) async throws -> Bool {
        try await TestCluster.withConnection(to: TestCluster.defaultEndpoint()) { connection in
            let rows = try await connection.query("SELECT datname FROM pg_database WHERE datname = \(name)", logger: TestCluster.logger)
            for try await _ in rows { return true }
            return false
        }
    }

    private static func permissions(_ path: String) throws -> Int {
        let attributes = try FileManager.default.attributesOfItem(atPath: path)
        return try #require(attributes[.posixPermissions] as? Int) & 0o777
    }

    private static func owner(_ path: String) throws -> UInt32 {
        let attributes = try FileManager.default.attributesOfItem(atPath: path)
        return try #require((attributes[.ownerAccountID] as? NSNumber)?.uint32Value)
    }

    private static func makePrograms(_ names: [String], in directory: String) throws {
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
        for name in names {
            let path = directory + "/" + name
            #expect(FileManager.default.createFile(atPath: path, contents: Data("#!/bin/sh\nexit 0\n".utf8)))
            try FileManager.default.setAttributes([.posixPermissions: 0o755], ofItemAtPath: path)
        }
    }
}
