import Dispatch
import Foundation
import Logging
import PostgresNIO

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
    private let installation: PostgresInstallation?
    private let logger: Logger
    /// Lines added to the managed configuration, e.g. `fsync = off` for a throwaway test cluster.
    private let extraSettings: [String]

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

    private static func quoted(_ name: String) -> String { "\"\(name)\"" }

    // MARK: - Setting up the cluster

    private func initialize(installation: PostgresInstallation, runner: ProgramRunner, account: ServerAccount?) async throws {
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

    private func writeManagedConfiguration(account: ServerAccount?) throws {
        try writeFile(
            clusterDirectory + "/" + Self.managedConfigurationName, contents: Self.managedConfiguration + extraSettings.map { $0 + "\n" }.joined(),
            mode: 0o600, owner: account)
        try writeFile(clusterDirectory + "/pg_hba.conf", contents: Self.managedHostBasedAuthentication, mode: 0o600, owner: account)
    }

    private func isRunning(installation: PostgresInstallation, runner: ProgramRunner) async throws -> Bool {
        guard FileManager.default.fileExists(atPath: clusterDirectory + "/postmaster.pid") else { return false }
        // 0: running, 3: not running, 4: no accessible data directory.
        return try await runner.run(installation.pgCtl, ["status", "-D", clusterDirectory]).status == 0
    }

    private func startServer(installation: PostgresInstallation, runner: ProgramRunner, account: ServerAccount?) async throws -> Int {
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

    private func readLog(from offset: Int) -> String {
        guard let handle = FileHandle(forReadingAtPath: logFile) else { return "" }
        defer { try? handle.close() }
        guard (try? handle.seek(toOffset: UInt64(max(offset, 0)))) != nil, let data = try? handle.readToEnd() else { return "" }
        let text = String(decoding: data.suffix(8192), as: UTF8.self)
        return text.trimmingCharacters(in: .whitespacesAndNewlines)
    }

    private func runningPort() throws -> Int {
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

    // MARK: - Password

    private func loadOrCreatePassword() throws -> String {
        if FileManager.default.fileExists(atPath: passwordFile) {
            return try readPassword()
        }
        guard !FileManager.default.fileExists(atPath: clusterDirectory + "/PG_VERSION") else {
            throw EmbeddedPostgresError.missingPassword(passwordFile: passwordFile, clusterDirectory: clusterDirectory)
        }
        do {
            try writeFile(passwordFile, contents: randomHex(bytes: 24) + "\n", mode: 0o600, owner: nil, exclusive: true)
        } catch EmbeddedPostgresError.fileSystem where FileManager.default.fileExists(atPath: passwordFile) {
            // Written concurrently by another start: use that one.
        }
        return try readPassword()
    }

    private func readPassword() throws(EmbeddedPostgresError) -> String {
        let password: String
        do {
            password = try String(contentsOfFile: passwordFile, encoding: .utf8).trimmingCharacters(in: .whitespacesAndNewlines)
        } catch {
            throw .missingPassword(passwordFile: passwordFile, clusterDirectory: clusterDirectory)
        }
        guard !password.isEmpty else { throw .missingPassword(passwordFile: passwordFile, clusterDirectory: clusterDirectory) }
        return password
    }

    // MARK: - Connections

    private func withAdminConnection<Result>(
        to endpoint: DatabaseEndpoint,
        _ body: (PostgresConnection) async throws -> Result
    ) async throws -> Result {
        let configuration = PostgresConnection.Configuration(
            host: endpoint.host,
            port: endpoint.port,
            username: endpoint.username,
            password: endpoint.password,
            database: "postgres",
            tls: .disable
        )
        let connection: PostgresConnection
        do {
            connection = try await PostgresConnection.connect(configuration: configuration, id: 1, logger: logger)
        } catch {
            throw EmbeddedPostgresError.connectionFailed(endpoint: endpoint.withDatabase("postgres").description, reason: String(reflecting: error))
        }
        do {
            let result = try await body(connection)
            try? await connection.close()
            return result
        } catch {
            try? await connection.close()
            throw error
        }
    }

    private func execute(_ sql: String, on connection: PostgresConnection) async throws {
        do {
            try await connection.query(PostgresQuery(unsafeSQL: sql), logger: logger)
        } catch let error as PSQLError {
            throw EmbeddedPostgresError.queryFailed(
                statement: sql,
                sqlState: error.serverInfo?[.sqlState],
                reason: error.serverInfo?[.message] ?? String(reflecting: error)
            )
        }
    }

    // MARK: - Files

    /// Lets the server's user enter `directory`: adds o+x to it when needed (it is ours), and fails when a parent is closed.
    private func makeTraversable(for account: ServerAccount) throws(EmbeddedPostgresError) {
        var path = ""
        var ancestors = ["/"]
        for component in directory.split(separator: "/") {
            path += "/" + component
            ancestors.append(path)
        }
        for ancestor in ancestors {
            let info = try FileStatus(path: ancestor)
            guard !account.canSearch(info) else { continue }
            if ancestor == directory, info.uid == geteuid() {
                guard chmod(ancestor, info.permissions | 0o001) == 0 else {
                    throw .fileSystem(path: ancestor, reason: String(cString: strerror(errno)))
                }
                logger.info("allowing user \(account.name) to enter \(ancestor) (chmod o+x)")
                continue
            }
            throw .directoryNotTraversable(path: ancestor, user: account.name, dataDirectory: directory)
        }
    }

    private func createDirectory(_ path: String, mode: mode_t, owner: ServerAccount? = nil) throws(EmbeddedPostgresError) {
        do {
            if !FileManager.default.fileExists(atPath: path) {
                try FileManager.default.createDirectory(atPath: path, withIntermediateDirectories: true)
                guard chmod(path, mode) == 0 else { throw EmbeddedPostgresError.fileSystem(path: path, reason: String(cString: strerror(errno))) }
            }
            if let owner, chown(path, owner.uid, owner.gid) != 0 {
                throw EmbeddedPostgresError.fileSystem(path: path, reason: "chown to \(owner.name): " + String(cString: strerror(errno)))
            }
        } catch let error as EmbeddedPostgresError {
            throw error
        } catch {
            throw .fileSystem(path: path, reason: "\(error)")
        }
    }

    /// Writes a file with `mode` from its creation on (no window where others may read it), owned by `owner` when given.
    private func writeFile(
        _ path: String,
        contents: String,
        mode: mode_t,
        owner: ServerAccount?,
        exclusive: Bool = false
    ) throws(EmbeddedPostgresError) {
        let flags = O_WRONLY | O_CREAT | O_CLOEXEC | O_NOFOLLOW | (exclusive ? O_EXCL : O_TRUNC)
        let fd = open(path, flags, mode)
        guard fd >= 0 else { throw .fileSystem(path: path, reason: String(cString: strerror(errno))) }
        defer { close(fd) }
        guard fchmod(fd, mode) == 0 else { throw .fileSystem(path: path, reason: String(cString: strerror(errno))) }
        if let owner, fchown(fd, owner.uid, owner.gid) != 0 {
            throw .fileSystem(path: path, reason: "chown to \(owner.name): " + String(cString: strerror(errno)))
        }
        var bytes = Array(contents.utf8)[...]
        while !bytes.isEmpty {
            let written = bytes.withUnsafeBytes { write(fd, $0.baseAddress, $0.count) }
            if written < 0, errno == EINTR { continue }
            guard written > 0 else { throw .fileSystem(path: path, reason: String(cString: strerror(errno))) }
            bytes = bytes.dropFirst(written)
        }
    }

    private func randomHex(bytes count: Int) -> String {
        var generator = SystemRandomNumberGenerator()
        return (0..<count).map { _ in
            let byte = UInt8.random(in: .min ... .max, using: &generator)
            return (byte < 16 ? "0" : "") + String(byte, radix: 16)
        }.joined()
    }

    /// A TCP port on 127.0.0.1 that is free right now: bound with port 0, read back, and released.
    static func freeLoopbackPort() throws(EmbeddedPostgresError) -> Int {
        #if os(Linux)
            let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        #else
            let fd = socket(AF_INET, SOCK_STREAM, 0)
        #endif
        guard fd >= 0 else { throw .freePortUnavailable(reason: String(cString: strerror(errno))) }
        defer { close(fd) }
        var address = sockaddr_in()
        address.sin_family = sa_family_t(AF_INET)
        address.sin_port = 0
        address.sin_addr.s_addr = inet_addr(host)
        let length = socklen_t(MemoryLayout<sockaddr_in>.size)
        let bound = withUnsafePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, length) }
        }
        guard bound == 0 else { throw .freePortUnavailable(reason: String(cString: strerror(errno))) }
        var boundLength = length
        let named = withUnsafeMutablePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { getsockname(fd, $0, &boundLength) }
        }
        guard named == 0 else { throw .freePortUnavailable(reason: String(cString: strerror(errno))) }
        return Int(UInt16(bigEndian: address.sin_port))
    }
}

