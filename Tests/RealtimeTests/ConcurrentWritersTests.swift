import Foundation
import Hummingbird
import HummingbirdTesting
import Logging
import NIOCore
import PostgresNIO
import Testing

@testable import Realtime

/// Many clients writing at once, on a live server: each writer has its own TCP connection (the test client's one
/// connection would serialise the requests), and all connections are open before the first request goes out.
@Suite struct ConcurrentWritersTests {
    typealias Reply = TestServer.Client.Reply

    static let writers = 20
    static let statuses = TableSchema.taskStatuses
    static let logger = Logger(label: "concurrent-writers-tests")

    /// The status and title writer `index` sets: both come from the same write, so the final row shows which writer won.
    static func write(_ index: Int) -> (status: String, title: String) {
        (statuses[index % statuses.count], "writer \(index)")
    }

    @Test func twentyWritersOnOneTaskLeaveOneConsistentRowAndAHistoryChain() async throws {
        let server = try await TestServer.make()
        try await server.testLive { client in
            let team = try await Team.make(client)
            let plan = try await team.makePlan(client)
            let task = try await team.makeTask(client, plan: plan)
            let port = try #require(client.client.port)
            let editorToken = try await client.token(for: .user(team.editor))
            let adminToken = try await client.token(for: .user(team.admin))

            // Editors and admins, all at once, each on its own connection.
            let replies = try await Self.concurrently(port: port) { index in
                let (status, title) = Self.write(index)
                return Self.Request(
                    method: .patch,
                    path: "/rest/v1/tasks/\(task)",
                    token: index.isMultiple(of: 2) ? editorToken : adminToken,
                    json: #"{"status":"\#(status)","title":"\#(title)"}"#
                )
            }
            for (index, reply) in replies.enumerated() {
                #expect(reply.status == .ok, "writer \(index): \(reply.status.code) \(reply.text)")
                // Each writer gets back the row as its own write left it.
                let (status, title) = Self.write(index)
                #expect(reply.string("title") == title && reply.string("status") == status, "writer \(index): \(reply.text)")
            }

            // One consistent row: title and status from the same writer.
            let final = try await client.send(.get, "/rest/v1/tasks/\(task)", as: .user(team.viewer))
            #expect(final.status == .ok, "\(final.text)")
            let finalTitle = try #require(final.string("title"))
            let finalStatus = try #require(final.string("status"))
            let winner = try #require(
                finalTitle.hasPrefix("writer ") ? Int(finalTitle.dropFirst("writer ".count)) : nil,
                "the title is no writer's: \(final.text)"
            )
            #expect((0..<Self.writers).contains(winner))
            #expect(finalStatus == Self.write(winner).status, "title from writer \(winner) but status \(finalStatus): \(final.text)")

            // The history, as the API lists it and as the database holds it.
            let listed = try await client.send(
                .get,
                "/rest/v1/status_history?task_id=eq.\(task)&order=changed_at.asc&limit=1000",
                as: .user(team.viewer)
            )
            #expect(listed.status == .ok, "\(listed.text)")
            let viaAPI = listed.array.map { Transition(from: $0["from_status"] as? String, to: $0["to_status"] as? String ?? "?") }
            let viaSQL = try await server.withOwnerConnection { connection in
                var rows: [Transition] = []
                let query: PostgresQuery =
                    "SELECT from_status, to_status FROM status_history WHERE task_id = \(task) ORDER BY changed_at, id"
                for try await (from, to) in try await connection.query(query, logger: Self.logger).decode((String?, String).self) {
                    rows.append(Transition(from: from, to: to))
                }
                return rows
            }
            #expect(viaAPI == viaSQL, "the API lists \(viaAPI), the database holds \(viaSQL)")

            let someoneChangedStatus = (0..<Self.writers).contains { Self.write($0).status != "taken" }
            for (source, history) in [("API", viaAPI), ("SQL", viaSQL)] {
                #expect(history.count <= Self.writers + 1, "\(source): \(history.count) history rows for \(Self.writers) writes")
                if someoneChangedStatus { #expect(history.count >= 2, "\(source): no status change recorded: \(history)") }
                // Whatever the order the writes ran in, the rows must be able to form the chain...
                #expect(
                    Transition.canFormChain(history, endingAt: finalStatus),
                    "\(source): the history rows cannot form one chain ending at \(finalStatus): \(history)"
                )
                // ...and ordered by changed_at they must BE that chain.
                let problems = Transition.chainProblems(history, endingAt: finalStatus)
                #expect(problems.isEmpty, "\(source): history ordered by changed_at is no chain: \(problems); history: \(history)")
            }
        }
    }

    @Test func twentyConcurrentPostsWithOneIdempotencyKeyCreateOneRow() async throws {
        let server = try await TestServer.make()
        try await server.testLive { client in
            let team = try await Team.make(client)
            let port = try #require(client.client.port)
            let token = try await client.token(for: .user(team.editor))
            let key = "plan-\(UUID())"
            // No id in the body: if two requests got through, two plans would be created.
            let body = #"{"branch_id":"\#(team.branch)","title":"Idempotent plan","period_start":"2026-12-07","period_end":"2026-12-13"}"#

            let replies = try await Self.concurrently(port: port) { _ in
                Self.Request(method: .post, path: "/rest/v1/plans", token: token, json: body, idempotencyKey: key)
            }
            for (index, reply) in replies.enumerated() {
                #expect(reply.status == .created, "request \(index): \(reply.status.code) \(reply.text)")
            }
            let bodies = Set(replies.map(\.text))
            #expect(bodies.count == 1, "different answers to one key: \(bodies)")
            let replayed = replies.filter { $0.headers[Idempotency.replayedHeader] == "true" }.count
            #expect(replayed == Self.writers - 1, "\(replayed) replays of \(Self.writers) requests")

            // The same key with another body is refused, and writes nothing.
            let other = body.replacingOccurrences(of: "Idempotent plan", with: "Another plan")
            let reused = try await Self.concurrently(port: port, count: 1) { _ in
                Self.Request(method: .post, path: "/rest/v1/plans", token: token, json: other, idempotencyKey: key)
            }[0]
            #expect(reused.status == .conflict && reused.errorCode == "idempotency_key_reused", "\(reused.status.code) \(reused.text)")

            let (plans, keys) = try await server.withOwnerConnection { connection in
                let plans = try await Self.count("SELECT count(*) FROM plan WHERE branch_id = \(team.branch)", on: connection)
                let keys = try await Self.count("SELECT count(*) FROM realtime.idempotency_key WHERE key = \(key)", on: connection)
                return (plans, keys)
            }
            #expect(plans == 1, "\(plans) plans were created")
            #expect(keys == 1)
            let listed = try await client.send(.get, "/rest/v1/plans?branch_id=eq.\(team.branch)", as: .user(team.viewer))
            #expect(listed.array.map { $0["title"] as? String } == ["Idempotent plan"], "\(listed.text)")
        }
    }

    /// The smallest interleaving of two writers, made deterministic with two database connections that run as the
    /// server does (one transaction per request, as the request role): the first writer's transaction begins, the
    /// second writer changes the status and commits, then the first writer changes it. The history, listed by
    /// changed_at, must show the changes in the order they happened.
    @Test func aChangeMadeLaterIsListedLaterEvenIfItsTransactionBeganEarlier() async throws {
        let server = try await TestServer.make()
        try await server.test { client in
            let team = try await Team.make(client)
            let plan = try await team.makePlan(client)
            let task = try await team.makeTask(client, plan: plan)
            try await server.withOwnerConnection { first in
                try await server.withOwnerConnection { second in
                    try await Self.begin(as: team.editor, on: first)
                    try await Self.begin(as: team.admin, on: second)
                    try await second.query("UPDATE task SET status = 'done' WHERE id = \(task)", logger: Self.logger)
                    try await second.query("COMMIT", logger: Self.logger)
                    try await first.query("UPDATE task SET status = 'posted' WHERE id = \(task)", logger: Self.logger)
                    try await first.query("COMMIT", logger: Self.logger)
                }
            }
            let listed = try await client.send(
                .get,
                "/rest/v1/status_history?task_id=eq.\(task)&order=changed_at.asc",
                as: .user(team.viewer)
            )
            let history = listed.array.map { Transition(from: $0["from_status"] as? String, to: $0["to_status"] as? String ?? "?") }
            #expect(
                history == [Transition(from: nil, to: "taken"), Transition(from: "taken", to: "done"), Transition(from: "done", to: "posted")],
                "history by changed_at: \(history)"
            )
            #expect(Transition.chainProblems(history, endingAt: "posted").isEmpty, "\(Transition.chainProblems(history, endingAt: "posted"))")
        }
    }

    /// Begins a transaction as the server does for a request of `user`.
    static func begin(as user: UUID, on connection: PostgresConnection) async throws {
        try await connection.query("BEGIN", logger: logger)
        try await connection.query(
            "SELECT set_config('role', 'realtime_authenticated', true), set_config('realtime.user_id', \(user.uuidString.lowercased()), true)",
            logger: logger
        )
    }

    // MARK: - Status history as a chain of transitions

    struct Transition: Equatable, Sendable, CustomStringConvertible {
        var from: String?
        var to: String

        var description: String { "\(from ?? "null")→\(to)" }

        /// What is wrong with `history`, in its order, as a replay of the task's status: the insert (null → taken)
        /// first, then each row starting where the previous one ended, no row without a change, and the last one
        /// ending at the task's status.
        static func chainProblems(_ history: [Transition], endingAt final: String) -> [String] {
            guard let first = history.first else { return ["no history at all"] }
            var problems: [String] = []
            if first != Transition(from: nil, to: "taken") { problems.append("row 0 is \(first), not null→taken") }
            for (index, row) in history.enumerated() {
                if row.from == row.to { problems.append("row \(index) (\(row)) changes nothing") }
                if index > 0, row.from != history[index - 1].to {
                    problems.append("row \(index) (\(row)) does not start where row \(index - 1) (\(history[index - 1])) ended")
                }
            }
            if history.last?.to != final { problems.append("the last row ends at \(history.last!.to), the task is \(final)") }
            return problems
        }

        /// Whether the rows, in some order, form such a chain: one null → taken row, no row without a change, and the
        /// remaining rows an Euler path from `taken` to `final` (each status entered as often as left, but for the ends).
        static func canFormChain(_ history: [Transition], endingAt final: String) -> Bool {
            let starts = history.filter { $0.from == nil }
            guard starts == [Transition(from: nil, to: "taken")] else { return false }
            let changes = history.filter { $0.from != nil }
            guard changes.allSatisfy({ $0.from != $0.to }) else { return false }
            var balance: [String: Int] = [:]
            for change in changes {
                balance[change.from!, default: 0] += 1
                balance[change.to, default: 0] -= 1
            }
            balance["taken", default: 0] -= 1
            balance[final, default: 0] += 1
            guard balance.values.allSatisfy({ $0 == 0 }) else { return false }
            // Every row must be reachable from `taken`.
            var reached: Set<String> = ["taken"]
            var grew = true
            while grew {
                grew = false
                for change in changes where reached.contains(change.from!) && !reached.contains(change.to) {
                    reached.insert(change.to)
                    grew = true
                }
            }
            return changes.allSatisfy { reached.contains($0.from!) }
        }
    }

    // MARK: - Many connections at once

    struct Request: Sendable {
        var method: HTTPRequest.Method
        var path: String
        var token: String
        var json: String
        var idempotencyKey: String? = nil
    }

    /// Opens `count` connections to the live server, waits until all are open, then sends request `index` on
    /// connection `index`, all at once; returns the replies in index order.
    static func concurrently(
        port: Int,
        count: Int = writers,
        _ request: @escaping @Sendable (Int) -> Request
    ) async throws -> [Reply] {
        let clients = (0..<count).map { _ in TestClient(host: "localhost", port: port, configuration: .init(timeout: .seconds(30))) }
        for client in clients { client.connect() }
        do {
            for client in clients { _ = try await client.channelPromise.futureResult.get() }
            let replies = try await withThrowingTaskGroup(of: (Int, Reply).self) { group in
                for (index, client) in clients.enumerated() {
                    group.addTask {
                        let request = request(index)
                        var headers = HTTPFields()
                        headers[.authorization] = "Bearer \(request.token)"
                        headers[.contentType] = "application/json"
                        if let key = request.idempotencyKey { headers[Idempotency.header] = key }
                        let response = try await client.execute(
                            TestClient.Request(
                                request.path,
                                method: request.method,
                                authority: "localhost",
                                headers: headers,
                                body: ByteBuffer(string: request.json)
                            )
                        )
                        let text = response.body.map { String(buffer: $0) } ?? ""
                        return (index, Reply(status: response.status, headers: response.headers, text: text))
                    }
                }
                var replies = [Reply?](repeating: nil, count: count)
                for try await (index, reply) in group { replies[index] = reply }
                return replies.map { $0! }
            }
            for client in clients { try? await client.shutdown() }
            return replies
        } catch {
            for client in clients { try? await client.shutdown() }
            throw error
        }
    }

    static func count(_ query: PostgresQuery, on connection: PostgresConnection) async throws -> Int {
        let rows = try await connection.query(query, logger: logger).collect()
        return try #require(rows.first).decode(Int.self)
    }
}
