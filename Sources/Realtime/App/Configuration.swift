import Foundation
import Logging

/// Every setting of the server in one place, with defaults that work with no setup.
///
/// Each setting has a command-line flag and an environment variable; the README lists them all.
public struct Configuration: Sendable {
    /// `--host`, `REALTIME_HOST`
    public var host = "127.0.0.1"
    /// `--port`, `REALTIME_PORT`
    public var port = 8080
    /// `--log-level`, `REALTIME_LOG_LEVEL`
    public var logLevel: Logger.Level = .info
    /// `--database-url`, `DATABASE_URL`; nil runs the embedded PostgreSQL.
    public var databaseURL: String?
    /// `--data-dir`, `REALTIME_DATA_DIR`: the embedded cluster, its password and the generated JWT secret.
    public var dataDirectory = ".realtime"
    /// `--no-demo`, `REALTIME_NO_DEMO=1`: skip seeding demo data on the first embedded start.
    public var seedDemo = true
    /// `REALTIME_JWT_SECRET`; the embedded default generates one and keeps it in the data dir.
    public var jwtSecret: String?
    /// `--max-body-bytes`, `REALTIME_MAX_BODY_BYTES`
    public var maxBodyBytes = 256 * 1024
    /// `--db-pool-size`, `REALTIME_DB_POOL_SIZE`
    public var databasePoolSize = 20
    /// `--migrations-dir`, `REALTIME_MIGRATIONS_DIR`; by default found next to the checkout.
    public var migrationsDirectory: String?
    /// `--keepalive-seconds`, `REALTIME_KEEPALIVE_SECONDS`: a comment line on idle streams this often.
    public var keepaliveSeconds = 15
    /// `--subscriber-buffer`, `REALTIME_SUBSCRIBER_BUFFER`: frames a stream may have unsent before it is cut off as slow.
    public var subscriberBufferLimit = 1024
    /// `--event-retention-hours`, `REALTIME_EVENT_RETENTION_HOURS`: how long the event log keeps events for resuming.
    public var eventRetentionHours = 24
    /// `--no-relay`, `REALTIME_RELAY=0`: whether this node takes part in the relay election.
    public var runsRelay = true
    /// `--no-change-feed`, `REALTIME_CHANGE_FEED=0`: serve REST only, with no relay, tailer or streams.
    public var changeFeedEnabled = true

    /// `--presence-ttl-seconds`, `REALTIME_PRESENCE_TTL_SECONDS`: how long a presence entry lives without a heartbeat;
    /// clients heartbeat every third of it.
    public var presenceTTLSeconds = 30
    /// `--presence-rate`, `REALTIME_PRESENCE_RATE`: heartbeats (and, separately, broadcasts) a user may send per second
    /// to one node, on average.
    public var presenceRate = 5.0
    /// `--presence-burst`, `REALTIME_PRESENCE_BURST`: how many of them may come at once.
    public var presenceBurst = 10
    /// `--user-write-rate`, `REALTIME_USER_WRITE_RATE`: REST writes (POST, PUT, PATCH, DELETE) a user may make per
    /// second to one node, on average; the service role is not limited.
    public var userWriteRate = 20.0
    /// `--user-write-burst`, `REALTIME_USER_WRITE_BURST`: how many of them may come at once.
    public var userWriteBurst = 100
    /// `--user-poll-rate`, `REALTIME_USER_POLL_RATE`: polls of `/realtime/v1/changes` a user may make per second.
    public var userPollRate = 5.0
    /// `--user-poll-burst`, `REALTIME_USER_POLL_BURST`: how many of them may come at once.
    public var userPollBurst = 30
    /// `--user-stream-rate`, `REALTIME_USER_STREAM_RATE`: streams a user may open per second.
    public var userStreamRate = 2.0
    /// `--user-stream-burst`, `REALTIME_USER_STREAM_BURST`: how many may open at once.
    public var userStreamBurst = 30
    /// `--ready-max-lag-seconds`, `REALTIME_READY_MAX_LAG_SECONDS`: `/readyz` answers 503 when this node's change feed
    /// has not read the log, no relay has streamed the slot, or the relay has not confirmed waiting WAL for this long.
    public var readyMaxLagSeconds = 30
    /// `--node-id`, `REALTIME_NODE_ID`: this node's name in presence entries; by default host name, pid and a random part.
    public var nodeID = Configuration.defaultNodeID()