// MARK: - Errors

/// Why the embedded PostgreSQL could not be found, set up, started, stopped or used.
public enum EmbeddedPostgresError: Error, Sendable, CustomStringConvertible {
    /// No directory holds `initdb`, `pg_ctl` and `postgres` together.
    case serverProgramsNotFound(searched: [String])
    /// A program (`initdb`, `pg_ctl start`, …) exited with a failure; `output` is what it wrote (standard error first).
    case commandFailed(command: String, status: Int32, output: String)
    /// A program could not be launched at all.
    case launchFailed(program: String, reason: String)
    /// The unprivileged user PostgreSQL runs as cannot enter a parent of the data directory.
    case directoryNotTraversable(path: String, user: String, dataDirectory: String)
    /// The cluster exists but its password file is missing, empty or unreadable.
    case missingPassword(passwordFile: String, clusterDirectory: String)
    /// A database name outside `[a-z0-9_]{1,63}`.
    case invalidDatabaseName(String)
    /// The cluster is not running (no `postmaster.pid`).
    case notRunning(clusterDirectory: String)
    /// `postmaster.pid` could not be read or has no port.
    case unreadablePidFile(path: String)
    /// No unprivileged system user could be found or created to run PostgreSQL as.
    case noSystemUser(reason: String)
    /// No free TCP port could be obtained on 127.0.0.1.
    case freePortUnavailable(reason: String)
    /// Connecting to the cluster failed.
    case connectionFailed(endpoint: String, reason: String)
    /// An administrative statement failed.
    case queryFailed(statement: String, sqlState: String?, reason: String)
    /// A file or directory operation failed.
    case fileSystem(path: String, reason: String)

