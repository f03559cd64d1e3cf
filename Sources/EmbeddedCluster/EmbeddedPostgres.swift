import Dispatch
import Foundation
import Logging
import PostgresNIO
import Realtime

#if canImport(Glibc)
    import Glibc
#elseif canImport(Musl)
    import Musl
#elseif canImport(Darwin)
    import Darwin
#endif

/// A PostgreSQL cluster that the server creates, configures, starts and stops itself, kept in its data directory.
///
/// The cluster lives in `<directory>/postgres`, its superuser password in `<directory>/postgres-password` and its log in
/// `<directory>/postgres.log`. It listens on 127.0.0.1 only, on a free port picked at every start, with `wal_level = logical`.
/// When the process runs as root, PostgreSQL runs as an unprivileged system user (`postgres`, or `realtime-pg` created on demand).
public struct EmbeddedPostgres: Sendable {
    /// The superuser name `initdb` creates.
    public static let superuser = "postgres"
    /// The database `start()` creates and returns.
    public static let defaultDatabase = "realtime"
    /// The system user created to run PostgreSQL when the process runs as root and there is no `postgres` user.
    public static let fallbackSystemUser = "realtime-pg"
    static let host = "127.0.0.1"

    /// The server's data directory, which holds the cluster, its password and its log.
    public let directory: String
    let installation: PostgresInstallation?
    let logger: Logger
    /// Lines added to the managed configuration, e.g. `fsync = off` for a throwaway test cluster.
    let extraSettings: [String]

    /// The cluster (PGDATA).
    public var clusterDirectory: String { directory + "/postgres" }
    /// The file holding the superuser password, readable only by the invoking user.
    public var passwordFile: String { directory + "/postgres-password" }
    /// PostgreSQL's log.
    public var logFile: String { directory + "/postgres.log" }

    /// An embedded cluster kept in `directory`; the server programs are looked up at start unless `installation` is given.
    public init(directory: String, installation: PostgresInstallation? = nil, extraSettings: [String] = [], logger: Logger) {
        self.extraSettings = extraSettings
        var path = URL(fileURLWithPath: directory).standardizedFileURL.path
        while path.count > 1, path.hasSuffix("/") { path.removeLast() }
        self.directory = path
        self.installation = installation
        self.logger = logger
    }

    // MARK: - Lifecycle

    /// Creates the cluster on first use, starts it (or reuses it when it is already running), creates the `realtime`
    /// database if needed and returns how to reach it.
    public func start() async throws -> DatabaseEndpoint {
        let installation = try self.installation ?? PostgresInstallation.locate()
        try createDirectory(directory, mode: 0o700)
        let account = try await ServerAccount.resolve(clusterDirectory: clusterDirectory, logger: logger)
        let runner = ProgramRunner(account: account)
        if let account { try makeTraversable(for: account) }
        let password = try loadOrCreatePassword()

        if !FileManager.default.fileExists(atPath: clusterDirectory + "/PG_VERSION") {
            try await initialize(installation: installation, runner: runner, account: account)
        }
        try writeManagedConfiguration(account: account)

        let port: Int
        if try await isRunning(installation: installation, runner: runner) {
            port = try runningPort()
            logger.info(
                "reusing running PostgreSQL on \(Self.host):\(port)",
                metadata: ["postgres.directory": "\(clusterDirectory)"]
            )
        } else {
            port = try await startServer(installation: installation, runner: runner, account: account)
        }

        let endpoint = DatabaseEndpoint(
            host: Self.host,
            port: port,
            username: Self.superuser,
            password: password,
            database: Self.defaultDatabase,
            tls: .disable
        )
        try await withAdminConnection(to: endpoint) { connection in
            let rows = try await connection.query("SELECT 1 FROM pg_database WHERE datname = \(Self.defaultDatabase)", logger: logger)
            var exists = false
            for try await _ in rows { exists = true }
            guard !exists else { return }
            do {
                try await execute("CREATE DATABASE \(Self.quoted(Self.defaultDatabase))", on: connection)
                logger.info("created database \(Self.defaultDatabase)")
            } catch let error as EmbeddedPostgresError where error.sqlState == "42P04" {
                // Created concurrently by another start: fine.
            }
        }
        return endpoint
    }

