import AsyncHTTPClient
import Foundation
import PostgresNIO
import Testing

@testable import Realtime

#if canImport(Glibc)
    import Glibc
#elseif canImport(Musl)
    import Musl
#endif

/// The relay survives any backlog: a transaction of any size is decoded, queued and written in bounded pieces, and the
/// log still holds it whole, contiguous and in commit order.
@Suite struct RelayBacklogTests {
    static func change(_ index: Int, value: String = "v") -> WALRowChange {
        WALRowChange(
            schema: "public", table: "task", operation: .update, columns: ["id", "title"], typeOIDs: [25, 25],
            newValues: ["\(index)", value], oldValues: ["\(index)", "old"])
    }

    @Test func aLargeTransactionIsHandedOnInBoundedPiecesAndOnlyItsLastIsComplete() throws {
        var assembler = WALTransactionAssembler()
        let count = 2 * WALTransactionAssembler.maxPieceChanges + 500
        var pieces: [WALTransaction] = []
        #expect(try assembler.consume(.begin(finalLSN: 900, commitTime: Date(timeIntervalSince1970: 0), xid: 7)) == nil)
        for index in 0..<count {
            if let piece = try assembler.consume(.change(Self.change(index), unresolvedColumns: [])) { pieces.append(piece) }
        }
        if let last = try assembler.consume(.commit(flags: 0, commitLSN: 900, endLSN: 1000, commitTime: Date(timeIntervalSince1970: 1))) {
            pieces.append(last)
        }
        #expect(pieces.map(\.changes.count) == [1000, 1000, 500])
        #expect(pieces.map(\.firstIndex) == [0, 1000, 2000])
        #expect(pieces.map(\.isComplete) == [false, false, true])
        #expect(pieces.map(\.endLSN) == [0, 0, 1000])
        #expect(Set(pieces.map(\.commitLSN)) == [900] && Set(pieces.map(\.xid)) == [7])
        #expect(pieces.flatMap(\.changes).map { $0.newValues?[0] } == (0..<count).map { "\($0)" })
        #expect(!assembler.isInTransaction)

        // Large values fill a piece by bytes before its count.
        let big = String(repeating: "x", count: 1 << 20)
        _ = try assembler.consume(.begin(finalLSN: 2000, commitTime: Date(), xid: 8))
        var bigPieces: [WALTransaction] = []
        for index in 0..<10 {
            if let piece = try assembler.consume(.change(Self.change(index, value: big), unresolvedColumns: [])) { bigPieces.append(piece) }
        }
        #expect(bigPieces.first?.changes.count == 4)
    }

    @Test func batchesAreCappedAndCommitOnlyAtTheEndOfASourceTransaction() async throws {
        let pending = PendingTransactions()
        func piece(_ changes: Int, complete: Bool, end: UInt64) -> WALTransaction {
            var piece = WALTransaction(xid: 1, commitLSN: 1, endLSN: end, commitTime: Date(), changes: (0..<changes).map { Self.change($0) })
            piece.isComplete = complete
            return piece
        }
        for item in [piece(600, complete: false, end: 0), piece(600, complete: true, end: 10), piece(1, complete: true, end: 20)] {
            pending.append(item)
        }
        pending.finish()
        var writer = Relay.LogWriter()
        let first = try #require(await pending.next(maxChanges: 1000))
        #expect(first.map(\.changes.count) == [600])
        #expect(writer.wrote(first) == nil)  // half a source transaction: nothing to commit or confirm
        #expect(writer.isOpen)
        let second = try #require(await pending.next(maxChanges: 1000))
        #expect(second.map(\.changes.count) == [600, 1])
        #expect(writer.wrote(second) == 20)
        #expect(!writer.isOpen)
        #expect(await pending.next(maxChanges: 1000) == nil)
    }

    /// Buffers a statement touched, from `EXPLAIN (ANALYZE, BUFFERS, FORMAT JSON)`: each visit of a page counted,
    /// including the heap visits that find a row invisible.
    static func buffersTouched(by query: PostgresQuery, on connection: PostgresConnection, logger: Logger) async throws -> Int {
        let explained = try await connection.query(
            PostgresQuery(unsafeSQL: "EXPLAIN (ANALYZE, BUFFERS, FORMAT JSON) " + query.sql, binds: query.binds), logger: logger)
        var text = ""
        for try await row in explained { text = try row.decode(String.self) }
        let plans = try #require(try JSONSerialization.jsonObject(with: Data(text.utf8)) as? [[String: Any]])
        let plan = try #require(plans.first?["Plan"] as? [String: Any])
        return (plan["Shared Hit Blocks"] as? Int ?? 0) + (plan["Shared Read Blocks"] as? Int ?? 0)
    }