    /// The SQLSTATE of a failed statement, if any.
    public var sqlState: String? {
        if case .queryFailed(_, let sqlState, _) = self { return sqlState }
        return nil
    }

    public var description: String {
        switch self {
        case .serverProgramsNotFound(let searched):
            let places = searched.isEmpty ? "nowhere (the search path is empty)" : searched.joined(separator: ", ")
            return """
                PostgreSQL's server programs (\(PostgresInstallation.requiredPrograms.joined(separator: ", "))) were not found \
                together in one directory. Looked in: \(places). On Debian or Ubuntu install them with \
                `apt-get install -y postgresql`, or put the directory holding them on PATH.
                """
        case .commandFailed(let command, let status, let output):
            let details = output.trimmingCharacters(in: .whitespacesAndNewlines)
            return "\(command) failed (exit status \(status))" + (details.isEmpty ? "" : ": \(details)")
        case .launchFailed(let program, let reason):
            return "could not run \(program): \(reason)"
        case .directoryNotTraversable(let path, let user, let dataDirectory):
            return """
                PostgreSQL runs as the unprivileged user '\(user)' because this process runs as root, and that user cannot enter \
                \(path), a parent of the data directory \(dataDirectory). Choose a data directory outside it (for example under \
                /var/lib or /srv), or allow it with `chmod o+x \(path)`.
                """
        case .missingPassword(let passwordFile, let clusterDirectory):
            return """
                the PostgreSQL cluster in \(clusterDirectory) exists but its superuser password file \(passwordFile) is missing, \
                empty or unreadable; restore it, or remove the cluster to create a new one
                """
        case .invalidDatabaseName(let name):
            return "invalid database name '\(name)': use 1 to 63 characters of a-z, 0-9 and _"
        case .notRunning(let clusterDirectory):
            return "the PostgreSQL cluster in \(clusterDirectory) is not running"
        case .unreadablePidFile(let path):
            return "could not read the port from \(path)"
        case .noSystemUser(let reason):
            return "PostgreSQL cannot run as root and no unprivileged user could be set up for it: \(reason)"
        case .freePortUnavailable(let reason):
            return "could not find a free TCP port on 127.0.0.1: \(reason)"
        case .connectionFailed(let endpoint, let reason):
            return "could not connect to PostgreSQL at \(endpoint): \(reason)"
        case .queryFailed(let statement, let sqlState, let reason):
            return "\(statement) failed" + (sqlState.map { " (SQLSTATE \($0))" } ?? "") + ": \(reason)"
        case .fileSystem(let path, let reason):
            return "\(path): \(reason)"
        }
    }
}