    /// Stops the cluster (`pg_ctl stop -m fast`) and waits until it is down; does nothing when it is not running.
    public func stop() async throws {
        let installation = try self.installation ?? PostgresInstallation.locate()
        let runner = ProgramRunner(account: try ServerAccount.existing(clusterDirectory: clusterDirectory))
        guard try await isRunning(installation: installation, runner: runner) else {
            logger.debug("PostgreSQL is not running", metadata: ["postgres.directory": "\(clusterDirectory)"])
            return
        }
        let result = try await runner.run(installation.pgCtl, ["stop", "-D", clusterDirectory, "-m", "fast", "-w", "-t", "60"])
        guard result.status == 0 else {
            throw EmbeddedPostgresError.commandFailed(command: "pg_ctl stop", status: result.status, output: result.errorText)
        }
        logger.info("stopped PostgreSQL", metadata: ["postgres.directory": "\(clusterDirectory)"])
    }

    /// Restarts the running cluster on the same port (`pg_ctl restart -m <mode>`): every session is ended, as in an
    /// operator's restart (`fast`), or as in a crash (`immediate`: no checkpoint, recovery from the WAL at start).
    func restart(mode: String = "fast") async throws {
        let installation = try self.installation ?? PostgresInstallation.locate()
        let runner = ProgramRunner(account: try ServerAccount.existing(clusterDirectory: clusterDirectory))
        let result = try await runner.run(installation.pgCtl, ["restart", "-D", clusterDirectory, "-m", mode, "-w", "-t", "60", "-l", logFile])
        guard result.status == 0 else {
            throw EmbeddedPostgresError.commandFailed(command: "pg_ctl restart", status: result.status, output: result.errorText)
        }
        logger.info("restarted PostgreSQL", metadata: ["postgres.directory": "\(clusterDirectory)"])
    }

    /// Stops the cluster at once (`pg_ctl stop -m immediate`), blocking the calling thread; for exit handlers. Errors are ignored.
    func stopImmediatelyBlocking() {
        guard FileManager.default.fileExists(atPath: clusterDirectory + "/postmaster.pid") else { return }
        guard let installation = try? self.installation ?? PostgresInstallation.locate() else { return }
        let account: ServerAccount?
        do { account = try ServerAccount.existing(clusterDirectory: clusterDirectory) } catch { return }
        _ = try? ProgramRunner(account: account).runBlocking(
            installation.pgCtl, ["stop", "-D", clusterDirectory, "-m", "immediate", "-w", "-t", "30"])
    }

    /// Whether the cluster is running, as `pg_ctl status` tells.
    public func isRunning() async throws -> Bool {
        let installation = try self.installation ?? PostgresInstallation.locate()
        let runner = ProgramRunner(account: try ServerAccount.existing(clusterDirectory: clusterDirectory))
        return try await isRunning(installation: installation, runner: runner)
    }

    // MARK: - Databases

    /// Creates a new, empty database on the running cluster and returns how to reach it.
    ///
    /// `name` must be 1 to 63 characters of `a-z`, `0-9` and `_`; creating a database that exists fails.
    public func createDatabase(named name: String) async throws -> DatabaseEndpoint {
        try Self.validateDatabaseName(name)
        let endpoint = try runningEndpoint()
        try await withAdminConnection(to: endpoint) { connection in
            try await execute("CREATE DATABASE \(Self.quoted(name))", on: connection)
        }
        logger.debug("created database \(name)")
        return endpoint.withDatabase(name)
    }

