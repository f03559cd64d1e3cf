import ArgumentParser
import Foundation
import Hummingbird
import Logging
import PostgresNIO
import Realtime
import ServiceLifecycle
import UnixSignals

@main
struct RealtimeCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "realtime",
        abstract: "A realtime server for the planning app: policy-checked REST over PostgreSQL.",
        subcommands: [Serve.self, Migrate.self, Token.self],
        defaultSubcommand: Serve.self
    )
}

/// The settings shared by `serve` and `migrate`; each flag overrides its environment variable.
struct ServerOptions: ParsableArguments {
    @Option(help: "PostgreSQL URL (env DATABASE_URL). Without it, an embedded PostgreSQL runs under --data-dir.")
    var databaseURL: String?

    @Option(help: "Folder of the embedded PostgreSQL and generated secrets (env REALTIME_DATA_DIR, default .realtime).")
    var dataDir: String?

    @Option(help: "Log level: trace, debug, info, notice, warning, error, critical (env REALTIME_LOG_LEVEL, default info).")
    var logLevel: String?

    @Option(help: "Folder of the numbered SQL migrations (env REALTIME_MIGRATIONS_DIR, default ./Migrations).")
    var migrationsDir: String?

    func configuration() throws -> Configuration {
        var configuration = try Configuration.fromEnvironment()
        if let databaseURL { configuration.databaseURL = databaseURL }
        if let dataDir { configuration.dataDirectory = dataDir }
        if let logLevel { configuration.logLevel = try Configuration.level(logLevel, "--log-level") }
        if let migrationsDir { configuration.migrationsDirectory = migrationsDir }
        return configuration
    }
}

/// The database to use: the given URL, or the embedded cluster (started here, stopped by `stop`).
struct DatabaseChoice {
    var endpoint: DatabaseEndpoint
    var embedded: EmbeddedPostgres?

    static func open(_ configuration: Configuration, logger: Logger) async throws -> DatabaseChoice {
        if let url = configuration.databaseURL {
            let endpoint = try DatabaseEndpoint(url: url)
            try await DatabaseProbe.waitUntilReachable(endpoint, logger: logger)
            try await DatabaseProbe.requireLogicalDecoding(endpoint, logger: logger)
            return DatabaseChoice(endpoint: endpoint, embedded: nil)
        }
        let embedded = EmbeddedPostgres(directory: configuration.dataDirectory, logger: logger)
        return DatabaseChoice(endpoint: try await embedded.start(), embedded: embedded)
    }

    func stop() async {
        do {
            try await embedded?.stop()
        } catch {
            FileHandle.standardError.write(Data("realtime: stopping the embedded PostgreSQL failed: \(error)\n".utf8))
        }
    }
}

func makeLogger(_ level: Logger.Level) -> Logger {
    var logger = Logger(label: "realtime")
    logger.logLevel = level
    return logger
}

/// Runs a command body, printing a setup error as one clear line instead of a stack of types.
func reportingErrors(_ body: () async throws -> Void) async throws {
    do {
        try await body()
    } catch let error as PSQLError {
        let message = error.serverInfo?[.message] ?? String(reflecting: error)
        FileHandle.standardError.write(Data("realtime: database error: \(message)\n".utf8))
        throw ExitCode.failure
    } catch let error as any CustomStringConvertible & Error {
        FileHandle.standardError.write(Data("realtime: \(error.description)\n".utf8))
        throw ExitCode.failure
    }
}

struct Serve: AsyncParsableCommand {
    static let configuration = CommandConfiguration(abstract: "Run the server (embedded PostgreSQL unless --database-url is given).")

    @OptionGroup var options: ServerOptions

    @Option(help: "Address to listen on (env REALTIME_HOST, default 127.0.0.1).")
    var host: String?

    @Option(help: "Port to listen on (env REALTIME_PORT, default 8080).")
    var port: Int?

    @Flag(help: "Do not seed demo data on the first embedded start (env REALTIME_NO_DEMO=1).")
    var noDemo = false

    @Option(help: "Largest accepted request body in bytes (env REALTIME_MAX_BODY_BYTES, default 262144).")
    var maxBodyBytes: Int?

    @Option(help: "Connections to PostgreSQL in the pool (env REALTIME_DB_POOL_SIZE, default 20).")
    var dbPoolSize: Int?

    @Option(help: "Seconds between keepalive comments on idle streams (env REALTIME_KEEPALIVE_SECONDS, default 15).")
    var keepaliveSeconds: Int?

    @Option(help: "Frames a stream may have unsent before it is cut off as slow (env REALTIME_SUBSCRIBER_BUFFER, default 1024).")
    var subscriberBuffer: Int?

    @Option(help: "Hours the event log keeps events for resuming (env REALTIME_EVENT_RETENTION_HOURS, default 24).")
    var eventRetentionHours: Int?