    /// `--tls-cert`, `REALTIME_TLS_CERT`: a PEM certificate chain; with `--tls-key`, the server speaks HTTPS and offers
    /// HTTP/2 and HTTP/1.1 by ALPN.
    public var tlsCertificatePath: String?
    /// `--tls-key`, `REALTIME_TLS_KEY`: the PEM private key of `--tls-cert`.
    public var tlsKeyPath: String?
    /// `--shutdown-seconds`, `REALTIME_SHUTDOWN_SECONDS`: the most a graceful shutdown (SIGTERM) may take before
    /// whatever is left is cancelled.
    public var shutdownSeconds = 10
    /// `--idle-timeout-seconds`, `REALTIME_IDLE_TIMEOUT_SECONDS`: a connection with no request in progress is closed
    /// after this long; a request's head must arrive within it (a client sending headers a byte at a time is cut off).
    /// Streams are requests in progress: they stay open.
    public var idleTimeoutSeconds = 30
    /// `--max-connections`, `REALTIME_MAX_CONNECTIONS`: the most connections (HTTP/2 streams count each) at once; beyond
    /// it, `503 server_busy`. 0 for no cap.
    public var maxConnections = 20_000
    /// `--max-connections-per-ip`, `REALTIME_MAX_CONNECTIONS_PER_IP`: the most at once from one IP address; beyond it,
    /// `429 too_many_connections`. 0 for no cap (behind a load balancer, where every client has its address).
    public var maxConnectionsPerAddress = 1000
    /// `--slo-delay-p95-ms`, `REALTIME_SLO_DELAY_P95_MS`: the delay objective (p95, commit to frame written, over 10
    /// minutes) at or above which `GET /realtime/v1/slo` says `breached`.
    public var sloDelayP95Milliseconds = 1000
    /// `--slo-disconnect-percent`, `REALTIME_SLO_DISCONNECT_PERCENT`: the share of streams ended abnormally (over 10
    /// minutes) at or above which the disconnect objective is breached.
    public var sloDisconnectPercent = 1.0

    public init() {}

    /// The service-level objectives of this configuration.
    public var sloObjectives: SLOMonitor.Objectives {
        .init(delayP95Milliseconds: Double(sloDelayP95Milliseconds), disconnectRate: sloDisconnectPercent / 100)
    }

    /// How long streams ended by a shutdown are told to wait before reconnecting, at most: each gets a random wait up
    /// to this, so that clients come back spread out rather than all at once.
    public var shutdownRetrySpread: Duration { .milliseconds(min(5000, max(1000, shutdownSeconds * 500))) }

    /// `<host>-<pid>-<random>`: unique per process, readable in logs.
    public static func defaultNodeID() -> String {
        let host = ProcessInfo.processInfo.hostName.split(separator: ".").first.map(String.init) ?? "node"
        return "\(host)-\(ProcessInfo.processInfo.processIdentifier)-\(String(UInt32.random(in: 0...UInt32.max), radix: 36))"
    }

