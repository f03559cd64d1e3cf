import Foundation
import HTTPTypes
import Hummingbird
import PostgresNIO
import Testing

@testable import Realtime

/// A REST write is answered only once its transaction has committed, and a refusal at the commit is the write's own
/// error.
///
/// A deferred constraint is checked at the commit, after the write's statement has returned its row. Both earlier
/// shapes of the write failed this test: answering from the call's row (two round trips, before its implicit
/// transaction committed at the protocol's Sync) sent `201` for writes PostgreSQL then rolled back; confirming the
/// commit with a third statement sent `503 database_unavailable`, because the commit's error came outside any
/// statement. `realtime.commit_write` (migration 0008) commits inside the call, so the error is the call's.
@Suite(.timeLimit(.minutes(2)))
struct WriteCommitTests {
    @Test func aWriteRefusedAtItsCommitIsAnsweredWithTheRefusal() async throws {
        let server = try await TestServer.make()
        try await server.test { client in
            let team = try await Team.make(client)
            let plan = try await team.makePlan(client)
            // A deferred foreign key, as a deployment might add: a task's title must be one of the approved titles.
            try await server.withOwnerConnection { connection in
                try await connection.query("CREATE TABLE approved_title (title text PRIMARY KEY)", logger: server.logger)
                try await connection.query("INSERT INTO approved_title VALUES ('Approved'), ('Also approved')", logger: server.logger)
                try await connection.query(
                    """
                    ALTER TABLE task ADD CONSTRAINT task_title_approved FOREIGN KEY (title) REFERENCES approved_title (title)
                        DEFERRABLE INITIALLY DEFERRED
                    """,
                    logger: server.logger
                )
            }
            func task(_ title: String) -> String {
                #"{"plan_id":"\#(plan)","title":"\#(title)","starts_at":"2026-11-30T09:00:00Z","ends_at":"2026-11-30T11:00:00Z"}"#
            }

            let approved = try await client.send(.post, "/rest/v1/tasks", as: .user(team.editor), json: task("Approved"))
            #expect(approved.status == .created, "the control write: \(approved.text)")
            let id = try #require(approved.string("id"))

            // A create, under an Idempotency-Key: refused at the commit both times (the key was not kept claimed).
            var headers = HTTPFields()
            headers[HTTPField.Name("Idempotency-Key")!] = "unapproved-1"
            for _ in 0..<2 {
                let refused = try await client.send(.post, "/rest/v1/tasks", as: .user(team.editor), json: task("Unapproved"), headers: headers)
                #expect(refused.status == .unprocessableContent, "\(refused.text)")
                #expect(refused.errorCode == "invalid_reference")
            }
            // An update.
            let renamed = try await client.send(.patch, "/rest/v1/tasks/\(id)", as: .user(team.editor), json: #"{"title":"Unapproved"}"#)
            #expect(renamed.status == .unprocessableContent, "\(renamed.text)")
            #expect(renamed.errorCode == "invalid_reference")

            let stored = try await client.send(.get, "/rest/v1/tasks?plan_id=eq.\(plan)", as: .user(team.editor))
            #expect(stored.array.map { $0["title"] as? String } == ["Approved"])

            // The same connections go on writing: the refused commits left nothing behind on them.
            let next = try await client.send(.patch, "/rest/v1/tasks/\(id)", as: .user(team.editor), json: #"{"title":"Also approved"}"#)
            #expect(next.status == .ok, "\(next.text)")
        }
    }

    /// A write's statements are prepared once per connection, and a session-level mark (migration 0010) says so, so
    /// that a write need not list the connection's prepared statements. A transaction that fails takes its mark back but
    /// not the statement: the next write of that shape must find the statement, not prepare it twice ("prepared
    /// statement already exists").
    @Test func aStatementPreparedByAFailedWriteIsFoundByTheNext() async throws {
        let server = try await TestServer.make()
        try await server.test { _ in
            try await server.withOwnerConnection { connection in
                let logger = server.logger
                let statement = "SELECT $1[1] || '-' || $1[2]"
                let mark: PostgresQuery = "SELECT current_setting('realtime.realtime_write_' || md5(\(statement)), true)"
                try await connection.query("BEGIN", logger: logger)
                _ = try await connection.query("SELECT realtime.prepared(\(statement), ARRAY['a', 'b'])", logger: logger).collect()
                try await connection.query("ROLLBACK", logger: logger)
                // Taken back: the setting exists in the session now, but empty.
                #expect(try await Self.text(connection, mark, logger) ?? "" == "")

                let call = try #require(
                    try await Self.text(connection, "SELECT realtime.prepared(\(statement), ARRAY['c', 'd'])", logger))
                #expect(try await Self.text(connection, mark, logger) == "prepared")
                #expect(try await Self.text(connection, PostgresQuery(unsafeSQL: call), logger) == "c-d")
                // Marked now: the next call answers from the mark, with the same statement.
                #expect(try await Self.text(connection, "SELECT realtime.prepared(\(statement), ARRAY['c', 'd'])", logger) == call)
            }
        }
    }

    private static func text(_ connection: PostgresConnection, _ query: PostgresQuery, _ logger: Logger) async throws -> String? {
        var value: String?
        for try await row in try await connection.query(query, logger: logger) { value = try row.decode(String?.self) }
        return value
    }
}