    @Option(help: "Seconds a presence entry lives without a heartbeat (env REALTIME_PRESENCE_TTL_SECONDS, default 30).")
    var presenceTTLSeconds: Int?

    @Option(help: "Heartbeats, and separately broadcasts, a user may send per second (env REALTIME_PRESENCE_RATE, default 5).")
    var presenceRate: Double?

    @Option(help: "How many heartbeats or broadcasts may come at once (env REALTIME_PRESENCE_BURST, default 10).")
    var presenceBurst: Int?

    @Option(help: "REST writes a user may make per second; the service role is not limited (env REALTIME_USER_WRITE_RATE, default 20).")
    var userWriteRate: Double?

    @Option(help: "How many REST writes of a user may come at once (env REALTIME_USER_WRITE_BURST, default 100).")
    var userWriteBurst: Int?

    @Option(help: "Polls of /realtime/v1/changes a user may make per second (env REALTIME_USER_POLL_RATE, default 5).")
    var userPollRate: Double?

    @Option(help: "How many polls of a user may come at once (env REALTIME_USER_POLL_BURST, default 30).")
    var userPollBurst: Int?

    @Option(help: "Streams a user may open per second (env REALTIME_USER_STREAM_RATE, default 2).")
    var userStreamRate: Double?

    @Option(help: "How many streams of a user may open at once (env REALTIME_USER_STREAM_BURST, default 30).")
    var userStreamBurst: Int?

    @Option(help: "Seconds the change feed may be down or stalled before /readyz answers 503 (env REALTIME_READY_MAX_LAG_SECONDS, default 30).")
    var readyMaxLagSeconds: Int?

    @Option(help: "This node's name in presence entries and logs (env REALTIME_NODE_ID, default host-pid-random).")
    var nodeID: String?

    @Option(help: "PEM certificate chain: serve HTTPS with HTTP/2 (env REALTIME_TLS_CERT; needs --tls-key).")
    var tlsCert: String?

    @Option(help: "PEM private key of --tls-cert (env REALTIME_TLS_KEY).")
    var tlsKey: String?

    @Option(help: "Most seconds a graceful shutdown (SIGTERM) may take (env REALTIME_SHUTDOWN_SECONDS, default 10).")
    var shutdownSeconds: Int?

    @Option(help: "Seconds before an idle connection (or a request head still arriving) is closed (env REALTIME_IDLE_TIMEOUT_SECONDS, default 30).")
    var idleTimeoutSeconds: Int?

    @Option(help: "Most connections at once, HTTP/2 streams each counted; 0 for no cap (env REALTIME_MAX_CONNECTIONS, default 20000).")
    var maxConnections: Int?

    @Option(help: "Most connections at once from one IP address; 0 for no cap (env REALTIME_MAX_CONNECTIONS_PER_IP, default 1000).")
    var maxConnectionsPerIp: Int?

    @Option(help: "Delay objective, p95 in ms from commit to frame written (env REALTIME_SLO_DELAY_P95_MS, default 1000).")
    var sloDelayP95Ms: Int?

    @Option(help: "Disconnect objective, percent of streams ended abnormally (env REALTIME_SLO_DISCONNECT_PERCENT, default 1).")
    var sloDisconnectPercent: Double?

    @Flag(help: "Keep this node out of the relay election (env REALTIME_RELAY=0).")
    var noRelay = false

    @Flag(help: "Serve REST only: no relay, tailer, streams or polls (env REALTIME_CHANGE_FEED=0).")
    var noChangeFeed = false

