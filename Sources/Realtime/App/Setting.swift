import Foundation
import Logging

/// One setting of the server, written once: its flag, its environment variable, the values it allows and what it
/// means. Its default is the value `Configuration()` starts with.
///
/// ``Setting/all`` is the one table: the command line (`realtime serve`, `realtime migrate`), the environment, the range
/// checks, `realtime serve --help` and the README's configuration table all come from it.
public struct Setting: Sendable {
    /// The commands that take a setting.
    public enum Scope: Sendable {
        /// `serve` and `migrate`: where the database and the migrations are, and how much to log.
        case database
        /// `serve` only.
        case server
    }

    /// How a setting's text becomes its value.
    enum Kind: Sendable {
        /// Takes a value: `--flag value` or `--flag=value`.
        case value(placeholder: String)
        /// A flag without a value that turns something off; its environment variable takes `1` or `0`.
        case switchOff(environmentValue: String)
    }

    /// The flag without its dashes (`port` for `--port`); nil for a setting only the environment gives (a secret).
    public let flag: String?
    /// The environment variable.
    public let environment: String
    /// The commands that take it.
    public let scope: Scope
    /// What it means, one line.
    public let meaning: String
    /// The values it allows, as help shows them; empty when any text will do.
    public let allowed: String
    let kind: Kind
    /// The default as help shows it: read from `Configuration()`, or written here when it is computed at start.
    let defaultText: @Sendable (Configuration) -> String
    /// Sets the value from its text, or says why the text is not one; the second argument names the source.
    let apply: @Sendable (inout Configuration, String, String) throws(ConfigurationError) -> Void

    /// `--flag`, or nil.
    public var option: String? { flag.map { "--" + $0 } }

    /// The default of this setting, as help and the README show it.
    public var defaultValue: String { defaultText(Configuration.defaults) }

    /// `REALTIME_X`, or `REALTIME_X=0` for a switch.
    public var environmentForm: String {
        if case .switchOff(let value) = kind { return "\(environment)=\(value)" }
        return environment
    }
}

// MARK: - Building settings

extension Setting {
    static func integer(
        _ flag: String, _ environment: String, _ keyPath: any WritableKeyPath<Configuration, Int> & Sendable, _ range: ClosedRange<Int>,
        _ scope: Scope, _ placeholder: String, _ meaning: String
    ) -> Setting {
        Setting(
            flag: flag, environment: environment, scope: scope, meaning: meaning,
            allowed: "\(range.lowerBound)–\(range.upperBound)", kind: .value(placeholder: placeholder),
            defaultText: { "\($0[keyPath: keyPath])" },
            apply: { configuration, text, source throws(ConfigurationError) in
                guard let value = Int(text), range.contains(value) else {
                    throw ConfigurationError("\(source) must be an integer from \(range.lowerBound) to \(range.upperBound); got '\(text)'.")
                }
                configuration[keyPath: keyPath] = value
            }
        )
    }

    static func number(
        _ flag: String, _ environment: String, _ keyPath: any WritableKeyPath<Configuration, Double> & Sendable,
        _ range: ClosedRange<Double>, _ placeholder: String, _ meaning: String
    ) -> Setting {
        Setting(
            flag: flag, environment: environment, scope: .server, meaning: meaning,
            allowed: "\(Self.format(range.lowerBound))–\(Self.format(range.upperBound))", kind: .value(placeholder: placeholder),
            defaultText: { Self.format($0[keyPath: keyPath]) },
            apply: { configuration, text, source throws(ConfigurationError) in
                guard let value = Double(text), value.isFinite, range.contains(value) else {
                    throw ConfigurationError(
                        "\(source) must be a number from \(Self.format(range.lowerBound)) to \(Self.format(range.upperBound)); got '\(text)'.")
                }
                configuration[keyPath: keyPath] = value
            }
        )
    }

    static func text(
        _ flag: String?, _ environment: String, _ keyPath: any WritableKeyPath<Configuration, String> & Sendable,
        _ scope: Scope, _ placeholder: String, default shown: String? = nil, _ meaning: String
    ) -> Setting {
        Setting(
            flag: flag, environment: environment, scope: scope, meaning: meaning, allowed: "", kind: .value(placeholder: placeholder),
            defaultText: { shown ?? $0[keyPath: keyPath] },
            apply: { configuration, text, source throws(ConfigurationError) in
                guard !text.isEmpty else { throw ConfigurationError("\(source) must not be empty.") }
                configuration[keyPath: keyPath] = text
            }
        )
    }