// MARK: - Running as an unprivileged user

/// The unprivileged user PostgreSQL runs as when this process runs as root.
struct ServerAccount: Sendable, Hashable {
    var name: String
    var uid: uid_t
    var gid: gid_t
    var groups: [gid_t]

    /// The account to run PostgreSQL as, creating the `realtime-pg` system user if needed; nil when not running as root.
    ///
    /// An existing cluster keeps running as the user owning it; otherwise `postgres` is preferred.
    static func resolve(clusterDirectory: String, logger: Logger) async throws -> Self? {
        guard geteuid() == 0 else { return nil }
        if let account = try existing(clusterDirectory: clusterDirectory) { return account }
        if let account = lookup(name: "postgres") ?? lookup(name: EmbeddedPostgres.fallbackSystemUser) { return account }

        let name = EmbeddedPostgres.fallbackSystemUser
        guard let useradd = ProgramRunner.findProgram("useradd", in: ["/usr/sbin", "/sbin", "/usr/bin", "/bin"]) else {
            throw EmbeddedPostgresError.noSystemUser(reason: "there is no 'postgres' user and useradd was not found to create '\(name)'")
        }
        let result = try await ProgramRunner(account: nil).run(useradd, ["--system", "--no-create-home", "--shell", "/usr/sbin/nologin", name])
        // Exit status 9: created concurrently by someone else.
        if let account = lookup(name: name) {
            if result.status == 0 { logger.info("created system user \(name) to run PostgreSQL") }
            return account
        }
        throw EmbeddedPostgresError.noSystemUser(reason: "useradd \(name) failed (exit status \(result.status)): \(result.errorText)")
    }

    /// The user owning an existing cluster when running as root; nil when not root or when there is no cluster owned by another user.
    static func existing(clusterDirectory: String) throws(EmbeddedPostgresError) -> Self? {
        guard geteuid() == 0 else { return nil }
        guard FileManager.default.fileExists(atPath: clusterDirectory) else { return nil }
        let info = try FileStatus(path: clusterDirectory)
        guard info.uid != 0 else { return nil }
        guard let account = lookup(uid: info.uid) else {
            throw .noSystemUser(reason: "\(clusterDirectory) is owned by uid \(info.uid), which has no user name")
        }
        return account
    }

    static func lookup(name: String) -> Self? {
        lookupPasswordEntry { entry, buffer, result in getpwnam_r(name, entry, buffer.baseAddress!, buffer.count, result) }
    }