    func run() async throws {
        try await reportingErrors {
            var configuration = try options.configuration()
            if let host { configuration.host = host }
            if let port { configuration.port = port }
            if noDemo { configuration.seedDemo = false }
            if let maxBodyBytes { configuration.maxBodyBytes = maxBodyBytes }
            if let dbPoolSize { configuration.databasePoolSize = dbPoolSize }
            if let keepaliveSeconds { configuration.keepaliveSeconds = try Configuration.int("\(keepaliveSeconds)", "--keepalive-seconds", 1...3600) }
            if let subscriberBuffer {
                configuration.subscriberBufferLimit = try Configuration.int("\(subscriberBuffer)", "--subscriber-buffer", 16...1_000_000)
            }
            if let eventRetentionHours {
                configuration.eventRetentionHours = try Configuration.int("\(eventRetentionHours)", "--event-retention-hours", 1...24 * 365)
            }
            if let presenceTTLSeconds {
                configuration.presenceTTLSeconds = try Configuration.int("\(presenceTTLSeconds)", "--presence-ttl-seconds", 3...3600)
            }
            if let presenceRate { configuration.presenceRate = try Configuration.rate("\(presenceRate)", "--presence-rate") }
            if let userWriteRate { configuration.userWriteRate = try Configuration.rate("\(userWriteRate)", "--user-write-rate") }
            if let userWriteBurst { configuration.userWriteBurst = try Configuration.int("\(userWriteBurst)", "--user-write-burst", 1...100_000) }
            if let userPollRate { configuration.userPollRate = try Configuration.rate("\(userPollRate)", "--user-poll-rate") }
            if let userPollBurst { configuration.userPollBurst = try Configuration.int("\(userPollBurst)", "--user-poll-burst", 1...100_000) }
            if let userStreamRate { configuration.userStreamRate = try Configuration.rate("\(userStreamRate)", "--user-stream-rate") }
            if let userStreamBurst {
                configuration.userStreamBurst = try Configuration.int("\(userStreamBurst)", "--user-stream-burst", 1...100_000)
            }
            if let presenceBurst { configuration.presenceBurst = try Configuration.int("\(presenceBurst)", "--presence-burst", 1...100_000) }
            if let readyMaxLagSeconds {
                configuration.readyMaxLagSeconds = try Configuration.int("\(readyMaxLagSeconds)", "--ready-max-lag-seconds", 1...3600)
            }
            if let nodeID, !nodeID.isEmpty { configuration.nodeID = nodeID }
            if let tlsCert { configuration.tlsCertificatePath = tlsCert }
            if let tlsKey { configuration.tlsKeyPath = tlsKey }
            if let shutdownSeconds { configuration.shutdownSeconds = try Configuration.int("\(shutdownSeconds)", "--shutdown-seconds", 1...600) }
            if let idleTimeoutSeconds {
                configuration.idleTimeoutSeconds = try Configuration.int("\(idleTimeoutSeconds)", "--idle-timeout-seconds", 1...3600)
            }
            if let maxConnections { configuration.maxConnections = try Configuration.int("\(maxConnections)", "--max-connections", 0...10_000_000) }
            if let maxConnectionsPerIp {
                configuration.maxConnectionsPerAddress = try Configuration.int("\(maxConnectionsPerIp)", "--max-connections-per-ip", 0...10_000_000)
            }
            if let sloDelayP95Ms {
                configuration.sloDelayP95Milliseconds = try Configuration.int("\(sloDelayP95Ms)", "--slo-delay-p95-ms", 1...600_000)
            }
            if let sloDisconnectPercent {
                configuration.sloDisconnectPercent = try Configuration.percent("\(sloDisconnectPercent)", "--slo-disconnect-percent")
            }
            if noRelay { configuration.runsRelay = false }
            if noChangeFeed { configuration.changeFeedEnabled = false }
            try await serve(configuration)
        }
    }

    private func serve(_ configuration: Configuration) async throws {
        let logger = makeLogger(configuration.logLevel)
        let secret: String
        if let configured = configuration.jwtSecret {
            secret = configured
        } else if configuration.databaseURL == nil {
            secret = try SecretFile.loadOrCreate(at: configuration.dataDirectory + "/jwt-secret")
        } else {
            throw ConfigurationError("REALTIME_JWT_SECRET must be set when --database-url is given (every node needs the same secret).")
        }
        let tokens = try await TokenAuthority(secret: secret)
        let database = try await DatabaseChoice.open(configuration, logger: logger)
        let embedded = database.embedded != nil
        let scheme = configuration.tlsCertificatePath == nil ? "http" : "https"
        let url = "\(scheme)://\(configuration.host):\(configuration.port)"
        let seedDemo = embedded && configuration.seedDemo
        let demo = DemoLogin()
        do {
            let app = try buildApplication(
                configuration: configuration,
                database: database.endpoint,
                tokens: tokens,
                logger: logger,
                demo: demo,
                afterMigrations: { client in
                    guard seedDemo else { return }
                    try await DemoData.seedIfEmpty(client: client, logger: logger)
                    let users = try await printDemoTokens(tokens: tokens, url: url, dataDirectory: configuration.dataDirectory)
                    // The page's "sign in as" hands these tokens to anyone who can reach the server: only on loopback.
                    if ["127.0.0.1", "localhost", "::1"].contains(configuration.host) { demo.publish(users: users) }
                }
            )
            try await runUntilShutdown(app, configuration: configuration, logger: logger)
        } catch {
            await database.stop()
            throw error
        }
        await database.stop()
    }

    /// Runs the server until SIGTERM or SIGINT, then shuts down gracefully: no new streams, in-flight requests finish,
    /// open streams end with a spread-out `retry:` hint. Whatever is still running after four fifths of
    /// `shutdownSeconds` is cancelled, and the process gives up waiting on it at `shutdownSeconds`.
    private func runUntilShutdown(_ app: some ApplicationProtocol, configuration: Configuration, logger: Logger) async throws {
        var group = ServiceGroupConfiguration(services: [app], gracefulShutdownSignals: [.sigterm, .sigint], logger: logger)
        let total = Duration.seconds(configuration.shutdownSeconds)
        group.maximumGracefulShutdownDuration = total * 0.8
        group.maximumCancellationDuration = total * 0.2
        try await ServiceGroup(configuration: group).run()
    }

