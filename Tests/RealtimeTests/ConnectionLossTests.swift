import Foundation
import HTTPTypes
import Hummingbird
import Logging
import PostgresNIO
import Testing

@testable import Realtime

/// A database connection that dies under a running request: the request fails at once with 503, its pooled connection is
/// given back, and the pool (and so the server) still shuts down.
///
/// PostgresNIO never answers a statement written to a connection whose channel has already closed: without a guard the
/// request would wait forever, keep its connection leased, and hang the pool's shutdown. This is what hung the fault
/// tests when they killed every connection of a server.
@Suite("Connection loss", .timeLimit(.minutes(2)))
struct ConnectionLossTests {
    @Test func aStatementAfterTheConnectionWasKilledFailsInsteadOfWaitingForever() async throws {
        let server = try await TestServer.make()
        try await server.test { _ in  // applies the migrations
            let database = Database(endpoint: server.endpoint, poolSize: 2, logger: server.logger)
            // Not awaited at the end: were the lease never given back, the pool's shutdown would hang the test.
            let pool = Task { await database.client.run() }
            defer { pool.cancel() }

            let outcome = try await bounded("the statement after the kill fails", seconds: 20) {
                do {
                    try await database.withRequestTransaction(as: .service(actingUser: nil)) { transaction in
                        let pid = try await transaction.query("SELECT pg_backend_pid()")[0].decode(Int32.self)
                        try await server.withOwnerConnection { owner in
                            _ = try await owner.query("SELECT pg_terminate_backend(\(pid))", logger: server.logger)
                        }
                        // Once the close future completes, PostgresNIO has taken the channel's handlers down: a statement
                        // written now reaches nobody.
                        try? await transaction.connection.closeFuture.get()
                        try await transaction.query("SELECT 1")
                    }
                    return "committed"
                } catch is DatabaseConnectionClosed {
                    return "closed"
                } catch {
                    return String(reflecting: error)
                }
            }
            #expect(outcome == "closed", "the statement should fail as closed")

            // The lease was given back: the pool serves the next transaction on a new connection.
            let next = try await bounded("the next transaction") {
                try await database.withRequestTransaction(as: .service(actingUser: nil)) { transaction in
                    try await transaction.query("SELECT 41 + 1")[0].decode(Int.self)
                }
            }
            #expect(next == 42)
        }
    }

    @Test func aRequestWhoseConnectionDiesGets503AndTheServerStillStops() async throws {
        let server = try await TestServer.make()
        try await server.testLive { client in
            let team = try await Team.make(client)
            let plan = try await team.makePlan(client)
            let task = try await team.makeTask(client, plan: plan)
            // The owner locks the task's row, so that the request's UPDATE waits on it; then the request's backend is
            // killed while it waits.
            let reply = try await server.withOwnerConnection { owner in
                try await owner.query("BEGIN", logger: server.logger)
                try await owner.query("SELECT 1 FROM task WHERE id = \(task) FOR UPDATE", logger: server.logger)
                async let patched = client.send(
                    .patch,
                    "/rest/v1/tasks/\(task)",
                    as: .user(team.editor),
                    json: #"{"title":"renamed"}"#
                )
                var waiting: [Int32] = []
                let deadline = ContinuousClock.now + .seconds(20)
                while waiting.isEmpty, ContinuousClock.now < deadline {
                    try await Task.sleep(for: .milliseconds(20))
                    waiting = try await owner.query(
                        """
                        SELECT pid FROM pg_stat_activity
                        WHERE datname = current_database() AND wait_event_type = 'Lock' AND pid <> pg_backend_pid()
                        """,
                        logger: server.logger
                    ).collect().map { try $0.decode(Int32.self) }
                }
                try #require(waiting.count == 1, "the request's backend should wait on the row lock")
                try await owner.query("SELECT pg_terminate_backend(\(waiting[0]))", logger: server.logger)
                let reply = try await patched
                try await owner.query("ROLLBACK", logger: server.logger)
                return reply
            }
            #expect(reply.status == .serviceUnavailable, "\(reply.status): \(reply.text)")
            #expect(reply.errorCode == "database_unavailable", "\(reply.text)")
            #expect(reply.headers[.retryAfter] != nil)

            // Nothing was half-written, and the next request is served.
            let row = try await client.send(.get, "/rest/v1/tasks?id=eq.\(task)", as: .user(team.viewer))
            #expect(row.array.first?["title"] as? String == "Shift")
        }
    }
}
