import Foundation
import Hummingbird
import HummingbirdTesting
import Logging
import NIOCore
import PostgresNIO
import Testing

@testable import Realtime

/// A server on its own fresh database, with helpers to make users, branches and tokens.
///
/// Each test gets a new database from the shared test cluster, so tests are independent and can run in parallel.
struct TestServer {
    static let secret = "test-secret-0123456789abcdefghijklmnopqrstuvwxyz"

    let endpoint: DatabaseEndpoint
    let tokens: TokenAuthority
    let configuration: Configuration
    let logger: Logger

    /// - Parameter changeFeed: run the relay, the tailer and the streams (only the tests of the feed need them: each
    ///   relay holds a replication slot and connections on the shared cluster).
    static func make(
        on database: DatabaseEndpoint? = nil,
        maxBodyBytes: Int = 256 * 1024,
        changeFeed: Bool = false,
        configure: (inout Configuration) -> Void = { _ in }
    ) async throws -> TestServer {
        var configuration = Configuration()
        configuration.changeFeedEnabled = changeFeed
        configuration.maxBodyBytes = maxBodyBytes
        configuration.databasePoolSize = 10
        configuration.migrationsDirectory = repositoryRoot + "/Migrations"
        configuration.port = 0
        // HummingbirdTesting's live client keeps one connection and cannot reconnect once the server closes it as idle:
        // tests that wait long between requests would fail. The idle timeout has tests of its own, which set it.
        configuration.idleTimeoutSeconds = 600
        // Tests send many requests as one user in a moment; the per-user limits have tests of their own, which set them.
        configuration.limitEveryUser(rate: 10_000, burst: 100_000)
        configure(&configuration)
        let endpoint: DatabaseEndpoint
        if let database { endpoint = database } else { endpoint = try await TestCluster.freshDatabase() }
        var logger = Logger(label: "test")
        // REALTIME_TEST_LOG_LEVEL=debug shows, among others, every service starting and finishing (ServiceGroup).
        logger.logLevel = ProcessInfo.processInfo.environment["REALTIME_TEST_LOG_LEVEL"].flatMap { Logger.Level(rawValue: $0) } ?? .warning
        logger[metadataKey: "test.database"] = "\(endpoint.database)"
        return TestServer(
            endpoint: endpoint,
            tokens: try await TokenAuthority(secret: secret),
            configuration: configuration,
            logger: logger
        )
    }

    static var repositoryRoot: String {
        URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()
            .deletingLastPathComponent().path
    }

    /// Runs `body` against the app's router, with migrations applied and the Postgres client running.
    func test<Value: Sendable>(_ body: @Sendable (Client) async throws -> Value) async throws -> Value {
        let app = try buildApplication(configuration: configuration, database: endpoint, tokens: tokens, logger: logger)
        return try await app.test(.router) { client in
            try await body(Client(client: client, tokens: tokens))
        }
    }

    /// Runs `body` on a live server bound to a free port, for tests that need real sockets and concurrency.
    func testLive<Value: Sendable>(_ body: @Sendable (Client) async throws -> Value) async throws -> Value {
        let app = try buildApplication(configuration: configuration, database: endpoint, tokens: tokens, logger: logger)
        return try await app.test(.live) { client in
            try await body(Client(client: client, tokens: tokens))
        }
    }

    /// A connection to the test database as its owner (a superuser), for checks that go around the API.
    func withOwnerConnection<Result: Sendable>(_ body: @Sendable (PostgresConnection) async throws -> Result) async throws -> Result {
        try await TestCluster.withConnection(to: endpoint, body)
    }

    /// A client that speaks JSON to the server with a chosen principal's token.
    struct Client: Sendable {
        let client: any TestClientProtocol
        let tokens: TokenAuthority

        /// The base URL of a live server (`testLive`).
        var baseURL: String { "http://127.0.0.1:\(client.port ?? 0)" }

        /// A response with its body as text and, when it is JSON, parsed.
        struct Reply: Sendable {
            let status: HTTPResponse.Status
            let headers: HTTPFields
            let text: String