    /// The settings named by environment variables, over the defaults.
    public static func fromEnvironment(_ environment: [String: String] = ProcessInfo.processInfo.environment) throws(ConfigurationError)
        -> Configuration
    {
        var configuration = Configuration()
        if let value = environment["REALTIME_HOST"] { configuration.host = value }
        if let value = environment["REALTIME_PORT"] { configuration.port = try int(value, "REALTIME_PORT", 0...65535) }
        if let value = environment["REALTIME_LOG_LEVEL"] { configuration.logLevel = try level(value, "REALTIME_LOG_LEVEL") }
        if let value = environment["DATABASE_URL"], !value.isEmpty { configuration.databaseURL = value }
        if let value = environment["REALTIME_DATA_DIR"] { configuration.dataDirectory = value }
        if let value = environment["REALTIME_NO_DEMO"] { configuration.seedDemo = !["1", "true", "yes"].contains(value.lowercased()) }
        if let value = environment["REALTIME_JWT_SECRET"], !value.isEmpty { configuration.jwtSecret = value }
        if let value = environment["REALTIME_MAX_BODY_BYTES"] {
            configuration.maxBodyBytes = try int(value, "REALTIME_MAX_BODY_BYTES", 1024...(64 * 1024 * 1024))
        }
        if let value = environment["REALTIME_DB_POOL_SIZE"] { configuration.databasePoolSize = try int(value, "REALTIME_DB_POOL_SIZE", 1...500) }
        if let value = environment["REALTIME_MIGRATIONS_DIR"] { configuration.migrationsDirectory = value }
        if let value = environment["REALTIME_KEEPALIVE_SECONDS"] {
            configuration.keepaliveSeconds = try int(value, "REALTIME_KEEPALIVE_SECONDS", 1...3600)
        }
        if let value = environment["REALTIME_SUBSCRIBER_BUFFER"] {
            configuration.subscriberBufferLimit = try int(value, "REALTIME_SUBSCRIBER_BUFFER", 16...1_000_000)
        }
        if let value = environment["REALTIME_EVENT_RETENTION_HOURS"] {
            configuration.eventRetentionHours = try int(value, "REALTIME_EVENT_RETENTION_HOURS", 1...24 * 365)
        }
        if let value = environment["REALTIME_RELAY"] { configuration.runsRelay = !["0", "false", "no"].contains(value.lowercased()) }
        if let value = environment["REALTIME_CHANGE_FEED"] {
            configuration.changeFeedEnabled = !["0", "false", "no"].contains(value.lowercased())
        }
        if let value = environment["REALTIME_PRESENCE_TTL_SECONDS"] {
            configuration.presenceTTLSeconds = try int(value, "REALTIME_PRESENCE_TTL_SECONDS", 3...3600)
        }
        if let value = environment["REALTIME_PRESENCE_RATE"] { configuration.presenceRate = try rate(value, "REALTIME_PRESENCE_RATE") }
        if let value = environment["REALTIME_USER_WRITE_RATE"] { configuration.userWriteRate = try rate(value, "REALTIME_USER_WRITE_RATE") }
        if let value = environment["REALTIME_USER_WRITE_BURST"] {
            configuration.userWriteBurst = try int(value, "REALTIME_USER_WRITE_BURST", 1...100_000)
        }
        if let value = environment["REALTIME_USER_POLL_RATE"] { configuration.userPollRate = try rate(value, "REALTIME_USER_POLL_RATE") }
        if let value = environment["REALTIME_USER_POLL_BURST"] {
            configuration.userPollBurst = try int(value, "REALTIME_USER_POLL_BURST", 1...100_000)
        }
        if let value = environment["REALTIME_USER_STREAM_RATE"] { configuration.userStreamRate = try rate(value, "REALTIME_USER_STREAM_RATE") }
        if let value = environment["REALTIME_USER_STREAM_BURST"] {
            configuration.userStreamBurst = try int(value, "REALTIME_USER_STREAM_BURST", 1...100_000)
        }
        if let value = environment["REALTIME_PRESENCE_BURST"] { configuration.presenceBurst = try int(value, "REALTIME_PRESENCE_BURST", 1...100_000) }
        if let value = environment["REALTIME_READY_MAX_LAG_SECONDS"] {
            configuration.readyMaxLagSeconds = try int(value, "REALTIME_READY_MAX_LAG_SECONDS", 1...3600)
        }
        if let value = environment["REALTIME_NODE_ID"], !value.isEmpty { configuration.nodeID = value }
        if let value = environment["REALTIME_TLS_CERT"], !value.isEmpty { configuration.tlsCertificatePath = value }
        if let value = environment["REALTIME_TLS_KEY"], !value.isEmpty { configuration.tlsKeyPath = value }
        if let value = environment["REALTIME_SHUTDOWN_SECONDS"] {
            configuration.shutdownSeconds = try int(value, "REALTIME_SHUTDOWN_SECONDS", 1...600)
        }
        if let value = environment["REALTIME_IDLE_TIMEOUT_SECONDS"] {
            configuration.idleTimeoutSeconds = try int(value, "REALTIME_IDLE_TIMEOUT_SECONDS", 1...3600)
        }
        if let value = environment["REALTIME_MAX_CONNECTIONS"] {
            configuration.maxConnections = try int(value, "REALTIME_MAX_CONNECTIONS", 0...10_000_000)
        }
        if let value = environment["REALTIME_MAX_CONNECTIONS_PER_IP"] {
            configuration.maxConnectionsPerAddress = try int(value, "REALTIME_MAX_CONNECTIONS_PER_IP", 0...10_000_000)
        }
        if let value = environment["REALTIME_SLO_DELAY_P95_MS"] {
            configuration.sloDelayP95Milliseconds = try int(value, "REALTIME_SLO_DELAY_P95_MS", 1...600_000)
        }
        if let value = environment["REALTIME_SLO_DISCONNECT_PERCENT"] {
            configuration.sloDisconnectPercent = try percent(value, "REALTIME_SLO_DISCONNECT_PERCENT")
        }
        return configuration
    }

    /// A rate, per second, from 0.01 to 10000.
    public static func rate(_ text: String, _ name: String) throws(ConfigurationError) -> Double {
        guard let value = Double(text), value >= 0.01, value <= 10_000 else {
            throw ConfigurationError("\(name) must be a number from 0.01 to 10000; got '\(text)'.")
        }
        return value
    }

    /// A percentage from 0.001 to 100.
    public static func percent(_ text: String, _ name: String) throws(ConfigurationError) -> Double {
        guard let value = Double(text), value >= 0.001, value <= 100 else {
            throw ConfigurationError("\(name) must be a number from 0.001 to 100; got '\(text)'.")
        }
        return value
    }

    public static func int(_ text: String, _ name: String, _ range: ClosedRange<Int>) throws(ConfigurationError) -> Int {
        guard let value = Int(text), range.contains(value) else {
            throw ConfigurationError("\(name) must be an integer from \(range.lowerBound) to \(range.upperBound); got '\(text)'.")
        }
        return value
    }

    public static func level(_ text: String, _ name: String) throws(ConfigurationError) -> Logger.Level {
        guard let level = Logger.Level(rawValue: text.lowercased()) else {
            throw ConfigurationError("\(name) must be one of \(Logger.Level.allCases.map(\.rawValue).joined(separator: ", ")); got '\(text)'.")
        }
        return level
    }
}

/// A setting that could not be understood.
public struct ConfigurationError: Error, CustomStringConvertible {
    public var description: String
    public init(_ description: String) { self.description = description }
}
