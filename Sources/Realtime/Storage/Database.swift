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
    ///
    /// `rows` are rows the request will need the branch of (the row it changes, the rows a new row references): they are
    /// located in the transaction's first statement, with the caller's memberships (``RequestTransaction/branch(of:)``).
    public func withRequestTransaction<Result: Sendable>(
        as principal: Principal,
        repeatableRead: Bool = false,
        locating rows: [RowLocation] = [],
        _ body: (RequestTransaction) async throws -> Result
    ) async throws -> Result {
        var attempt = 1
        while true {
            do {
                return try await transactionOnce(as: principal, repeatableRead: repeatableRead, locating: rows, body)
            } catch let error as PSQLError where attempt < 3 && ["40001", "40P01"].contains(error.sqlState) {
                attempt += 1
                logger.debug("retrying a transaction after \(error.sqlState ?? "")", metadata: ["attempt": "\(attempt)"])
            }
        }
    }

    private func transactionOnce<Result: Sendable>(
        as principal: Principal,
        repeatableRead: Bool,
        locating rows: [RowLocation],
        _ body: (RequestTransaction) async throws -> Result
    ) async throws -> Result {
        try await client.withConnection { connection in
            try await connection.queryIfOpen(repeatableRead ? "BEGIN ISOLATION LEVEL REPEATABLE READ" : "BEGIN", logger: logger)
            do {
                let transaction = try await Self.begin(as: principal, locating: rows, on: connection, logger: logger)
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
    /// and reads their memberships and the branch of each row in `rows`, for the Swift policy. It is planned as the
    /// connecting role, whose policy reads every row: the Swift policy then decides what the caller may see of them,
    /// and every later statement runs as the caller, under row-level security.
    private static func begin(
        as principal: Principal,
        locating rows: [RowLocation],
        on connection: PostgresConnection,
        logger: Logger
    ) async throws -> RequestTransaction {
        var builder = SQLBuilder()
        let role = builder.bind(principal.isService ? "realtime_service" : "realtime_authenticated")
        let userID = builder.bind(principal.userID?.uuidString.lowercased() ?? "")
        let key = builder.bind(principal.key)
        let located = rows.map { ", (SELECT branch_id FROM \(identifier($0.table)) WHERE id = \(builder.bind($0.id)))" }
        let sql = """
            SELECT (SELECT coalesce(json_object_agg(branch_id, role), '{}')::text FROM branch_member
                    WHERE user_id = nullif(\(userID), '')::uuid),
                   set_config('role', \(role), true), set_config('realtime.user_id', \(userID), true),
                   set_config('realtime.principal', \(key), true)\(located.joined())
            """
        guard let row = try await connection.rowsIfOpen(builder.query(sql), logger: logger).first else {
            throw APIError.notReady("The database did not answer the start of the transaction.")
        }
        var cells = row.makeIterator()
        let memberships = try Self.memberships(fromJSON: cells.next()?.decode(String?.self) ?? "{}", of: principal)
        for _ in 0..<3 { _ = cells.next() }
        var branches: [RowLocation: UUID?] = [:]
        for location in rows { branches[location] = try cells.next()?.decode(UUID?.self) ?? nil }
        return RequestTransaction(connection: connection, principal: principal, memberships: memberships, located: branches, logger: logger)
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
    /// The branch of each row located as the transaction began (nil: no such row).
    private let located: [RowLocation: UUID?]
    let logger: Logger

    init(connection: PostgresConnection, principal: Principal, memberships: Memberships, located: [RowLocation: UUID?], logger: Logger) {
        self.connection = connection
        self.principal = principal
        self.prefetchedMemberships = memberships
        self.located = located
        self.logger = logger
    }

    /// The branch of a row (nil when there is none), located as the transaction began if it was asked for, else read
    /// now as the caller. The caller's Swift policy decides whether they may see it.
    func branch(of row: RowLocation) async throws -> UUID? {
        if let branch = located[row] { return branch }
        var builder = SQLBuilder()
        let id = builder.bind(row.id)
        let rows = try await query(builder.query("SELECT branch_id FROM \(identifier(row.table)) WHERE id = \(id)"))
        return try rows.first?.decode(UUID.self)
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

/// A row by table and id, whose branch a request needs.
public struct RowLocation: Hashable, Sendable {
    public var table: String
    public var id: UUID

    public init(table: String, id: UUID) {
        self.table = table
        self.id = id
    }
}

extension PSQLError {
    /// The SQLSTATE code the server sent, e.g. `23505`.
    var sqlState: String? { serverInfo?[.sqlState] }
}
