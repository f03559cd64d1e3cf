import Foundation
import Logging
import PostgresNIO
import Synchronization

@testable import EmbeddedCluster
@testable import Realtime

#if canImport(Glibc)
    import Glibc
#elseif canImport(Musl)
    import Musl
#elseif canImport(Darwin)
    import Darwin
#endif

/// One throwaway embedded PostgreSQL cluster per test process, started on first use and shared by all tests; each test
/// asks for its own new database with `freshDatabase()`.
///
/// The cluster lives in `/tmp/realtime-tests-<pid>-<random>`. An exit handler stops it (`pg_ctl stop -m immediate`) and
/// removes the directory, so no PostgreSQL outlives the test process; directories left by test processes that died without
/// running it are cleaned up when the next cluster starts.
enum TestCluster {
    /// Logs of the test cluster itself (not of the tests).
    static let logger: Logger = {
        var logger = Logger(label: "realtime.tests.postgres")
        logger.logLevel = .notice
        return logger
    }()

    /// Started once, on first access (static initialisation is thread-safe), shared by every test.
    private static let shared = Task<(cluster: EmbeddedPostgres, endpoint: DatabaseEndpoint), any Error> {
        cleanUpAbandonedDirectories()
        // A throwaway cluster needs no durability: without fsync, the checkpoints that CREATE/DROP DATABASE and
        // replication slot creation wait for take milliseconds instead of seconds on a busy machine.
        let cluster = EmbeddedPostgres(
            directory: makeScratchDirectory(),
            extraSettings: [
                "fsync = off", "synchronous_commit = off", "full_page_writes = off",
                // The whole suite runs in parallel: some twenty servers with the change feed at once, each with its pool, relay,
                // walsender and listeners.
                "max_connections = 800", "max_wal_senders = 128", "max_replication_slots = 128",
            ],
            logger: logger
        )
        let endpoint = try await cluster.start()
        return (cluster, endpoint)
    }

    /// The shared cluster, started if needed.
    static func cluster() async throws -> EmbeddedPostgres {
        try await shared.value.cluster
    }

    /// The shared cluster's `realtime` database; tests that write should use `freshDatabase()` instead.
    static func defaultEndpoint() async throws -> DatabaseEndpoint {
        try await shared.value.endpoint
    }

    /// A new, empty database on the shared cluster, named `t_<random hex>`, for one test.
    static func freshDatabase() async throws -> DatabaseEndpoint {
        try await cluster().createDatabase(named: "t_" + randomHex(bytes: 8))
    }

    /// Writes a running-transactions record to the WAL at once (a checkpoint does), so that a logical slot being created
    /// on the busy shared cluster need not wait for the next one (PostgreSQL 15 writes one every 15 s).
    @Sendable static func nudge() async {
        guard let endpoint = try? await defaultEndpoint() else { return }
        _ = try? await withConnection(to: endpoint) { connection in try await connection.query("CHECKPOINT", logger: logger) }
    }

    /// Connects to `endpoint`, runs `body` and closes the connection.
    @discardableResult
    static func withConnection<Result>(
        to endpoint: DatabaseEndpoint,
        _ body: (PostgresConnection) async throws -> Result
    ) async throws -> Result {
        let configuration = PostgresConnection.Configuration(
            host: endpoint.host,
            port: endpoint.port,
            username: endpoint.username,
            password: endpoint.password,
            database: endpoint.database,
            tls: .disable
        )
        let connection = try await PostgresConnection.connect(configuration: configuration, id: 1, logger: logger)
        do {
            let result = try await body(connection)
            try await connection.close()
            return result
        } catch {
            try? await connection.close()
            throw error
        }
    }

    // MARK: - Scratch directories

    private static let prefix = "realtime-tests-"
    private static let scratchDirectories = Mutex<[String]>([])

    /// Installs the exit handler once, on first use.
    private static let exitHandler: Void = {
        atexit { TestCluster.cleanUpScratchDirectories() }
    }()

    /// A new directory `/tmp/realtime-tests-<pid>-<random>`; at exit any cluster in it is stopped and it is removed.
    static func makeScratchDirectory() -> String {
        _ = exitHandler
        let path = "/tmp/\(prefix)\(getpid())-\(randomHex(bytes: 6))"
        scratchDirectories.withLock { $0.append(path) }
        try? FileManager.default.createDirectory(atPath: path, withIntermediateDirectories: true)
        return path
    }

    private static func cleanUpScratchDirectories() {
        let directories = scratchDirectories.withLock { directories in
            defer { directories.removeAll() }
            return directories
        }
        for directory in directories { cleanUp(directory) }
    }

    /// Stops the cluster in `directory` at once, if any, and removes the directory.
    private static func cleanUp(_ directory: String) {
        var silent = Logger(label: "realtime.tests.cleanup")
        silent.logLevel = .critical
        EmbeddedPostgres(directory: directory, logger: silent).stopImmediatelyBlocking()
        try? FileManager.default.removeItem(atPath: directory)
    }

    /// Removes the directories of test processes that are gone (killed before their exit handler ran).
    private static func cleanUpAbandonedDirectories() {
        let names = (try? FileManager.default.contentsOfDirectory(atPath: "/tmp")) ?? []
        for name in names where name.hasPrefix(prefix) {
            guard let pid = name.dropFirst(prefix.count).split(separator: "-").first.flatMap({ pid_t($0) }), pid != getpid() else { continue }
            guard kill(pid, 0) != 0, errno == ESRCH else { continue }
            cleanUp("/tmp/\(name)")
        }
    }

    private static func randomHex(bytes count: Int) -> String {
        var generator = SystemRandomNumberGenerator()
        return (0..<count).map { _ in
            let byte = UInt8.random(in: .min ... .max, using: &generator)
            return (byte < 16 ? "0" : "") + String(byte, radix: 16)
        }.joined()
    }
}