    static func lookup(uid: uid_t) -> Self? {
        lookupPasswordEntry { entry, buffer, result in getpwuid_r(uid, entry, buffer.baseAddress!, buffer.count, result) }
    }

    private static func lookupPasswordEntry(
        _ call: (UnsafeMutablePointer<passwd>, UnsafeMutableBufferPointer<CChar>, UnsafeMutablePointer<UnsafeMutablePointer<passwd>?>) -> Int32
    ) -> Self? {
        var entry = passwd()
        var result: UnsafeMutablePointer<passwd>?
        var buffer = [CChar](repeating: 0, count: 16384)
        let status = buffer.withUnsafeMutableBufferPointer { call(&entry, $0, &result) }
        guard status == 0, result != nil, let namePointer = entry.pw_name else { return nil }
        let name = String(cString: namePointer)
        return Self(name: name, uid: entry.pw_uid, gid: entry.pw_gid, groups: groupList(name: name, gid: entry.pw_gid))
    }

    private static func groupList(name: String, gid: gid_t) -> [gid_t] {
        #if os(Linux)
            var count: Int32 = 64
            var groups = [gid_t](repeating: 0, count: Int(count))
            if getgrouplist(name, gid, &groups, &count) == -1 {
                groups = [gid_t](repeating: 0, count: Int(count))
                guard getgrouplist(name, gid, &groups, &count) != -1 else { return [gid] }
            }
            return Array(groups.prefix(Int(count)))
        #else
            return [gid]
        #endif
    }

    /// Whether this user may search (enter) a directory with the given status.
    func canSearch(_ info: FileStatus) -> Bool {
        let mode = info.permissions
        if info.uid == uid { return mode & 0o100 != 0 }
        if groups.contains(info.gid) || info.gid == gid { return mode & 0o010 != 0 }
        return mode & 0o001 != 0
    }
}

/// A file's owner, group and permission bits.
struct FileStatus: Sendable, Hashable {
    var uid: uid_t
    var gid: gid_t
    var permissions: mode_t

    init(path: String) throws(EmbeddedPostgresError) {
        let attributes: [FileAttributeKey: Any]
        do {
            attributes = try FileManager.default.attributesOfItem(atPath: path)
        } catch {
            throw .fileSystem(path: path, reason: "\(error)")
        }
        guard let uid = (attributes[.ownerAccountID] as? NSNumber)?.uint32Value,
            let gid = (attributes[.groupOwnerAccountID] as? NSNumber)?.uint32Value,
            let permissions = (attributes[.posixPermissions] as? NSNumber)?.uint16Value
        else {
            throw .fileSystem(path: path, reason: "could not read its owner and permissions")
        }
        self.uid = uid_t(uid)
        self.gid = gid_t(gid)
        self.permissions = mode_t(permissions) & 0o7777
    }
}

/// Runs external programs (as `account` through `runuser` when given), capturing their output.
///
/// Programs are spawned with `posix_spawn` rather than Foundation's `Process`: on Linux `Process` learns that a child exited
/// when a socket it hands to the child is closed, and the postmaster that `pg_ctl start` leaves behind inherits that socket, so
/// the start would only be reported once PostgreSQL stops. Here the child gets only standard input, output and error (every
/// other descriptor is closed), and its exit is observed with `waitpid`.
struct ProgramRunner: Sendable {
    /// What a program exited with and wrote.
    struct Result: Sendable {
        /// The exit status, or 128 + the signal number when a signal ended it.
        var status: Int32
        var standardOutput: String
        var standardError: String

        /// Standard error, or standard output when standard error is empty.
        var errorText: String {
            let error = standardError.trimmingCharacters(in: .whitespacesAndNewlines)
            return error.isEmpty ? standardOutput.trimmingCharacters(in: .whitespacesAndNewlines) : error
        }
    }

    var account: ServerAccount?

