import Foundation
import Logging
import NIOCore
import PostgresNIO

/// The server's access to PostgreSQL: a pool of connections, and transactions that run as the caller.
public struct Database: Sendable {
    public let client: PostgresClient
    let logger: Logger

    public init(endpoint: DatabaseEndpoint, poolSize: Int, logger: Logger) {
        var configuration = PostgresClient.Configuration(
            host: endpoint.host,
            port: endpoint.port,
            username: endpoint.username,
            password: endpoint.password,
            database: endpoint.database,
            tls: Self.tls(endpoint.tls)
        )
        configuration.options.maximumConnections = poolSize
        configuration.options.additionalStartupParameters = [("TimeZone", "UTC"), ("application_name", "realtime")]
        self.client = PostgresClient(configuration: configuration, backgroundLogger: logger)
        self.logger = logger
    }

    private static func tls(_ mode: DatabaseEndpoint.TLSMode) -> PostgresClient.Configuration.TLS {
        switch mode {
        case .disable: .disable
        case .prefer: .prefer(.makeClientConfiguration())
        case .require: .require(.makeClientConfiguration())
        }
    }

    /// Runs `body` in one transaction as the request role of `principal`, so that row-level security applies to every
    /// statement in it, with `realtime.user_id` set for the policies and the stamping triggers.
    ///
    /// A serialization failure or deadlock is retried (up to three attempts in all); any other error rolls back.
    /// (A REST write of a row takes a shorter way: ``write(as:locating:idempotency:notFound:_:)``.)
    public func withRequestTransaction<Result: Sendable>(
        as principal: Principal,
        repeatableRead: Bool = false,
        _ body: (RequestTransaction) async throws -> Result
    ) async throws -> Result {
        var attempt = 1
        while true {
            do {
                return try await transactionOnce(as: principal, repeatableRead: repeatableRead, body)
            } catch let error as PSQLError where attempt < 3 && ["40001", "40P01"].contains(error.sqlState) {
                attempt += 1
                logger.debug("retrying a transaction after \(error.sqlState ?? "")", metadata: ["attempt": "\(attempt)"])
            }
        }
    }

    private func transactionOnce<Result: Sendable>(
        as principal: Principal,
        repeatableRead: Bool,
        _ body: (RequestTransaction) async throws -> Result
    ) async throws -> Result {
        try await client.withConnection { connection in
            try await connection.queryIfOpen(repeatableRead ? "BEGIN ISOLATION LEVEL REPEATABLE READ" : "BEGIN", logger: logger)
            do {
                let transaction = try await Self.begin(as: principal, on: connection, logger: logger)
                let result = try await body(transaction)
                try await connection.queryIfOpen("COMMIT", logger: logger)
                return result
            } catch {
                // A connection that closed has nothing left to roll back.
                if connection.isClosed { throw error }
                do {
                    try await connection.queryIfOpen("ROLLBACK", logger: logger)
                } catch {
                    logger.warning("rollback failed; closing the connection", metadata: ["error": "\(String(reflecting: error))"])
                    connection.close().whenComplete { _ in }
                }
                throw error
            }
        }
    }

    /// The first statement of a request transaction, in one round trip: it sets the caller (role, user id, principal)
    /// and reads their memberships, for the Swift policy; every later statement runs as the caller, under row-level
    /// security.
    private static func begin(
        as principal: Principal,
        on connection: PostgresConnection,
        logger: Logger
    ) async throws -> RequestTransaction {
        var builder = SQLBuilder()
        let role = builder.bind(principal.databaseRole)
        let userID = builder.bind(principal.userIDSetting)
        let key = builder.bind(principal.key)
        let sql = """
            SELECT (SELECT coalesce(json_object_agg(branch_id, role), '{}')::text FROM branch_member
                    WHERE user_id = nullif(\(userID), '')::uuid),
                   set_config('role', \(role), true), set_config('realtime.user_id', \(userID), true),
                   set_config('realtime.principal', \(key), true)
            """
        guard let row = try await connection.rowsIfOpen(builder.query(sql), logger: logger).first else {
            throw APIError.notReady("The database did not answer the start of the transaction.")
        }
        let memberships = try Self.memberships(fromJSON: row.decode((String?, String, String, String).self).0 ?? "{}", of: principal)
        return RequestTransaction(connection: connection, principal: principal, memberships: memberships, logger: logger)
    }

    /// Memberships from `{"<branch id>": "<role>", …}`; none for the service role.
    static func memberships(fromJSON text: String, of principal: Principal) throws -> Memberships {
        guard case .user = principal else { return Memberships() }
        let object = try JSONDecoder().decode([String: String].self, from: Data(text.utf8))
        var roles: [UUID: MemberRole] = [:]
        for (branch, role) in object {
            if let branch = UUID(uuidString: branch), let role = MemberRole(rawValue: role) { roles[branch] = role }
        }
        return Memberships(roles)
    }

    /// Whether the database answers and every migration file is applied.
    public func readiness(migrations: [MigrationFile]) async -> String? {
        do {
            let applied = try await Migrator.appliedVersions(client: client, logger: logger)
            let missing = migrations.filter { applied[$0.version] == nil }
            return missing.isEmpty ? nil : "\(missing.count) migration(s) not applied yet"
        } catch {
            return "the database is not reachable"
        }
    }
}

/// One request's transaction, running as the caller's role.
public struct RequestTransaction: Sendable {
    public let connection: PostgresConnection
    public let principal: Principal
    private let prefetchedMemberships: Memberships
    let logger: Logger

    init(connection: PostgresConnection, principal: Principal, memberships: Memberships, logger: Logger) {
        self.connection = connection
        self.principal = principal
        self.prefetchedMemberships = memberships
        self.logger = logger
    }

    /// Runs a statement and returns its rows.
    @discardableResult
    public func query(_ query: PostgresQuery) async throws -> [PostgresRow] {
        try await connection.rowsIfOpen(query, logger: logger)
    }

    /// Runs a statement that returns one text column and collects its values.
    public func texts(_ query: PostgresQuery) async throws -> [String] {
        try await connection.rowsIfOpen(query, logger: logger).map { try $0.decode(String.self) }
    }

    /// The caller's branch memberships as the transaction began (empty for the service role, which needs none).
    public func memberships() -> Memberships { prefetchedMemberships }
}

extension PSQLError {
    /// The SQLSTATE code the server sent, e.g. `23505`.
    var sqlState: String? { serverInfo?[.sqlState] }
}

extension Principal {
    /// The database role a request of this principal runs as.
    var databaseRole: String { isService ? "realtime_service" : "realtime_authenticated" }
    /// The user id as `realtime.user_id` holds it: empty for the service role acting as nobody.
    var userIDSetting: String { userID?.uuidString.lowercased() ?? "" }
}