    /// A setting that is unset by default; an empty environment variable leaves it unset.
    static func optionalText(
        _ flag: String?, _ environment: String, _ keyPath: any WritableKeyPath<Configuration, String?> & Sendable,
        _ scope: Scope, _ placeholder: String, default shown: String, _ meaning: String
    ) -> Setting {
        Setting(
            flag: flag, environment: environment, scope: scope, meaning: meaning, allowed: "", kind: .value(placeholder: placeholder),
            defaultText: { _ in shown },
            apply: { configuration, text, _ throws(ConfigurationError) in configuration[keyPath: keyPath] = text.isEmpty ? nil : text }
        )
    }

    /// A flag that turns `keyPath` off. Its environment variable says the same with `environmentValue` (`1` for a
    /// variable named for the flag, `REALTIME_NO_DEMO=1`; `0` for one named for the setting, `REALTIME_RELAY=0`).
    static func switchOff(
        _ flag: String, _ environment: String, _ keyPath: any WritableKeyPath<Configuration, Bool> & Sendable, environmentValue: String,
        default shown: String, _ meaning: String
    ) -> Setting {
        Setting(
            flag: flag, environment: environment, scope: .server, meaning: meaning, allowed: "", kind: .switchOff(environmentValue: environmentValue),
            defaultText: { _ in shown },
            apply: { configuration, text, source throws(ConfigurationError) in
                // A flag applies with the switch's own value; an environment variable with 1/0, true/false, yes/no.
                let truthy = ["1", "true", "yes", "on"]
                let falsy = ["0", "false", "no", "off"]
                let word = text.lowercased()
                guard truthy.contains(word) || falsy.contains(word) else {
                    throw ConfigurationError("\(source) must be 1 or 0 (true/false, yes/no); got '\(text)'.")
                }
                configuration[keyPath: keyPath] = truthy.contains(word) == (environmentValue == "0")
            }
        )
    }

    /// 5, 0.01, 10000: a number as a person writes it.
    static func format(_ value: Double) -> String {
        value == value.rounded() && abs(value) < 1e15 ? String(Int(value)) : String(value)
    }
}

// MARK: - The table

