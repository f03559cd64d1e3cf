import AsyncHTTPClient
import Foundation
import HTTPTypes
import NIOCore
import NIOFoundationCompat
import NIOHTTP1
import PostgresNIO
import Testing

@testable import Realtime

/// The change feed end to end: real PostgreSQL, the relay reading the WAL, the tailer, and real SSE connections.
/// One file over 400 lines because its tests share one set of helpers for a server with the feed and its streams.
@Suite struct ChangeFeedTests {
    /// Opens a stream at `path` (e.g. `/realtime/v1/plan/<id>`) as `principal`.
    static func open(
        _ client: TestServer.Client,
        _ path: String,
        as principal: Principal,
        lastEventID: String? = nil
    ) async throws -> SSEClient {
        var headers = [("Authorization", "Bearer \(try await client.token(for: principal))")]
        if let lastEventID { headers.append(("Last-Event-ID", lastEventID)) }
        let stream = try await SSEClient.open(client.baseURL + path, headers: headers)
        try #require(stream.status == 200, "stream \(path): \(stream.status.map(String.init) ?? "no answer") \(stream.errorBody)")
        return stream
    }

    @Test func restWritesArriveOnPlanAndBranchStreamsWithTheirPayload() async throws {
        let server = try await TestServer.make(changeFeed: true)
        try await server.testLive { client in
            let team = try await Team.make(client)
            let plan = try await team.makePlan(client)
            let planStream = try await Self.open(client, "/realtime/v1/plan/\(plan)", as: .user(team.viewer))
            let branchStream = try await Self.open(client, "/realtime/v1/branch/\(team.branch)", as: .user(team.viewer))
            #expect(planStream.header("Content-Type")?.hasPrefix("text/event-stream") == true)

            let task = try await team.makeTask(client, plan: plan)
            let changed = try await client.send(.patch, "/rest/v1/tasks/\(task)", as: .user(team.editor), json: #"{"status":"done"}"#)
            #expect(changed.status == .ok)
            #expect(try await client.send(.delete, "/rest/v1/tasks/\(task)", as: .user(team.editor)).status == .noContent)

            // INSERT task, INSERT history (taken), UPDATE task, INSERT history (taken→done), DELETE history ×2, DELETE task.
            let frames = try await planStream.waitFor("the task's delete") { frames in
                frames.contains { $0.table == "task" && $0.operation == "DELETE" }
            }.filter { $0.event == "postgres_changes" }
            let taskFrames = frames.filter { $0.table == "task" }
            #expect(taskFrames.map(\.operation) == ["INSERT", "UPDATE", "DELETE"])
            let insert = taskFrames[0]
            #expect(insert.json["type"] as? String == "postgres_changes")
            #expect(insert.json["schema"] as? String == "public")
            #expect(insert.record["id"] as? String == task.uuidString.lowercased())
            #expect(insert.record["title"] as? String == "Shift")
            #expect(insert.record["status"] as? String == "taken")
            #expect(insert.record["starts_at"] as? String == "2026-11-30T09:00:00+00:00")
            #expect(insert.oldRecord.isEmpty)
            #expect((insert.json["commit_timestamp"] as? String)?.hasSuffix("Z") == true)
            #expect(Set(insert.channels) == ["plan:\(plan.uuidString.lowercased())"])
            let update = taskFrames[1]
            #expect(update.record["status"] as? String == "done")
            #expect(update.oldRecord["status"] as? String == "taken")
            #expect(update.oldRecord["title"] == nil)
            let delete = taskFrames[2]
            #expect(delete.oldRecord["id"] as? String == task.uuidString.lowercased())
            let history = frames.filter { $0.table == "status_history" && $0.operation == "INSERT" }
            #expect(history.map { $0.record["to_status"] as? String } == ["taken", "done"])

            // Ids are cursors: increasing, never repeated.
            let ids = frames.compactMap { $0.id.flatMap(Int64.init) }
            #expect(ids.count == frames.count)
            #expect(ids == ids.sorted() && Set(ids).count == ids.count)

            // The branch stream carries the same task changes, and the plan row too.
            let branchFrames = try await branchStream.waitFor("the task's delete on the branch") { frames in
                frames.contains { $0.table == "task" && $0.operation == "DELETE" }
            }
            #expect(branchFrames.filter { $0.table == "task" }.map(\.operation) == ["INSERT", "UPDATE", "DELETE"])
            planStream.close()
            branchStream.close()
        }
    }

    @Test func aMemberOfOneBranchNeverSeesAnother() async throws {
        let server = try await TestServer.make(changeFeed: true)
        try await server.testLive { client in
            let teamA = try await Team.make(client, name: "A")
            let teamB = try await Team.make(client, name: "B")
            let planA = try await teamA.makePlan(client)
            let planB = try await teamB.makePlan(client)
            let streamA = try await Self.open(client, "/realtime/v1/stream?channel=branch:\(teamA.branch)", as: .user(teamA.viewer))
            let streamB = try await Self.open(client, "/realtime/v1/stream?channel=branch:\(teamB.branch)", as: .user(teamB.viewer))

            // Every table and operation in branch B, then one marker in branch A.
            let taskB = try await teamB.makeTask(client, plan: planB)
            let editorB = Principal.user(teamB.editor)
            _ = try await client.send(.patch, "/rest/v1/tasks/\(taskB)", as: editorB, json: #"{"status":"posted"}"#)
            let card = try await client.send(
                .post,
                "/rest/v1/client_cards",
                as: editorB,
                json: #"{"branch_id":"\#(teamB.branch)","name":"Secret client","phone":"555"}"#
            )
            let cardID = try #require(card.string("id"))
            let attachment = try await client.send(
                .post,
                "/rest/v1/attachments",
                as: editorB,
                json: #"{"task_id":"\#(taskB)","file_name":"f","content_type":"t","byte_size":1,"storage_url":"u"}"#
            )
            #expect(attachment.status == .created)
            _ = try await client.send(.delete, "/rest/v1/client_cards/\(cardID)", as: editorB)
            _ = try await client.send(.delete, "/rest/v1/tasks/\(taskB)", as: editorB)
            _ = try await client.send(.delete, "/rest/v1/plans/\(planB)", as: editorB)
            _ = try await client.send(
                .put,
                "/rest/v1/branches/\(teamB.branch)/members/\(UUID())",
                as: .service(actingUser: nil),
                json: #"{"role":"viewer"}"#
            )
            let marker = try await teamA.makeTask(client, plan: planA, title: "Marker")

            try await streamA.waitFor("the marker") { $0.contains { $0.record["id"] as? String == marker.uuidString.lowercased() } }
            let framesB = try await streamB.waitFor("branch B's plan delete") { frames in
                frames.contains { $0.table == "plan" && $0.operation == "DELETE" }
            }
            let branchBText = teamB.branch.uuidString.lowercased()
            for frame in streamA.changes {
                #expect(!frame.data.contains(branchBText), "branch A's viewer received \(frame.data)")
                #expect(!frame.data.contains("Secret client"))
            }
            let seenByB = Set(framesB.filter { $0.event == "postgres_changes" }.map { "\($0.table ?? "")/\($0.operation ?? "")" })
            #expect(
                seenByB.isSuperset(of: [
                    "task/INSERT", "task/UPDATE", "task/DELETE", "client_card/INSERT", "client_card/DELETE",
                    "attachment/INSERT", "attachment/DELETE", "status_history/INSERT", "status_history/DELETE", "plan/DELETE",
                ]))
            streamA.close()
            streamB.close()
        }
    }

    /// An attachment of a task names only the task (it has exactly one parent), yet the README promises it on the
    /// task's plan channel: the log places it by the task's plan.
    @Test func aTasksAttachmentStreamsOnItsPlansChannel() async throws {
        let server = try await TestServer.make(changeFeed: true)
        try await server.testLive { client in
            let team = try await Team.make(client)
            let plan = try await team.makePlan(client)
            let task = try await team.makeTask(client, plan: plan)
            let stream = try await Self.open(client, "/realtime/v1/stream?channel=plan:\(plan)", as: .user(team.viewer))
            let attachment = try await client.send(
                .post, "/rest/v1/attachments", as: .user(team.editor),
                json: #"{"task_id":"\#(task)","file_name":"scan.pdf","content_type":"application/pdf","byte_size":1,"storage_url":"u"}"#)
            let id = try #require(attachment.string("id"))
            _ = try await client.send(.delete, "/rest/v1/attachments/\(id)", as: .user(team.editor))
            let marker = try await team.makeTask(client, plan: plan, title: "after the attachment")
            let frames = try await stream.waitFor("the marker after the attachment") { frames in
                frames.contains { $0.record["id"] as? String == marker.uuidString.lowercased() }
            }
            let attachments = frames.filter { $0.table == "attachment" }
            #expect(attachments.map(\.operation) == ["INSERT", "DELETE"], "plan channel frames: \(frames.map(\.data))")
            #expect(attachments.first?.record["file_name"] as? String == "scan.pdf")
            stream.close()
        }
    }

    @Test func changesMadeWithPlainSQLAreStreamed() async throws {
        let server = try await TestServer.make(changeFeed: true)
        try await server.testLive { client in
            let team = try await Team.make(client)
            let plan = try await team.makePlan(client)
            let stream = try await Self.open(client, "/realtime/v1/plan/\(plan)", as: .user(team.viewer))
            let task = UUID()
            try await server.withOwnerConnection { connection in
                try await connection.query(
                    """
                    INSERT INTO task (id, branch_id, plan_id, title, starts_at, ends_at)
                    VALUES (\(task), \(team.branch), \(plan), 'From psql', '2026-11-30 09:00+00', '2026-11-30 10:00+00')
                    """,
                    logger: server.logger
                )
                try await connection.query("UPDATE task SET title = 'Renamed in psql' WHERE id = \(task)", logger: server.logger)
            }
            let frames = try await stream.waitFor("the psql update") { frames in
                frames.contains { $0.table == "task" && $0.operation == "UPDATE" }
            }.filter { $0.table == "task" }
            #expect(frames.map(\.operation) == ["INSERT", "UPDATE"])
            #expect(frames[1].record["title"] as? String == "Renamed in psql")
            #expect(frames[1].oldRecord["title"] as? String == "From psql")
            stream.close()
        }
    }

    /// A cursor beyond the log's head is not a cursor of this log (e.g. from a database that was reset): the stream says
    /// `reset` and ends, the poll answers `410 cursor_expired`, so the client reloads its snapshot instead of waiting
    /// for sequences that mean something else.
    @Test func aCursorFromTheFutureMeansReloadTheSnapshot() async throws {
        let server = try await TestServer.make(changeFeed: true)
        try await server.testLive { client in
            let team = try await Team.make(client)
            let plan = try await team.makePlan(client)
            let future = "\(Int64(Int32.max) * 1000)"
            let stream = try await Self.open(client, "/realtime/v1/plan/\(plan)", as: .user(team.viewer), lastEventID: future)
            try await stream.waitUntilFinished(timeout: .seconds(10))
            #expect(stream.frames.map(\.event) == ["reset"], "\(stream.frames)")
            #expect(stream.changes.isEmpty)
            let poll = try await client.send(.get, "/realtime/v1/changes?channel=plan:\(plan)&after=\(future)", as: .user(team.viewer))
            #expect(poll.status == .gone)
            #expect(poll.errorCode == "cursor_expired")
        }
    }

    @Test func resumingWithLastEventIDReplaysExactlyWhatWasMissed() async throws {
        let server = try await TestServer.make(changeFeed: true)
        try await server.testLive { client in
            let team = try await Team.make(client)
            let plan = try await team.makePlan(client)
            let first = try await Self.open(client, "/realtime/v1/plan/\(plan)?table=task", as: .user(team.viewer))
            let one = try await team.makeTask(client, plan: plan, title: "one")
            let seen = try await first.waitForChanges(1)
            first.close()
            let lastID = try #require(seen.last?.id)

            // Missed while disconnected.
            let two = try await team.makeTask(client, plan: plan, title: "two")
            let three = try await team.makeTask(client, plan: plan, title: "three")
            let resumed = try await Self.open(client, "/realtime/v1/plan/\(plan)?table=task", as: .user(team.viewer), lastEventID: lastID)
            let four = try await team.makeTask(client, plan: plan, title: "four")
            let frames = try await resumed.waitForChanges(3)
            try await Task.sleep(for: .milliseconds(300))
            let ids = resumed.changes.map { $0.record["id"] as? String }
            #expect(ids == [two, three, four].map { $0.uuidString.lowercased() })
            #expect(!ids.contains(one.uuidString.lowercased()))
            #expect(frames.allSatisfy { Int64($0.id ?? "") ?? 0 > Int64(lastID) ?? 0 })
            resumed.close()
        }
    }

    @Test func streamsRefuseWhatTheCallerCannotSee() async throws {
        let server = try await TestServer.make(changeFeed: true)
        try await server.testLive { client in
            let team = try await Team.make(client)
            let other = try await Team.make(client, name: "Other")
            let plan = try await other.makePlan(client)
            let token = try await client.token(for: .user(team.viewer))
            for path in ["/realtime/v1/branch/\(other.branch)", "/realtime/v1/plan/\(plan)", "/realtime/v1/plan/\(UUID())"] {
                let stream = try await SSEClient.open(client.baseURL + path, headers: [("Authorization", "Bearer \(token)")])
                #expect(stream.status == 404, "\(path)")
                try await stream.waitUntilFinished()
                #expect(stream.errorBody.contains("not_found"))
            }
            let bad = try await SSEClient.open(client.baseURL + "/realtime/v1/stream?channel=room:1&access_token=\(token)")
            #expect(bad.status == 400)
            let badFilter = try await SSEClient.open(
                client.baseURL + "/realtime/v1/branch/\(team.branch)?filter=nope=eq.1&access_token=\(token)"
            )
            #expect(badFilter.status == 400)
            let noToken = try await SSEClient.open(client.baseURL + "/realtime/v1/branch/\(team.branch)")
            #expect(noToken.status == 401)
        }
    }

    @Test func losingMembershipRevokesTheStream() async throws {
        let server = try await TestServer.make(changeFeed: true)
        try await server.testLive { client in
            let team = try await Team.make(client)
            let plan = try await team.makePlan(client)
            let stream = try await Self.open(client, "/realtime/v1/branch/\(team.branch)", as: .user(team.viewer))
            let removed = try await client.send(.delete, "/rest/v1/branches/\(team.branch)/members/\(team.viewer)", as: .user(team.admin))
            #expect(removed.status == .noContent)
            _ = try await team.makeTask(client, plan: plan, title: "After removal")
            let frames = try await stream.waitFor("revoked") { $0.contains { $0.event == "revoked" } }
            try await stream.waitUntilFinished()
            #expect(!frames.contains { $0.record["title"] as? String == "After removal" })
        }
    }

    @Test func snapshotThenStreamEqualsTheDatabase() async throws {
        let server = try await TestServer.make(changeFeed: true)
        try await server.testLive { client in
            let team = try await Team.make(client)
            let plan = try await team.makePlan(client)
            for index in 0..<3 { _ = try await team.makeTask(client, plan: plan, title: "before \(index)") }
            let snapshot = try await client.send(.get, "/rest/v1/plans/\(plan)/snapshot", as: .user(team.viewer))
            #expect(snapshot.status == .ok)
            let cursor = try #require(snapshot.string("cursor"))
            var tasks: [String: [String: Any]] = [:]
            for task in snapshot.object["tasks"] as? [[String: Any]] ?? [] { tasks[task["id"] as? String ?? ""] = task }
            #expect(tasks.count == 3)

            let stream = try await Self.open(client, "/realtime/v1/plan/\(plan)?table=task", as: .user(team.viewer), lastEventID: cursor)
            let added = try await team.makeTask(client, plan: plan, title: "after")
            let someTask = try #require(tasks.keys.first)
            _ = try await client.send(.patch, "/rest/v1/tasks/\(someTask)", as: .user(team.editor), json: #"{"title":"changed"}"#)
            let frames = try await stream.waitForChanges(2)
            for frame in frames {
                switch frame.operation {
                case "DELETE": tasks[frame.oldRecord["id"] as? String ?? ""] = nil
                default:
                    var row = tasks[frame.record["id"] as? String ?? ""] ?? [:]
                    for (key, value) in frame.record { row[key] = value }
                    tasks[frame.record["id"] as? String ?? ""] = row
                }
            }
            #expect(frames.count == 2)
            #expect(tasks[added.uuidString.lowercased()]?["title"] as? String == "after")
            let truth = try await client.send(.get, "/rest/v1/tasks?plan_id=eq.\(plan)", as: .user(team.viewer))
            #expect(
                Set(truth.array.map { "\($0["id"] ?? "")|\($0["title"] ?? "")" })
                    == Set(tasks.values.map { "\($0["id"] ?? "")|\($0["title"] ?? "")" }))
            stream.close()
        }
    }

    /// The order PostgreSQL logs commits in is not quite the order it makes them visible in, so a transaction a snapshot
    /// saw committed may be logged after one it saw in progress. The log is written here by hand to stage that, with
    /// transaction ids around a made-up snapshot: a stream and a poll from the snapshot's cursor skip the snapshot's
    /// transaction, and their ids keep the snapshot until a transaction begun after it, so resuming from any id skips it
    /// too.
    @Test func idsAfterASnapshotsCursorKeepItsSnapshotUntilItIsSettled() async throws {
        let server = try await TestServer.make(changeFeed: true)
        try await server.testLive { client in
            let team = try await Team.make(client)
            let plan = try await team.makePlan(client)
            let head = try await DeliveryCheckerTests.waitForLogged(server, xid: try await DeliveryCheckerTests.commitMarker(server, plan: plan))
            // The snapshot saw 100 and 102 committed, 101 and 103 in progress; 104 and later had not begun.
            let snapshot = "100:104:101,103"
            let sequences = try await server.withOwnerConnection { connection in
                var sequences: [Int64] = []
                for (index, xid) in [101, 102, 103, 104, 105].enumerated() {
                    // 104 is in another branch: it settles the snapshot for this stream too, unseen.
                    let (branch, planID) = xid == 104 ? (UUID(), UUID()) : (team.branch, plan)
                    let task = UUID()
                    let record =
                        #"{"id":"\#(task.uuidString.lowercased())","branch_id":"\#(branch.uuidString.lowercased())","plan_id":"\#(planID.uuidString.lowercased())","title":"x\#(xid)"}"#
                    let rows = try await connection.query(
                        """
                        INSERT INTO realtime.event_log (commit_lsn, tx_index, xid, commit_time, table_name, op, branch_id, plan_id, task_id, record, old_record)
                        VALUES (\("0/\(index + 1)0")::pg_lsn, 0, \(Int64(xid)), now(), 'task', 'INSERT', \(branch), \(planID), \(task), \(record)::json, '{}')
                        RETURNING seq
                        """, logger: server.logger)
                    for try await sequence in rows.decode(Int64.self) { sequences.append(sequence) }
                }
                return sequences
            }
            try #require(sequences.count == 5 && sequences.allSatisfy { $0 > head })
            let withSnapshot = { (sequence: Int64) in "\(sequence)~\(snapshot)" }
            let expected = [withSnapshot(sequences[0]), withSnapshot(sequences[2]), "\(sequences[4])"]

            let path = "/realtime/v1/plan/\(plan)?table=task"
            let stream = try await Self.open(client, path, as: .user(team.viewer), lastEventID: "\(head)~\(snapshot)")
            let frames = try await stream.waitForChanges(3)
            try await Task.sleep(for: .milliseconds(300))
            #expect(stream.changes.map(\.id) == expected)
            stream.close()

            // Reconnecting with the first id still skips transaction 102.
            let resumed = try await Self.open(client, path, as: .user(team.viewer), lastEventID: try #require(frames.first?.id))
            _ = try await resumed.waitForChanges(2)
            try await Task.sleep(for: .milliseconds(300))
            #expect(resumed.changes.map(\.id) == Array(expected.dropFirst()))
            resumed.close()

            // A poll gives the same ids, and a plain cursor to go on from.
            let poll = try await client.send(
                .get, "/realtime/v1/changes?channel=plan:\(plan)&table=task&after=\(head)~\(snapshot)", as: .user(team.viewer))
            #expect((poll.object["events"] as? [[String: Any]])?.compactMap { $0["id"] as? String } == expected, "\(poll.text)")
            #expect(poll.string("cursor") == "\(sequences[4])")
        }
    }

    @Test func pollingReturnsTheSameEventsAndLongPollsForNewOnes() async throws {
        let server = try await TestServer.make(changeFeed: true)
        try await server.testLive { client in
            let team = try await Team.make(client)
            let other = try await Team.make(client, name: "Other")
            let plan = try await team.makePlan(client)
            let otherPlan = try await other.makePlan(client)
            let task = try await team.makeTask(client, plan: plan)
            _ = try await other.makeTask(client, plan: otherPlan)
            let viewer = Principal.user(team.viewer)

            // The relay logs asynchronously: poll until the task's insert is there.
            var first = try await client.send(.get, "/realtime/v1/changes?channel=branch:\(team.branch)&table=task&wait=10", as: viewer)
            #expect(first.status == .ok)
            let events = first.object["events"] as? [[String: Any]] ?? []
            #expect(events.map { ($0["record"] as? [String: Any])?["id"] as? String } == [task.uuidString.lowercased()])
            #expect(events.first?["event"] as? String == "INSERT")
            #expect(events.first?["id"] as? String != nil)
            let cursor = try #require(first.string("cursor"))

            // Nothing new: an empty answer with the same cursor.
            first = try await client.send(.get, "/realtime/v1/changes?channel=branch:\(team.branch)&table=task&after=\(cursor)", as: viewer)
            #expect((first.object["events"] as? [Any])?.isEmpty == true)

            // A long poll answers as soon as something new is committed (on a connection of its own: the test client
            // sends one request at a time).
            var longPoll = HTTPClientRequest(
                url: client.baseURL + "/realtime/v1/changes?channel=branch:\(team.branch)&table=task&after=\(cursor)&wait=20"
            )
            longPoll.headers.add(name: "Authorization", value: "Bearer \(try await client.token(for: viewer))")
            let request = longPoll
            async let waiting = HTTPClient.shared.execute(request, timeout: .seconds(40))
            try await Task.sleep(for: .milliseconds(300))
            _ = try await client.send(.patch, "/rest/v1/tasks/\(task)", as: .user(team.editor), json: #"{"status":"done"}"#)
            let started = ContinuousClock.now
            let response = try await waiting
            let body = try await response.body.collect(upTo: 1 << 20)
            #expect(ContinuousClock.now - started < .seconds(10))
            let woken = (try? JSONSerialization.jsonObject(with: Data(buffer: body))) as? [String: Any] ?? [:]
            let update = (woken["events"] as? [[String: Any]])?.first
            #expect(update?["event"] as? String == "UPDATE")
            #expect((update?["old_record"] as? [String: Any])?["status"] as? String == "taken")

            // The same rules as streams: another branch is 404, bad parameters are 400.
            let hidden = try await client.send(.get, "/realtime/v1/changes?channel=branch:\(other.branch)", as: viewer)
            #expect(hidden.status == .notFound)
            for query in ["channel=branch:\(team.branch)&wait=31", "channel=branch:\(team.branch)&limit=0", "channel=nope", ""] {
                let bad = try await client.send(.get, "/realtime/v1/changes?\(query)", as: viewer)
                #expect(bad.status == .badRequest, "\(query)")
            }
        }
    }

    @Test func metricsCountEventsStreamsAndDelay() async throws {
        let server = try await TestServer.make(changeFeed: true)
        try await server.testLive { client in
            let team = try await Team.make(client)
            let plan = try await team.makePlan(client)
            let stream = try await Self.open(client, "/realtime/v1/plan/\(plan)", as: .user(team.viewer))
            _ = try await team.makeTask(client, plan: plan)
            // The plan's own INSERT may arrive first (the relay logs asynchronously): wait for the task's.
            try await stream.waitFor("the task's insert") { $0.contains { $0.table == "task" } }
            let open = try await client.send(.get, "/metrics", as: nil)
            #expect(open.status == .ok)
            #expect(open.headers[.contentType]?.hasPrefix("text/plain") == true)
            #expect(open.text.contains("realtime_open_streams 1"))
            #expect(Self.value(of: "realtime_events_in_total", in: open.text) ?? 0 >= 2)
            #expect(Self.value(of: "realtime_frames_out_total", in: open.text) ?? 0 >= 1)
            #expect(Self.value(of: #"realtime_delay_ms_count{table="task"}"#, in: open.text) ?? 0 >= 1, "\(open.text)")
            #expect(open.text.contains("realtime_relay_lag_bytes"))
            stream.close()
            // The server learns of the close when its next write or read fails: wait for it with a deadline.
            try await ChangeFeedFaultTests.waitUntil("the closed stream counted", timeout: .seconds(30)) {
                try await client.send(.get, "/metrics", as: nil).text.contains("realtime_open_streams 0")
            }
            let closed = try await client.send(.get, "/metrics", as: nil)
            #expect(closed.text.contains("realtime_open_streams 0"))
            #expect(Self.value(of: #"realtime_disconnects_total{reason="client_closed"}"#, in: closed.text) == 1)
        }
    }

    /// The value of a sample line `name value` in a Prometheus exposition.
    static func value(of sample: String, in text: String) -> Double? {
        text.split(separator: "\n").first { $0.hasPrefix(sample + " ") }.flatMap { Double($0.split(separator: " ").last ?? "") }
    }
}