    /// Drops a database of the running cluster, disconnecting its sessions; does nothing when it does not exist.
    public func dropDatabase(named name: String) async throws {
        try Self.validateDatabaseName(name)
        let endpoint = try runningEndpoint()
        try await withAdminConnection(to: endpoint) { connection in
            try await execute("DROP DATABASE IF EXISTS \(Self.quoted(name)) WITH (FORCE)", on: connection)
        }
        logger.debug("dropped database \(name)")
    }

    /// The endpoint of the running cluster's `realtime` database, from its `postmaster.pid` and the password file.
    public func runningEndpoint() throws -> DatabaseEndpoint {
        DatabaseEndpoint(
            host: Self.host,
            port: try runningPort(),
            username: Self.superuser,
            password: try readPassword(),
            database: Self.defaultDatabase,
            tls: .disable
        )
    }

    static func validateDatabaseName(_ name: String) throws(EmbeddedPostgresError) {
        let allowed =
            (1...63).contains(name.utf8.count)
            && name.utf8.allSatisfy { byte in
                (UInt8(ascii: "a")...UInt8(ascii: "z")).contains(byte) || (UInt8(ascii: "0")...UInt8(ascii: "9")).contains(byte)
                    || byte == UInt8(ascii: "_")
            }
        guard allowed else { throw .invalidDatabaseName(name) }
    }

    static func quoted(_ name: String) -> String { "\"\(name)\"" }

    // MARK: - Setting up the cluster

    func initialize(installation: PostgresInstallation, runner: ProgramRunner, account: ServerAccount?) async throws {
        logger.info("creating PostgreSQL cluster in \(clusterDirectory)", metadata: ["postgres.bin": "\(installation.binDirectory)"])
        try createDirectory(clusterDirectory, mode: 0o700, owner: account)

        // initdb reads the password from a file; when it runs as another user, hand it a copy that user may read.
        var passwordCopy: String?
        defer { if let passwordCopy { try? FileManager.default.removeItem(atPath: passwordCopy) } }
        let pwfile: String
        if let account {
            let copy = "\(directory)/.postgres-password-\(randomHex(bytes: 8))"
            passwordCopy = copy
            try writeFile(copy, contents: try readPassword() + "\n", mode: 0o600, owner: account, exclusive: true)
            pwfile = copy
        } else {
            pwfile = passwordFile
        }

        let result = try await runner.run(
            installation.initdb,
            [
                "--pgdata=\(clusterDirectory)", "--username=\(Self.superuser)", "--auth=scram-sha-256", "--pwfile=\(pwfile)",
                "--encoding=UTF8", "--locale=C",
            ]
        )
        guard result.status == 0 else {
            throw EmbeddedPostgresError.commandFailed(command: "initdb", status: result.status, output: result.errorText)
        }

        let configuration = clusterDirectory + "/postgresql.conf"
        let include = "\n# Settings for the Realtime server, rewritten at every start.\ninclude_if_exists = '\(Self.managedConfigurationName)'\n"
        do {
            let handle = try FileHandle(forWritingTo: URL(fileURLWithPath: configuration))
            defer { try? handle.close() }
            try handle.seekToEnd()
            try handle.write(contentsOf: Data(include.utf8))
        } catch {
            throw EmbeddedPostgresError.fileSystem(path: configuration, reason: "\(error)")
        }
    }

    static let managedConfigurationName = "realtime.conf"

    static let managedConfiguration = """
        # Written by the Realtime server at every start; changes here are lost. Use ALTER SYSTEM to override.
        listen_addresses = '127.0.0.1'
        unix_socket_directories = ''
        max_connections = 300
        wal_level = logical
        max_wal_senders = 64
        max_replication_slots = 64
        max_slot_wal_keep_size = 4GB
        timezone = 'UTC'
        log_timezone = 'UTC'

        """

    static let managedHostBasedAuthentication = """
        # Written by the Realtime server at every start; changes here are lost.
        # TYPE  DATABASE     USER  ADDRESS       METHOD
        host    all          all   127.0.0.1/32  scram-sha-256
        host    replication  all   127.0.0.1/32  scram-sha-256

        """