extension Setting {
    /// Every setting, in the order help and the README list them.
    public static let all: [Setting] = [
        .text("host", "REALTIME_HOST", \.host, .server, "address", "address to listen on"),
        .integer("port", "REALTIME_PORT", \.port, 0...65535, .server, "port", "port to listen on (0: any free port)"),
        Setting(
            flag: "log-level", environment: "REALTIME_LOG_LEVEL", scope: .database, meaning: "how much to log",
            allowed: Logger.Level.allCases.map(\.rawValue).joined(separator: ", "), kind: .value(placeholder: "level"),
            defaultText: { $0.logLevel.rawValue },
            apply: { configuration, text, source throws(ConfigurationError) in
                guard let level = Logger.Level(rawValue: text.lowercased()) else {
                    throw ConfigurationError(
                        "\(source) must be one of \(Logger.Level.allCases.map(\.rawValue).joined(separator: ", ")); got '\(text)'.")
                }
                configuration.logLevel = level
            }
        ),
        .optionalText(
            "database-url", "DATABASE_URL", \.databaseURL, .database, "url", default: "(none: embedded)",
            "postgres://user:password@host:port/db?sslmode=… of an external PostgreSQL"),
        .text("data-dir", "REALTIME_DATA_DIR", \.dataDirectory, .database, "path", "the embedded cluster, its password and the generated JWT secret"),
        .switchOff(
            "no-demo", "REALTIME_NO_DEMO", \.seedDemo, environmentValue: "1", default: "seed", "skip the demo data on the first embedded start"),
        .optionalText(
            nil, "REALTIME_JWT_SECRET", \.jwtSecret, .server, "secret", default: "generated (embedded)",
            "the HS256 secret; required with --database-url (never a flag: it would show in the process list)"),
        .integer("max-body-bytes", "REALTIME_MAX_BODY_BYTES", \.maxBodyBytes, 1024...(64 * 1024 * 1024), .server, "bytes", "largest request body"),
        .integer("db-pool-size", "REALTIME_DB_POOL_SIZE", \.databasePoolSize, 1...500, .server, "n", "connections to PostgreSQL"),
        .optionalText(
            "migrations-dir", "REALTIME_MIGRATIONS_DIR", \.migrationsDirectory, .database, "path",
            default: "./Migrations, else beside the executable", "the numbered SQL files"),
        .integer("keepalive-seconds", "REALTIME_KEEPALIVE_SECONDS", \.keepaliveSeconds, 1...3600, .server, "seconds", "comment line on idle streams"),
        .integer(
            "subscriber-buffer", "REALTIME_SUBSCRIBER_BUFFER", \.subscriberBufferLimit, 16...1_000_000, .server, "frames",
            "frames a stream may have unsent before it is cut off as slow (it resumes by cursor)"),
        .integer(
            "event-retention-hours", "REALTIME_EVENT_RETENTION_HOURS", \.eventRetentionHours, 1...(24 * 365), .server, "hours",
            "how long the event log keeps events for resuming"),
        .integer(
            "presence-ttl-seconds", "REALTIME_PRESENCE_TTL_SECONDS", \.presenceTTLSeconds, 3...3600, .server, "seconds",
            "how long a presence entry lives without a heartbeat"),
        .number(
            "presence-rate", "REALTIME_PRESENCE_RATE", \.presenceRate, 0.01...10_000, "per-second",
            "heartbeats, and separately broadcasts, per user and second (per node)"),
        .integer("presence-burst", "REALTIME_PRESENCE_BURST", \.presenceBurst, 1...100_000, .server, "n", "how many of them may come at once"),
        .number(
            "user-write-rate", "REALTIME_USER_WRITE_RATE", \.userWriteRate, 0.01...10_000, "per-second",
            "REST writes per user and second (per node); the service role is not limited"),
        .integer("user-write-burst", "REALTIME_USER_WRITE_BURST", \.userWriteBurst, 1...100_000, .server, "n", "how many of them may come at once"),
        .number("user-poll-rate", "REALTIME_USER_POLL_RATE", \.userPollRate, 0.01...10_000, "per-second", "polls per user and second (per node)"),
        .integer("user-poll-burst", "REALTIME_USER_POLL_BURST", \.userPollBurst, 1...100_000, .server, "n", "how many of them may come at once"),
        .number(
            "user-stream-rate", "REALTIME_USER_STREAM_RATE", \.userStreamRate, 0.01...10_000, "per-second",
            "stream opens per user and second (per node)"),
        .integer(
            "user-stream-burst", "REALTIME_USER_STREAM_BURST", \.userStreamBurst, 1...100_000, .server, "n", "how many of them may come at once"),
        .integer(
            "ready-max-lag-seconds", "REALTIME_READY_MAX_LAG_SECONDS", \.readyMaxLagSeconds, 1...3600, .server, "seconds",
            "/readyz answers 503 when this node's feed has not read the log, no relay has streamed the slot, or the relay has not confirmed waiting WAL for this long"
        ),
        .text("node-id", "REALTIME_NODE_ID", \.nodeID, .server, "name", default: "host-pid-random", "this node's name in presence entries and logs"),
        .optionalText(
            "tls-cert", "REALTIME_TLS_CERT", \.tlsCertificatePath, .server, "path", default: "(none: HTTP)",
            "PEM certificate chain: HTTPS with HTTP/2 and HTTP/1.1 (needs --tls-key)"),
        .optionalText("tls-key", "REALTIME_TLS_KEY", \.tlsKeyPath, .server, "path", default: "(none: HTTP)", "the PEM private key of --tls-cert"),
        .integer(
            "shutdown-seconds", "REALTIME_SHUTDOWN_SECONDS", \.shutdownSeconds, 1...600, .server, "seconds", "the most a graceful shutdown may take"),
        .integer(
            "idle-timeout-seconds", "REALTIME_IDLE_TIMEOUT_SECONDS", \.idleTimeoutSeconds, 1...3600, .server, "seconds",
            "close a connection idle (or still sending a request head) this long"),
        .integer(
            "max-connections", "REALTIME_MAX_CONNECTIONS", \.maxConnections, 0...10_000_000, .server, "n",
            "connections at once, HTTP/2 streams each counted (0: no cap)"),
        .integer(
            "max-connections-per-ip", "REALTIME_MAX_CONNECTIONS_PER_IP", \.maxConnectionsPerAddress, 0...10_000_000, .server, "n",
            "connections at once from one IP (0: no cap; use 0 behind a load balancer)"),
        .integer(
            "slo-delay-p95-ms", "REALTIME_SLO_DELAY_P95_MS", \.sloDelayP95Milliseconds, 1...600_000, .server, "ms",
            "the delay objective of /realtime/v1/slo (p95, commit → frame written)"),
        .number(
            "slo-disconnect-percent", "REALTIME_SLO_DISCONNECT_PERCENT", \.sloDisconnectPercent, 0.001...100, "percent",
            "the disconnect objective (abnormal stream ends, percent of streams)"),
        .switchOff(
            "no-relay", "REALTIME_RELAY", \.runsRelay, environmentValue: "0", default: "relay",
            "keep this node out of the relay election (it still streams)"),
        .switchOff(
            "no-change-feed", "REALTIME_CHANGE_FEED", \.changeFeedEnabled, environmentValue: "0", default: "feed on",
            "serve REST only: no relay, tailer, streams or polls"),
    ]