    /// While the relay writes a huge source transaction, its rows are in the log's indexes but invisible until its
    /// commit. The log's readers (every node's tailer four times a second, each stream open, poll and snapshot) must
    /// not walk them: their work stays that of the committed log, not of the transaction in flight.
    @Test func aTransactionStillBeingLoggedCostsTheLogsReadersNothing() async throws {
        let server = try await TestServer.make()
        let logger = server.logger
        let branch = UUID()
        // The server started migrates the database; the statements run on owner connections beside it.
        try await server.testLive { _ in try await Self.readWhileLogging(server, branch: branch, logger: logger) }
    }

    static func readWhileLogging(_ server: TestServer, branch: UUID, logger: Logger) async throws {
        try await server.withOwnerConnection { writer in
            let committed = try await writer.query(PostgresQuery(unsafeSQL: EventLog.newestSequenceSQL), logger: logger)
            var head: Int64 = 0
            for try await row in committed { head = try row.decode(Int64.self) }
            _ = try await writer.query("BEGIN", logger: logger)
            _ = try await writer.query(
                """
                INSERT INTO realtime.event_log (commit_lsn, tx_index, xid, commit_time, table_name, op, branch_id, record, old_record)
                SELECT 'F/0'::pg_lsn + i, i, 77, now(), 'client_card', 'INSERT', \(branch),
                       json_build_object('id', gen_random_uuid(), 'branch_id', \(branch), 'name', 'n' || i), '{}'
                FROM generate_series(1, 20000) AS i
                """,
                logger: logger
            )
            let readers: [(String, PostgresQuery)] = [
                ("the tailer's read", EventLog.tailRead(after: head, limit: 1000)),
                ("the log's head", PostgresQuery(unsafeSQL: EventLog.newestSequenceSQL)),
                ("a snapshot's cursor", "SELECT realtime.event_log_head()"),
                (
                    "a replay of the branch",
                    EventLog.channelRead(after: head, through: head, limit: 1000, channels: [.branch(branch)], memberBranches: [branch])
                ),
                ("a user's memberships", MembershipHistory.loadStatement(userID: UUID(), after: head)),
            ]
            try await server.withOwnerConnection { reader in
                for (name, query) in readers {
                    let buffers = try await Self.buffersTouched(by: query, on: reader, logger: logger)
                    #expect(buffers < 50, "\(name) touched \(buffers) buffers for an empty committed tail")
                }
            }
            _ = try await writer.query("ROLLBACK", logger: logger)
        }
    }

    /// The server's peak resident memory, from `/proc/<pid>/status`.
    static func peakResidentBytes(of pid: Int32) -> Int? {
        guard let status = try? String(contentsOfFile: "/proc/\(pid)/status", encoding: .utf8),
            let line = status.split(separator: "\n").first(where: { $0.hasPrefix("VmHWM:") })
        else { return nil }
        return line.split(separator: " ").compactMap { Int($0) }.first.map { $0 * 1024 }
    }