    func writeManagedConfiguration(account: ServerAccount?) throws {
        try writeFile(
            clusterDirectory + "/" + Self.managedConfigurationName, contents: Self.managedConfiguration + extraSettings.map { $0 + "\n" }.joined(),
            mode: 0o600, owner: account)
        try writeFile(clusterDirectory + "/pg_hba.conf", contents: Self.managedHostBasedAuthentication, mode: 0o600, owner: account)
    }

    func isRunning(installation: PostgresInstallation, runner: ProgramRunner) async throws -> Bool {
        guard FileManager.default.fileExists(atPath: clusterDirectory + "/postmaster.pid") else { return false }
        // 0: running, 3: not running, 4: no accessible data directory.
        return try await runner.run(installation.pgCtl, ["status", "-D", clusterDirectory]).status == 0
    }

    func startServer(installation: PostgresInstallation, runner: ProgramRunner, account: ServerAccount?) async throws -> Int {
        if !FileManager.default.fileExists(atPath: logFile) {
            try writeFile(logFile, contents: "", mode: 0o600, owner: account)
        }
        let version =
            (try? String(contentsOfFile: clusterDirectory + "/PG_VERSION", encoding: .utf8))?
            .trimmingCharacters(in: .whitespacesAndNewlines) ?? ""
        let attempts = 3
        for attempt in 1...attempts {
            let port = try Self.freeLoopbackPort()
            let logOffset = (try? FileManager.default.attributesOfItem(atPath: logFile)[.size] as? Int) ?? 0
            let result = try await runner.run(
                installation.pgCtl,
                ["start", "-w", "-t", "60", "-D", clusterDirectory, "-o", "-p \(port)", "-l", logFile]
            )
            if result.status == 0 {
                logger.info(
                    "started PostgreSQL \(version) on \(Self.host):\(port)",
                    metadata: ["postgres.directory": "\(clusterDirectory)", "postgres.log": "\(logFile)"]
                )
                return port
            }
            let log = readLog(from: logOffset)
            let portTaken = log.contains("could not bind") || log.contains("Address already in use")
            if portTaken, attempt < attempts {
                logger.notice("port \(port) was taken before PostgreSQL could bind it; trying another one")
                continue
            }
            var output = result.errorText
            if !log.isEmpty { output += "\n\(logFile):\n\(log)" }
            throw EmbeddedPostgresError.commandFailed(command: "pg_ctl start", status: result.status, output: output)
        }
        preconditionFailure("unreachable")
    }

    func readLog(from offset: Int) -> String {
        guard let handle = FileHandle(forReadingAtPath: logFile) else { return "" }
        defer { try? handle.close() }
        guard (try? handle.seek(toOffset: UInt64(max(offset, 0)))) != nil, let data = try? handle.readToEnd() else { return "" }
        let text = String(decoding: data.suffix(8192), as: UTF8.self)
        return text.trimmingCharacters(in: .whitespacesAndNewlines)
    }

    func runningPort() throws -> Int {
        let pidFile = clusterDirectory + "/postmaster.pid"
        guard FileManager.default.fileExists(atPath: pidFile) else { throw EmbeddedPostgresError.notRunning(clusterDirectory: clusterDirectory) }
        guard let contents = try? String(contentsOfFile: pidFile, encoding: .utf8) else {
            throw EmbeddedPostgresError.unreadablePidFile(path: pidFile)
        }
        // Line 4 of postmaster.pid is the port.
        let lines = contents.split(separator: "\n", omittingEmptySubsequences: false)
        guard lines.count >= 4, let port = Int(lines[3].trimmingCharacters(in: .whitespaces)), port > 0 else {
            throw EmbeddedPostgresError.unreadablePidFile(path: pidFile)
        }
        return port
    }
}