    /// The settings a command takes.
    public static func taken(by scope: Scope) -> [Setting] {
        all.filter { scope == .server || $0.scope == .database }
    }
}

// MARK: - Reading them

extension Configuration {
    /// The defaults, before any environment variable or flag.
    static let defaults = Configuration()

    /// The settings of a command: the defaults, then the environment, then the flags (the flag wins). Every value is
    /// checked against its setting's range; an unknown flag, a missing value or a value out of range is an error that
    /// names it.
    public static func resolve(
        arguments: [String],
        environment: [String: String],
        for scope: Setting.Scope
    ) throws(ConfigurationError) -> Configuration {
        let settings = Setting.taken(by: scope)
        var configuration = Configuration()
        for setting in settings {
            guard let text = environment[setting.environment] else { continue }
            // An empty variable is as good as none: `FOO= realtime` must not fail, nor set an empty path.
            if text.isEmpty { continue }
            try setting.apply(&configuration, text, setting.environment)
        }
        var remaining = arguments[...]
        while let argument = remaining.popFirst() {
            guard argument.hasPrefix("--") else {
                throw ConfigurationError("unexpected argument '\(argument)'; `realtime serve --help` lists the settings.")
            }
            let parts = argument.dropFirst(2).split(separator: "=", maxSplits: 1, omittingEmptySubsequences: false)
            let name = String(parts[0])
            guard let setting = settings.first(where: { $0.flag == name }) else {
                throw ConfigurationError("unknown option '--\(name)'; `realtime serve --help` lists the settings.")
            }
            switch setting.kind {
            case .switchOff(let value):
                guard parts.count == 1 else { throw ConfigurationError("--\(name) takes no value.") }
                try setting.apply(&configuration, value, "--\(name)")
            case .value:
                let value: String
                if parts.count == 2 {
                    value = String(parts[1])
                } else if let next = remaining.popFirst() {
                    value = next
                } else {
                    throw ConfigurationError("--\(name) needs a value.")
                }
                try setting.apply(&configuration, value, "--\(name)")
            }
        }
        return configuration
    }

    /// The settings named by environment variables, over the defaults.
    public static func fromEnvironment(
        _ environment: [String: String] = ProcessInfo.processInfo.environment
    ) throws(ConfigurationError) -> Configuration {
        try resolve(arguments: [], environment: environment, for: .server)
    }
}

// MARK: - Showing them

extension Setting {
    /// The settings of a command for `--help`: each flag with its variable, default, allowed values and meaning.
    public static func help(for scope: Scope) -> String {
        var lines = ["Each flag overrides its environment variable; an empty variable counts as unset.", ""]
        for setting in taken(by: scope) {
            var head = setting.option ?? "\(setting.environment) (environment only, no flag)"
            if let option = setting.option, case .value(let placeholder) = setting.kind { head = "\(option) <\(placeholder)>" }
            lines.append("  \(head)")
            var facts = ["env \(setting.environmentForm)", "default \(setting.defaultValue)"]
            if !setting.allowed.isEmpty { facts.append("allowed \(setting.allowed)") }
            lines.append("      \(setting.meaning)")
            lines.append("      (\(facts.joined(separator: "; ")))")
        }
        return lines.joined(separator: "\n")
    }

    /// The README's configuration table.
    public static func markdownTable() -> String {
        var lines = ["| Flag | Environment | Default | Allowed | Meaning |", "|---|---|---|---|---|"]
        for setting in all {
            let flag = setting.option.map { "`\($0)`" } ?? "—"
            let allowed = setting.allowed.isEmpty ? "" : setting.allowed
            lines.append("| \(flag) | `\(setting.environmentForm)` | \(setting.defaultValue) | \(allowed) | \(setting.meaning) |")
        }
        return lines.joined(separator: "\n")
    }
}