            var json: Any? { try? JSONSerialization.jsonObject(with: Data(text.utf8), options: [.fragmentsAllowed]) }
            var object: [String: Any] { json as? [String: Any] ?? [:] }
            var array: [[String: Any]] { json as? [[String: Any]] ?? [] }
            var errorCode: String? { (object["error"] as? [String: Any])?["code"] as? String }
            func string(_ key: String) -> String? { object[key] as? String }
        }

        func token(for principal: Principal) async throws -> String {
            switch principal {
            case .user(let id): try await tokens.issue(subject: id.uuidString.lowercased(), role: .authenticated, lifetime: 600)
            case .service(let id): try await tokens.issue(subject: id?.uuidString.lowercased() ?? "service", role: .serviceRole, lifetime: 600)
            }
        }

        @discardableResult
        func send(
            _ method: HTTPRequest.Method,
            _ path: String,
            as principal: Principal?,
            json: String? = nil,
            headers extra: HTTPFields = [:]
        ) async throws -> Reply {
            var headers = extra
            if let principal { headers[.authorization] = "Bearer \(try await token(for: principal))" }
            if json != nil, headers[.contentType] == nil { headers[.contentType] = "application/json" }
            let response = try await client.execute(
                uri: path,
                method: method,
                headers: headers,
                body: json.map { ByteBuffer(string: $0) }
            )
            return Reply(status: response.status, headers: response.headers, text: String(buffer: response.body))
        }
    }
}

/// A branch with one user of each role, made through the API as the service role.
struct Team: Sendable {
    let branch: UUID
    let admin: UUID
    let editor: UUID
    let viewer: UUID
    /// A user who is a member of no branch.
    let outsider: UUID

    static let service = Principal.service(actingUser: nil)

    static func make(_ client: TestServer.Client, name: String = "Branch") async throws -> Team {
        let branch = UUID()
        let reply = try await client.send(.post, "/rest/v1/branches", as: service, json: #"{"id":"\#(branch)","name":"\#(name)"}"#)
        try #require(reply.status == .created, "branch: \(reply.text)")
        var users: [UUID] = []
        for role in ["admin", "editor", "viewer", "none"] {
            let user = UUID()
            let created = try await client.send(.post, "/rest/v1/users", as: service, json: #"{"id":"\#(user)","display_name":"\#(role)"}"#)
            try #require(created.status == .created, "user: \(created.text)")
            if role != "none" {
                let member = try await client.send(
                    .put,
                    "/rest/v1/branches/\(branch)/members/\(user)",
                    as: service,
                    json: #"{"role":"\#(role)"}"#
                )
                try #require(member.status == .created, "member: \(member.text)")
            }
            users.append(user)
        }
        return Team(branch: branch, admin: users[0], editor: users[1], viewer: users[2], outsider: users[3])
    }

    /// Creates a plan as the editor and returns its id.
    func makePlan(_ client: TestServer.Client, title: String = "Week") async throws -> UUID {
        let id = UUID()
        let reply = try await client.send(
            .post,
            "/rest/v1/plans",
            as: .user(editor),
            json: #"{"id":"\#(id)","branch_id":"\#(branch)","title":"\#(title)","period_start":"2026-11-30","period_end":"2026-12-06"}"#
        )
        try #require(reply.status == .created, "plan: \(reply.text)")
        return id
    }

    /// Creates a task in `plan` as the editor and returns its id.
    func makeTask(_ client: TestServer.Client, plan: UUID, title: String = "Shift") async throws -> UUID {
        let id = UUID()
        let reply = try await client.send(
            .post,
            "/rest/v1/tasks",
            as: .user(editor),
            json: #"{"id":"\#(id)","plan_id":"\#(plan)","title":"\#(title)","starts_at":"2026-11-30T09:00:00Z","ends_at":"2026-11-30T11:00:00Z"}"#
        )
        try #require(reply.status == .created, "task: \(reply.text)")
        return id
    }
}

extension Configuration {
    /// Sets every per-user budget (writes, polls, stream opens) to the same rate and burst.
    mutating func limitEveryUser(rate: Double, burst: Int) {
        (userWriteRate, userPollRate, userStreamRate) = (rate, rate, rate)
        (userWriteBurst, userPollBurst, userStreamBurst) = (burst, burst, burst)
    }
}