    /// With the server stopped, one UPDATE of many task rows; started again, the relay catches up within a bounded
    /// memory, and the log and a reader have every change once, the transaction's changes contiguous.
    ///
    /// It loads both cores for a minute or more, which would starve the tests beside it: `scripts/test` runs it on its
    /// own after the rest (`REALTIME_BACKLOG_TEST=1`).
    @Test(.enabled(if: ProcessInfo.processInfo.environment["REALTIME_BACKLOG_TEST"] == "1"), .timeLimit(.minutes(60)))
    func theRelayCatchesUpWithOneHugeTransactionInBoundedMemory() async throws {
        let rows = ProcessInfo.processInfo.environment["REALTIME_BACKLOG_ROWS"].flatMap(Int.init) ?? 150_000
        let server = try await TestServer.make()  // migrations and REST only; the change feed is the binary's
        let port = try FreePort.pick()
        try await server.test { client in
            let team = try await Team.make(client)
            let plan = try await team.makePlan(client)
            let quiet = try await team.makePlan(client, title: "Quiet")
            // The rows exist before any slot: only the UPDATE below is the backlog.
            try await server.withOwnerConnection { connection in
                _ = try await connection.query(
                    """
                    INSERT INTO task (branch_id, plan_id, title, starts_at, ends_at)
                    SELECT \(team.branch), \(plan), 'task ' || i, '2026-11-30 09:00+00', '2026-11-30 10:00+00'
                    FROM generate_series(1, \(rows)) AS i
                    """,
                    logger: server.logger
                )
            }
            var process = try ProcessFaultTests.startBinary(server, port: port)
            defer { if process.isRunning { kill(process.processIdentifier, SIGKILL) } }
            try await NodeLifecycleTests.waitUntilServing("http://127.0.0.1:\(port)")
            try await ChangeFeedFaultTests.waitForRelay(server)
            process.terminate()
            process.waitUntilExit()

            let head = try await ChangeFeedFaultTests.int64s(server, "SELECT coalesce(max(seq), 0) FROM realtime.event_log")[0]
            try await server.withOwnerConnection { connection in
                _ = try await connection.query("UPDATE task SET title = title || ' (renamed)' WHERE plan_id = \(plan)", logger: server.logger)
                _ = try await connection.query(
                    ChangeFeedFaultTests.insertTask(UUID(), team: team, plan: quiet, title: "after the backlog"), logger: server.logger)
            }
            process = try ProcessFaultTests.startBinary(server, port: port)
            let pid = process.processIdentifier
            var peak = 0
            // A debug build relays a few thousand changes a second: 12 minutes for the default, more for a bigger backlog.
            let patience = Duration.seconds(max(720, rows / 250))
            try await ChangeFeedFaultTests.waitUntil("the relay to log the backlog", timeout: patience) {
                peak = max(peak, Self.peakResidentBytes(of: pid) ?? 0)
                // The committed head, not a count: a count would walk the rows the relay has yet to commit, and
                // load the machine it measures. The counts below check what the head promises.
                let committed = try await ChangeFeedFaultTests.int64s(server, "SELECT seq FROM realtime.log_head")[0]
                return committed >= head + Int64(rows) + 1
            }
            peak = max(peak, Self.peakResidentBytes(of: pid) ?? 0)
            print("relayed a backlog of \(rows) changes in one transaction; the server's resident memory peaked at \(peak >> 20) MiB")
            #expect(peak > 0 && peak < 300 << 20, "the server's resident memory peaked at \(peak >> 20) MiB while it relayed \(rows) changes")

            // Every change once, the big transaction contiguous, then the write after it.
            let counts = try await server.withOwnerConnection { connection in
                let result = try await connection.query(
                    """
                    SELECT count(*) FILTER (WHERE op = 'UPDATE'), count(DISTINCT task_id) FILTER (WHERE op = 'UPDATE'),
                           max(seq) FILTER (WHERE op = 'UPDATE') - min(seq) FILTER (WHERE op = 'UPDATE') + 1,
                           count(*) FILTER (WHERE op = 'INSERT'), max(seq) FILTER (WHERE op = 'INSERT') > max(seq) FILTER (WHERE op = 'UPDATE')
                    FROM realtime.event_log WHERE seq > \(head) AND table_name = 'task'
                    """,
                    logger: server.logger
                )
                for try await row in result.decode((Int64, Int64, Int64, Int64, Bool).self) { return row }
                throw FaultTimeout(what: "the log's counts", timeout: .zero)
            }
            #expect(counts.0 == Int64(rows) && counts.1 == Int64(rows), "UPDATE events: \(counts.0), distinct tasks: \(counts.1)")
            #expect(counts.2 == Int64(rows), "the transaction's events are not contiguous: they span \(counts.2) sequences")
            #expect(counts.3 == 1 && counts.4, "the write after the backlog: \(counts.3) events, after it: \(counts.4)")

            // A reader of the quiet plan resumes through the backlog and gets its one change, once.
            try await NodeLifecycleTests.waitUntilServing("http://127.0.0.1:\(port)")
            let token = try await client.token(for: .user(team.viewer))
            let stream = try await SSEClient.open(
                "http://127.0.0.1:\(port)/realtime/v1/plan/\(quiet)?table=task",
                headers: [("Authorization", "Bearer \(token)"), ("Last-Event-ID", "\(head)")]
            )
            try #require(stream.status == 200)
            let frames = try await stream.waitFor("the quiet plan's task") { $0.contains { $0.record["title"] as? String == "after the backlog" } }
            #expect(frames.filter { $0.event == "postgres_changes" }.count == 1)
            stream.close()
            process.terminate()
            process.waitUntilExit()
        }
    }
}
