import Foundation
import Logging

/// Every setting of the server in one place, with defaults that work with no setup.
///
/// Each setting's flag, environment variable, range and help are in ``Setting/all``, the one table of them; the
/// defaults are the values here.
public struct Configuration: Sendable {
    /// The address to listen on.
    public var host = "127.0.0.1"
    /// The port to listen on (0: any free port).
    public var port = 8080
    public var logLevel: Logger.Level = .info
    /// An external PostgreSQL; nil runs the embedded one.
    public var databaseURL: String?
    /// The embedded cluster, its password and the generated JWT secret.
    public var dataDirectory = ".realtime"
    /// Whether the first embedded start seeds demo data.
    public var seedDemo = true
    /// The HS256 secret; the embedded default generates one and keeps it in the data dir.
    public var jwtSecret: String?
    public var maxBodyBytes = 256 * 1024
    public var databasePoolSize = 20
    /// The numbered SQL files; by default found next to the checkout or the executable.
    public var migrationsDirectory: String?
    /// A comment line on idle streams this often.
    public var keepaliveSeconds = 15
    /// Frames a stream may have unsent before it is cut off as slow.
    public var subscriberBufferLimit = 1024
    /// How long the event log keeps events for resuming.
    public var eventRetentionHours = 24
    /// Whether this node takes part in the relay election.
    public var runsRelay = true
    /// Whether the change feed runs; without it, REST only (no relay, tailer or streams).
    public var changeFeedEnabled = true

    /// How long a presence entry lives without a heartbeat; clients heartbeat every third of it.
    public var presenceTTLSeconds = 30
    /// Heartbeats (and, separately, broadcasts) a user may send per second to one node, on average.
    public var presenceRate = 5.0
    public var presenceBurst = 10
    /// REST writes (POST, PUT, PATCH, DELETE) a user may make per second to one node, on average; the service role is
    /// not limited.
    public var userWriteRate = 20.0
    public var userWriteBurst = 100
    /// Polls of `/realtime/v1/changes` a user may make per second.
    public var userPollRate = 5.0
    public var userPollBurst = 30
    /// Streams a user may open per second.
    public var userStreamRate = 2.0
    public var userStreamBurst = 30
    /// `/readyz` answers 503 when this node's change feed has not read the log, no relay has streamed the slot, or the
    /// relay has not confirmed waiting WAL for this long.
    public var readyMaxLagSeconds = 30
    /// This node's name in presence entries; by default host name, pid and a random part.
    public var nodeID = Configuration.defaultNodeID()

    /// A PEM certificate chain; with `tlsKeyPath`, the server speaks HTTPS and offers HTTP/2 and HTTP/1.1 by ALPN.
    public var tlsCertificatePath: String?
    public var tlsKeyPath: String?
    /// The most a graceful shutdown (SIGTERM) may take before whatever is left is cancelled.
    public var shutdownSeconds = 10
    /// A connection with no request in progress is closed after this long; a request's head must arrive within it (a
    /// client sending headers a byte at a time is cut off). Streams are requests in progress: they stay open.
    public var idleTimeoutSeconds = 30
    /// The most connections (HTTP/2 streams count each) at once; beyond it, `503 server_busy`. 0 for no cap.
    public var maxConnections = 20_000
    /// The most at once from one IP address; beyond it, `429 too_many_connections`. 0 for no cap (behind a load
    /// balancer, where every client has its address).
    public var maxConnectionsPerAddress = 1000
    /// The delay objective (p95, commit to frame written, over 10 minutes) at or above which `GET /realtime/v1/slo`
    /// says `breached`.
    public var sloDelayP95Milliseconds = 1000
    /// The share of streams ended abnormally (over 10 minutes) at or above which the disconnect objective is breached.
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
}

/// A setting that could not be understood.
public struct ConfigurationError: Error, CustomStringConvertible {
    public var description: String
    public init(_ description: String) { self.description = description }
}