    static func findProgram(_ name: String, in directories: [String]) -> String? {
        directories.map { "\($0)/\(name)" }.first { FileManager.default.isExecutableFile(atPath: $0) }
    }

    /// Runs the program and waits for it without blocking a thread (its exit is polled).
    func run(_ program: String, _ arguments: [String]) async throws -> Result {
        let child = try spawn(program, arguments)
        var delay = 0.002
        while true {
            if let status = try child.reap(blocking: false) { return child.result(status: status) }
            // Not Task.sleep: a cancelled task must still wait for its child rather than spin.
            await withUnsafeContinuation { (continuation: UnsafeContinuation<Void, Never>) in
                DispatchQueue.global().asyncAfter(deadline: .now() + delay) { continuation.resume() }
            }
            delay = min(delay * 2, 0.05)
        }
    }

    /// Runs the program and blocks the calling thread until it exits; for exit handlers.
    func runBlocking(_ program: String, _ arguments: [String]) throws -> Result {
        let child = try spawn(program, arguments)
        guard let status = try child.reap(blocking: true) else { preconditionFailure("waitpid returned without a status") }
        return child.result(status: status)
    }

    /// A spawned child and the (unlinked) files receiving its output.
    private final class Child {
        let pid: pid_t
        let program: String
        let output: Int32
        let error: Int32

        init(pid: pid_t, program: String, output: Int32, error: Int32) {
            self.pid = pid
            self.program = program
            self.output = output
            self.error = error
        }

        deinit {
            close(output)
            close(error)
        }

        /// The exit status once the child has exited; nil while it runs (only when not blocking).
        func reap(blocking: Bool) throws(EmbeddedPostgresError) -> Int32? {
            var status: Int32 = 0
            while true {
                let result = waitpid(pid, &status, blocking ? 0 : WNOHANG)
                if result == pid { break }
                if result == 0 { return nil }
                if errno == EINTR { continue }
                throw .launchFailed(program: program, reason: "waitpid: " + String(cString: strerror(errno)))
            }
            let signal = status & 0x7f
            return signal == 0 ? (status >> 8) & 0xff : 128 + signal
        }

        func result(status: Int32) -> Result {
            Result(status: status, standardOutput: Self.contents(of: output), standardError: Self.contents(of: error))
        }

        private static func contents(of fd: Int32) -> String {
            var data = [UInt8]()
            var buffer = [UInt8](repeating: 0, count: 4096)
            var offset: off_t = 0
            while data.count < 1 << 20 {
                let count = buffer.withUnsafeMutableBytes { pread(fd, $0.baseAddress, $0.count, offset) }
                if count < 0, errno == EINTR { continue }
                guard count > 0 else { break }
                data.append(contentsOf: buffer[..<count])
                offset += off_t(count)
            }
            return String(decoding: data.suffix(16384), as: UTF8.self)
        }
    }