    /// Prints the URL and a ready token for each demo user, and keeps them in `<data-dir>/demo-tokens.env` (mode 0600).
    private func printDemoTokens(tokens: TokenAuthority, url: String, dataDirectory: String) async throws -> [(user: DemoData.User, token: String)] {
        var users: [(user: DemoData.User, token: String)] = []
        var lines = ["REALTIME_URL=\(url)"]
        var report = "\nRealtime is running at \(url) with demo data (branch \(DemoData.branchID.uuidString.lowercased())).\n"
        for user in DemoData.users {
            let token = try await tokens.issue(subject: user.id.uuidString.lowercased(), role: .authenticated, lifetime: 7 * 24 * 3600)
            users.append((user, token))
            lines.append("\(user.role.rawValue.uppercased())_TOKEN=\(token)")
            report += "  \(user.role.rawValue) \(user.id.uuidString.lowercased()):\n    \(token)\n"
        }
        let service = try await tokens.issue(subject: "service", role: .serviceRole, lifetime: 7 * 24 * 3600)
        lines.append("SERVICE_TOKEN=\(service)")
        report += "  service_role (scripts only, never in a browser):\n    \(service)\n"
        let file = dataDirectory + "/demo-tokens.env"
        _ = FileManager.default.createFile(
            atPath: file, contents: Data((lines.joined(separator: "\n") + "\n").utf8), attributes: [.posixPermissions: 0o600])
        report += "These tokens are also in \(file) (valid 7 days): `. \(file)` sets them as shell variables.\n"
        FileHandle.standardOutput.write(Data((report + "\n").utf8))
        return users
    }
}

struct Migrate: AsyncParsableCommand {
    static let configuration = CommandConfiguration(abstract: "Apply the SQL migrations and exit.")

    @OptionGroup var options: ServerOptions

    func run() async throws {
        try await reportingErrors {
            let configuration = try options.configuration()
            let logger = makeLogger(configuration.logLevel)
            let database = try await DatabaseChoice.open(configuration, logger: logger)
            do {
                let applied = try await runMigrations(configuration: configuration, endpoint: database.endpoint, logger: logger)
                print(applied.isEmpty ? "Migrations are up to date." : "Applied: \(applied.joined(separator: ", "))")
            } catch {
                await database.stop()
                throw error
            }
            await database.stop()
        }
    }
}

struct Token: AsyncParsableCommand {
    static let configuration = CommandConfiguration(abstract: "Print a signed token (HS256) for a user or the service role.")

    @Option(help: "The user id (uuid) the token speaks for.")
    var sub: String

    @Option(help: "authenticated (default) or service_role.")
    var role: String = "authenticated"

    @Option(help: "Lifetime, e.g. 30m, 1h, 7d (default 1h).")
    var ttl: String = "1h"

    @Option(help: "Data dir holding the embedded default's jwt-secret (env REALTIME_DATA_DIR, default .realtime); REALTIME_JWT_SECRET wins.")
    var dataDir: String?

    func run() async throws {
        try await reportingErrors {
            guard let role = TokenClaims.Role(rawValue: role) else { throw ConfigurationError("--role must be authenticated or service_role.") }
            if role == .authenticated, UUID(uuidString: sub) == nil { throw ConfigurationError("--sub must be a user id (uuid).") }
            guard let lifetime = Self.seconds(ttl) else { throw ConfigurationError("--ttl must look like 90s, 30m, 1h or 7d.") }
            var configuration = try Configuration.fromEnvironment()
            if let dataDir { configuration.dataDirectory = dataDir }
            let secret: String
            if let configured = configuration.jwtSecret {
                secret = configured
            } else {
                let path = configuration.dataDirectory + "/jwt-secret"
                guard FileManager.default.fileExists(atPath: path) else {
                    throw ConfigurationError("No REALTIME_JWT_SECRET and no \(path): start the server once or set the secret.")
                }
                secret = try SecretFile.loadOrCreate(at: path)
            }
            let tokens = try await TokenAuthority(secret: secret)
            print(try await tokens.issue(subject: sub.lowercased(), role: role, lifetime: lifetime))
        }
    }

    static func seconds(_ text: String) -> TimeInterval? {
        guard let unit = text.last, let amount = Double(text.dropLast()), amount > 0 else { return nil }
        switch unit {
        case "s": return amount
        case "m": return amount * 60
        case "h": return amount * 3600
        case "d": return amount * 86400
        default: return nil
        }
    }
}
