import Foundation
import Logging
import PostgresNIO

/// Checks, before the server starts, that the database answers, so that a wrong URL or password ends the start with
/// a clear message instead of a pool that retries forever.
public enum DatabaseProbe {
    /// The database did not answer within the time allowed.
    public struct Unreachable: Error, CustomStringConvertible {
        public var endpoint: DatabaseEndpoint
        public var reason: String
        public var description: String { "Cannot reach PostgreSQL at \(endpoint): \(reason)" }
    }

    /// The database answers but cannot serve this server as configured.
    public struct Unsuitable: Error, CustomStringConvertible {
        public var endpoint: DatabaseEndpoint
        public var reason: String
        public var description: String { "PostgreSQL at \(endpoint) cannot be used: \(reason)" }
    }

    /// Connects and runs `SELECT 1`, retrying with backoff for up to `timeout`; a refused login fails at once.
    public static func waitUntilReachable(_ endpoint: DatabaseEndpoint, timeout: Duration = .seconds(30), logger: Logger) async throws {
        let deadline = ContinuousClock.now + timeout
        var delay = Duration.milliseconds(100)
        var attempt = 0
        while true {
            attempt += 1
            do {
                try await probe(endpoint, attempt: attempt, logger: logger)
                return
            } catch let error as PSQLError {
                let reason = error.serverInfo?[.message] ?? "\(error.code)"
                // 28xxx: authentication; 3D000: no such database. Waiting will not help.
                if let state = error.serverInfo?[.sqlState], state.hasPrefix("28") || state == "3D000" {
                    throw Unreachable(endpoint: endpoint, reason: reason)
                }
                if ContinuousClock.now + delay > deadline { throw Unreachable(endpoint: endpoint, reason: reason) }
            } catch {
                if ContinuousClock.now + delay > deadline { throw Unreachable(endpoint: endpoint, reason: "\(error)") }
            }
            try await Task.sleep(for: delay)
            delay = min(delay * 2, .seconds(2))
        }
    }

    private static func probe(_ endpoint: DatabaseEndpoint, attempt: Int, logger: Logger) async throws {
        let connection = try await PostgresConnection.connect(configuration: connectionConfiguration(endpoint), id: attempt, logger: logger)
        do {
            try await connection.query("SELECT 1", logger: logger)
        } catch {
            try? await connection.close()
            throw error
        }
        try? await connection.close()
    }

    /// The change feed reads the WAL through logical decoding: refuse to start on a server without it.
    public static func requireLogicalDecoding(_ endpoint: DatabaseEndpoint, logger: Logger) async throws {
        let connection = try await PostgresConnection.connect(configuration: connectionConfiguration(endpoint), id: 0, logger: logger)
        var level = ""
        do {
            for try await value in try await connection.query("SELECT current_setting('wal_level')", logger: logger).decode(String.self) {
                level = value
            }
        } catch {
            try? await connection.close()
            throw error
        }
        try? await connection.close()
        guard level == "logical" else {
            throw Unsuitable(
                endpoint: endpoint,
                reason: "wal_level is '\(level)', but the change feed needs logical decoding: set wal_level = logical "
                    + "(ALTER SYSTEM SET wal_level = logical, or in postgresql.conf) and restart PostgreSQL"
            )
        }
    }

    /// The configuration of a single connection (outside the pool) to `endpoint`.
    static func connectionConfiguration(_ endpoint: DatabaseEndpoint) throws -> PostgresConnection.Configuration {
        let tls: PostgresConnection.Configuration.TLS =
            switch endpoint.tls {
            case .disable: .disable
            case .prefer: .prefer(try .init(configuration: .makeClientConfiguration()))
            case .require: .require(try .init(configuration: .makeClientConfiguration()))
            }
        var configuration = PostgresConnection.Configuration(
            host: endpoint.host,
            port: endpoint.port,
            username: endpoint.username,
            password: endpoint.password,
            database: endpoint.database,
            tls: tls
        )
        configuration.options.additionalStartupParameters = [("TimeZone", "UTC"), ("application_name", "realtime")]
        return configuration
    }
}