    private func spawn(_ program: String, _ arguments: [String]) throws(EmbeddedPostgresError) -> Child {
        let executable: String
        var argv: [String]
        if let account {
            if let runuser = Self.findProgram("runuser", in: ["/usr/sbin", "/sbin", "/usr/bin", "/bin"]) {
                executable = runuser
                argv = [runuser, "-u", account.name, "--", program] + arguments
            } else if let setpriv = Self.findProgram("setpriv", in: ["/usr/bin", "/bin", "/usr/sbin", "/sbin"]) {
                executable = setpriv
                argv = [setpriv, "--reuid=\(account.uid)", "--regid=\(account.gid)", "--init-groups", "--", program] + arguments
            } else {
                throw .noSystemUser(reason: "neither runuser nor setpriv was found to run \(program) as \(account.name)")
            }
        } else {
            executable = program
            argv = [program] + arguments
        }
        // Libpq and server variables from our environment must not redirect the programs to another cluster.
        let environment = ProcessInfo.processInfo.environment.filter { !$0.key.hasPrefix("PG") }.map { "\($0.key)=\($0.value)" }

        let output = try Self.makeOutputFile(for: program)
        let error: Int32
        do {
            error = try Self.makeOutputFile(for: program)
        } catch {
            close(output)
            throw error
        }
        var spawned = false
        defer {
            if !spawned {
                close(output)
                close(error)
            }
        }

        #if canImport(Darwin)
            var actions: posix_spawn_file_actions_t? = nil
            var attributes: posix_spawnattr_t? = nil
        #else
            var actions = posix_spawn_file_actions_t()
            var attributes = posix_spawnattr_t()
        #endif
        posix_spawn_file_actions_init(&actions)
        defer { posix_spawn_file_actions_destroy(&actions) }
        posix_spawnattr_init(&attributes)
        defer { posix_spawnattr_destroy(&attributes) }

        posix_spawn_file_actions_addopen(&actions, 0, "/dev/null", O_RDONLY, 0)
        posix_spawn_file_actions_adddup2(&actions, output, 1)
        posix_spawn_file_actions_adddup2(&actions, error, 2)
        #if canImport(Darwin)
            posix_spawnattr_setflags(&attributes, Int16(POSIX_SPAWN_CLOEXEC_DEFAULT))
        #else
            if let closeFrom = SpawnExtensions.addCloseFrom {
                _ = closeFrom(&actions, 3)
            } else {
                for fd in Self.openDescriptors() where fd > 2 { posix_spawn_file_actions_addclose(&actions, fd) }
            }
            // A directory every user may enter: the unprivileged user may not be allowed into ours.
            if let addChdir = SpawnExtensions.addChdir { _ = addChdir(&actions, "/") }
        #endif

        let cArguments = argv.map { strdup($0) } + [nil]
        let cEnvironment = environment.map { strdup($0) } + [nil]
        defer {
            for pointer in cArguments { free(pointer) }
            for pointer in cEnvironment { free(pointer) }
        }
        var pid = pid_t()
        let status = posix_spawn(&pid, executable, &actions, &attributes, cArguments, cEnvironment)
        guard status == 0 else { throw .launchFailed(program: executable, reason: String(cString: strerror(status))) }
        spawned = true
        return Child(pid: pid, program: program, output: output, error: error)
    }

    /// An anonymous file (created and unlinked at once) for a child's output; files rather than pipes so nothing can block.
    private static func makeOutputFile(for program: String) throws(EmbeddedPostgresError) -> Int32 {
        let path = FileManager.default.temporaryDirectory.appendingPathComponent("realtime-\(UUID().uuidString)").path
        let fd = open(path, O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC, 0o600)
        guard fd >= 0 else {
            throw .launchFailed(program: program, reason: "could not create \(path) for its output: " + String(cString: strerror(errno)))
        }
        unlink(path)
        return fd
    }

    private static func openDescriptors() -> [Int32] {
        ((try? FileManager.default.contentsOfDirectory(atPath: "/proc/self/fd")) ?? []).compactMap { Int32($0) }
    }
}

#if !canImport(Darwin)
    /// glibc's `posix_spawn` extensions, which Swift does not import; looked up at run time (glibc 2.29 and 2.34).
    private enum SpawnExtensions {
        typealias AddChdir = @convention(c) (UnsafeMutablePointer<posix_spawn_file_actions_t>?, UnsafePointer<CChar>?) -> Int32
        typealias AddCloseFrom = @convention(c) (UnsafeMutablePointer<posix_spawn_file_actions_t>?, Int32) -> Int32

        static let addChdir: AddChdir? = dlsym(dlopen(nil, RTLD_NOW), "posix_spawn_file_actions_addchdir_np").map {
            unsafeBitCast($0, to: AddChdir.self)
        }
        static let addCloseFrom: AddCloseFrom? = dlsym(dlopen(nil, RTLD_NOW), "posix_spawn_file_actions_addclosefrom_np").map {
            unsafeBitCast($0, to: AddCloseFrom.self)
        }
    }
#endif
