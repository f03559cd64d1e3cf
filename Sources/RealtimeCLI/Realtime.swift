import ArgumentParser
import EmbeddedCluster
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
    static let configuration = CommandConfiguration(
        abstract: "Run the server (embedded PostgreSQL unless --database-url is given).",
        discussion: Setting.help(for: .server)
    )

    /// The settings' flags, read by the one table of settings (`Setting.all`), which the discussion above lists.
    @Argument(parsing: .allUnrecognized, help: .hidden)
    var settings: [String] = []

    func run() async throws {
        try await reportingErrors {
            let configuration = try Configuration.resolve(
                arguments: settings, environment: ProcessInfo.processInfo.environment, for: .server)
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
    static let configuration = CommandConfiguration(abstract: "Apply the SQL migrations and exit.", discussion: Setting.help(for: .database))

    @Argument(parsing: .allUnrecognized, help: .hidden)
    var settings: [String] = []

    func run() async throws {
        try await reportingErrors {
            let configuration = try Configuration.resolve(
                arguments: settings, environment: ProcessInfo.processInfo.environment, for: .database)
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
            let configuration = try Configuration.resolve(
                arguments: dataDir.map { ["--data-dir", $0] } ?? [], environment: ProcessInfo.processInfo.environment, for: .server)
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
