import Foundation
import HTTPTypes
import PostgresNIO
import Testing

@testable import EmbeddedCluster
@testable import Realtime

/// The policy across time, end to end: what a user may replay is what they could see when it happened, and a row that
/// moves away shows those it leaves only what they could already see.
/// One file over 400 lines because its tests share the helpers that replay a history and compare it with the truth.
@Suite struct PolicyOverTimeTests {
    static let service = Principal.service(actingUser: nil)

    /// Creates a client card as `editor` in `branch` and returns its id.
    static func makeCard(_ client: TestServer.Client, branch: UUID, editor: UUID, name: String, phone: String) async throws -> UUID {
        let id = UUID()
        let reply = try await client.send(
            .post,
            "/rest/v1/client_cards",
            as: .user(editor),
            json: #"{"id":"\#(id)","branch_id":"\#(branch)","name":"\#(name)","phone":"\#(phone)"}"#
        )
        try #require(reply.status == .created, "card: \(reply.text)")
        return id
    }

    /// Makes `user` a viewer of the team's branch, as its admin.
    static func addViewer(_ client: TestServer.Client, _ user: UUID, to team: Team) async throws {
        let reply = try await client.send(
            .put, "/rest/v1/branches/\(team.branch)/members/\(user)", as: .user(team.admin), json: #"{"role":"viewer"}"#)
        try #require(reply.status == .created, "member: \(reply.text)")
    }

    /// Every event of a poll from the start of the log, as `principal`.
    static func pollAll(_ client: TestServer.Client, channel: String, as principal: Principal) async throws -> [[String: Any]] {
        let reply = try await client.send(.get, "/realtime/v1/changes?channel=\(channel)&after=0&limit=1000", as: principal)
        try #require(reply.status == .ok, "poll: \(reply.text)")
        return reply.object["events"] as? [[String: Any]] ?? []
    }

    /// Waits until the service role's poll of `channel` shows a client card named `name`: the relay logs asynchronously.
    static func waitUntilLogged(_ client: TestServer.Client, channel: String, card name: String) async throws {
        let deadline = ContinuousClock.now + .seconds(30)
        while ContinuousClock.now < deadline {
            if try await pollAll(client, channel: channel, as: service).contains(where: { Self.names(of: $0).contains(name) }) { return }
            try await Task.sleep(for: .milliseconds(100))
        }
        Issue.record("the card \(name) did not reach the event log within 30 s")
    }

    /// The `name` of a polled event's record and old record.
    static func names(of event: [String: Any]) -> [String] {
        [event["record"], event["old_record"]].compactMap { ($0 as? [String: Any])?["name"] as? String }
    }

    @Test func replayShowsAUserOnlyWhatHappenedWhileTheyWereAMember() async throws {
        let server = try await TestServer.make(changeFeed: true)
        try await server.testLive { client in
            let team = try await Team.make(client)
            let newcomer = UUID()
            let created = try await client.send(.post, "/rest/v1/users", as: Self.service, json: #"{"id":"\#(newcomer)","display_name":"new"}"#)
            try #require(created.status == .created)
            let channel = "branch:\(team.branch.uuidString.lowercased())"

            // Before the newcomer joins: a card created and deleted (its DELETE carries the whole old row), and one kept.
            let secret = try await Self.makeCard(client, branch: team.branch, editor: team.editor, name: "Secret", phone: "+998 90 111")
            #expect(try await client.send(.delete, "/rest/v1/client_cards/\(secret)", as: .user(team.editor)).status == .noContent)
            _ = try await Self.makeCard(client, branch: team.branch, editor: team.editor, name: "Before", phone: "+998 90 222")
            try await Self.addViewer(client, newcomer, to: team)
            _ = try await Self.makeCard(client, branch: team.branch, editor: team.editor, name: "After", phone: "+998 90 333")
            try await Self.waitUntilLogged(client, channel: channel, card: "After")

            let polled = try await Self.pollAll(client, channel: channel, as: .user(newcomer)).flatMap(Self.names)
            #expect(polled.contains("After"))
            #expect(!polled.contains("Secret") && !polled.contains("Before"), "a poll from 0 replayed the past: \(polled)")

            let stream = try await ChangeFeedTests.open(client, "/realtime/v1/branch/\(team.branch)", as: .user(newcomer), lastEventID: "0")
            let frames = try await stream.waitFor("the card After") { $0.contains { $0.record["name"] as? String == "After" } }
            let streamed = frames.flatMap { [$0.record["name"], $0.oldRecord["name"]].compactMap { $0 as? String } }
            #expect(!streamed.contains("Secret") && !streamed.contains("Before"), "a resume from 0 replayed the past: \(streamed)")
            stream.close()

            // Out of the branch for a while, then back: what happened meanwhile stays hidden, before and after stay visible.
            let left = try await client.send(.delete, "/rest/v1/branches/\(team.branch)/members/\(newcomer)", as: .user(team.admin))
            try #require(left.status == .noContent)
            _ = try await Self.makeCard(client, branch: team.branch, editor: team.editor, name: "Gap", phone: "+998 90 444")
            try await Self.addViewer(client, newcomer, to: team)
            _ = try await Self.makeCard(client, branch: team.branch, editor: team.editor, name: "Back", phone: "+998 90 555")
            try await Self.waitUntilLogged(client, channel: channel, card: "Back")
            let again = try await Self.pollAll(client, channel: channel, as: .user(newcomer)).flatMap(Self.names)
            #expect(again.contains("After") && again.contains("Back"))
            #expect(!again.contains("Gap"), "a poll replayed what happened while the user was not a member: \(again)")
            #expect(!again.contains("Secret") && !again.contains("Before"))
        }
    }

    @Test func aRowThatMovesShowsTheBranchItLeavesOnlyTheRowAsItWas() async throws {
        let server = try await TestServer.make(changeFeed: true)
        try await server.testLive { client in
            let team = try await Team.make(client)
            let other = try await Team.make(client, name: "Other")
            let card = try await Self.makeCard(client, branch: team.branch, editor: team.editor, name: "Moving", phone: "+998 old")
            let left = try await ChangeFeedTests.open(client, "/realtime/v1/branch/\(team.branch)?table=client_card", as: .user(team.viewer))
            let entered = try await ChangeFeedTests.open(client, "/realtime/v1/branch/\(other.branch)?table=client_card", as: .user(other.viewer))

            // A move together with a change of a personal column, as one write.
            try await server.withOwnerConnection { connection in
                _ = try await connection.query(
                    "UPDATE client_card SET branch_id = \(other.branch), phone = '+998 new' WHERE id = \(card)", logger: server.logger)
            }
            let inserted = try await entered.waitFor("the INSERT") { $0.contains { $0.operation == "INSERT" } }
            #expect(inserted.first { $0.operation == "INSERT" }?.record["phone"] as? String == "+998 new")
            let frames = try await left.waitFor("the DELETE") { $0.contains { $0.operation == "DELETE" } }
            let delete = try #require(frames.first { $0.operation == "DELETE" })
            #expect(delete.oldRecord["phone"] as? String == "+998 old")
            #expect(delete.oldRecord["branch_id"] as? String == team.branch.uuidString.lowercased())
            #expect(delete.oldRecord["name"] as? String == "Moving")
            #expect(delete.record.isEmpty)
            #expect(!frames.contains { $0.data.contains("+998 new") || $0.data.contains(other.branch.uuidString.lowercased()) })

            // A poll shows the same.
            let polled = try await Self.pollAll(
                client, channel: "branch:\(team.branch.uuidString.lowercased())&table=client_card", as: .user(team.viewer))
            let polledDelete = try #require(polled.first { $0["event"] as? String == "DELETE" })
            #expect((polledDelete["old_record"] as? [String: Any])?["phone"] as? String == "+998 old")
            #expect(!polled.contains { "\($0)".contains("+998 new") })
            left.close()
            entered.close()
        }
    }

    // MARK: TRUNCATE

    /// Runs SQL with `psql` against the test database, as an operator would.
    static func psql(_ sql: String, on endpoint: DatabaseEndpoint) throws {
        let candidates =
            ["/usr/bin/psql"]
            + ((try? FileManager.default.contentsOfDirectory(atPath: "/usr/lib/postgresql")) ?? []).map {
                "/usr/lib/postgresql/\($0)/bin/psql"
            }
        let path = try #require(candidates.first { FileManager.default.isExecutableFile(atPath: $0) }, "no psql on this machine")
        let process = Process()
        process.executableURL = URL(fileURLWithPath: path)
        process.arguments = [
            "-X", "-q", "-v", "ON_ERROR_STOP=1", "-h", endpoint.host, "-p", "\(endpoint.port)", "-U", endpoint.username,
            "-d", endpoint.database, "-c", sql,
        ]
        var environment = ProcessInfo.processInfo.environment
        environment["PGPASSWORD"] = endpoint.password ?? ""
        process.environment = environment
        try process.run()
        process.waitUntilExit()
        try #require(process.terminationStatus == 0, "psql -c \(sql) exited with \(process.terminationStatus)")
    }

    @Test func aTruncateResetsTheStreamsAndPollsOfItsTable() async throws {
        let server = try await TestServer.make(changeFeed: true)
        try await server.testLive { client in
            let team = try await Team.make(client)
            let plan = try await team.makePlan(client)
            let everything = try await ChangeFeedTests.open(client, "/realtime/v1/branch/\(team.branch)", as: .user(team.viewer))
            let tasksOnly = try await ChangeFeedTests.open(client, "/realtime/v1/plan/\(plan)?table=task", as: .user(team.viewer))
            _ = try await team.makeTask(client, plan: plan, title: "before")
            let seen = try await everything.waitFor("the task") { $0.contains { $0.record["title"] as? String == "before" } }
            _ = try await tasksOnly.waitForChanges(1)
            let cursor = try #require(seen.last?.id)

            // The task's status history goes, by hand: every copy of it is stale, and only a snapshot can tell.
            try Self.psql("TRUNCATE status_history", on: server.endpoint)
            _ = try await everything.waitFor("reset") { $0.contains { $0.event == "reset" } }
            try await everything.waitUntilFinished()
            let after = try await team.makeTask(client, plan: plan, title: "after")
            let tasks = try await tasksOnly.waitFor("the next task") { $0.contains { $0.record["id"] as? String == after.uuidString.lowercased() } }
            #expect(!tasks.contains { $0.event == "reset" }, "a stream of tasks only was reset by a TRUNCATE of status_history")

            let polled = try await client.send(.get, "/realtime/v1/changes?channel=branch:\(team.branch)&after=\(cursor)", as: .user(team.viewer))
            #expect(polled.status == .ok)
            #expect(polled.object["reset"] as? Bool == true, "\(polled.text)")
            let resumed = try await ChangeFeedTests.open(client, "/realtime/v1/branch/\(team.branch)", as: .user(team.viewer), lastEventID: cursor)
            _ = try await resumed.waitFor("reset on resume") { $0.contains { $0.event == "reset" } }
            try await resumed.waitUntilFinished()
            tasksOnly.close()
        }
    }

    @Test(arguments: ["TRUNCATE branch_member", "TRUNCATE branch CASCADE"])
    func aTruncateOfTheMembershipsEndsEveryUsersStream(_ sql: String) async throws {
        let server = try await TestServer.make(changeFeed: true)
        try await server.testLive { client in
            let team = try await Team.make(client)
            let plan = try await team.makePlan(client)
            let viewer = try await ChangeFeedTests.open(client, "/realtime/v1/plan/\(plan)?table=task", as: .user(team.viewer))
            let watcher = try await ChangeFeedTests.open(client, "/realtime/v1/branch/\(team.branch)?table=task", as: Self.service)
            _ = try await team.makeTask(client, plan: plan)
            _ = try await viewer.waitForChanges(1)

            try Self.psql(sql, on: server.endpoint)
            let frames = try await viewer.waitFor("revoked") { $0.contains { $0.event == "revoked" } }
            try await viewer.waitUntilFinished()
            #expect(frames.last?.event == "revoked")
            let again = try await client.send(.get, "/realtime/v1/plan/\(plan)", as: .user(team.viewer))
            #expect(again.status == .notFound, "\(again.text)")
            #expect(!watcher.frames.contains { $0.event == "revoked" })
            watcher.close()
        }
    }

    @Test func afterATruncateOfTheMembershipsAUserReplaysNothingOfTheTimeTheyWereNoMember() async throws {
        let server = try await TestServer.make(changeFeed: true)
        try await server.testLive { client in
            let team = try await Team.make(client)
            // A poll of every table stops at the TRUNCATE (reset); one of client cards only reads on.
            let channel = "branch:\(team.branch.uuidString.lowercased())&table=client_card"
            _ = try await Self.makeCard(client, branch: team.branch, editor: team.editor, name: "Before", phone: "+998 1")
            try Self.psql("TRUNCATE branch_member", on: server.endpoint)
            let gap = try await client.send(
                .post, "/rest/v1/client_cards", as: Self.service, json: #"{"branch_id":"\#(team.branch)","name":"Gap"}"#)
            try #require(gap.status == .created, "\(gap.text)")
            for (user, role) in [(team.viewer, "viewer"), (team.editor, "editor")] {
                let back = try await client.send(
                    .put, "/rest/v1/branches/\(team.branch)/members/\(user)", as: Self.service, json: #"{"role":"\#(role)"}"#)
                try #require(back.status == .created)
            }
            _ = try await Self.makeCard(client, branch: team.branch, editor: team.editor, name: "After", phone: "+998 2")
            try await Self.waitUntilLogged(client, channel: channel, card: "After")
            let names = try await Self.pollAll(client, channel: channel, as: .user(team.viewer)).flatMap(Self.names)
            #expect(names == ["Before", "After"], "a poll replayed what happened while the TRUNCATE left the user no member: \(names)")
        }
    }

    // MARK: Presence and broadcast

    /// Waits until the feed has brought the viewer's membership to the hub: a task written now reaches her stream.
    static func waitUntilTheFeedCountsHerIn(_ client: TestServer.Client, team: Team, plan: UUID, stream: SSEClient) async throws {
        let task = try await team.makeTask(client, plan: plan, title: "barrier")
        _ = try await stream.waitFor("the barrier task") { $0.contains { $0.record["id"] as? String == task.uuidString.lowercased() } }
    }

    @Test func aPlanThatMovesTakesItsPresenceAndBroadcastsAwayFromTheBranchItLeft() async throws {
        let server = try await TestServer.make(changeFeed: true)
        try await server.testLive { client in
            let team = try await Team.make(client)
            let other = try await Team.make(client, name: "Other")
            let plan = try await team.makePlan(client)
            let path = "/realtime/v1/stream?channel=presence:plan:\(plan)&channel=plan:\(plan)"
            let leaving = try await ChangeFeedTests.open(client, path, as: .user(team.viewer))
            try await Self.waitUntilTheFeedCountsHerIn(client, team: team, plan: plan, stream: leaving)
            let heartbeat = #"{"state":{"slot":"mon-09","action":"viewing"}}"#
            #expect(try await client.send(.post, "/realtime/v1/presence/plan/\(plan)", as: .user(team.editor), json: heartbeat).status == .ok)
            _ = try await leaving.waitFor("the join") { $0.contains { $0.event == "presence" && $0.data.contains("join") } }

            try await server.withOwnerConnection { connection in
                _ = try await connection.query("UPDATE plan SET branch_id = \(other.branch) WHERE id = \(plan)", logger: server.logger)
            }
            _ = try await leaving.waitFor("revoked") { $0.contains { $0.event == "revoked" } }
            try await leaving.waitUntilFinished()
            // Its new branch's members are present and broadcast there; the old branch hears none of it.
            #expect(try await client.send(.post, "/realtime/v1/presence/plan/\(plan)", as: .user(other.editor), json: heartbeat).status == .ok)
            let message = #"{"event":"cursor","payload":{"x":1}}"#
            #expect(try await client.send(.post, "/realtime/v1/broadcast/plan/\(plan)", as: .user(other.editor), json: message).status == .accepted)
            #expect(!leaving.frames.contains { $0.data.contains(other.editor.uuidString.lowercased()) })
            let present = try await client.send(.get, "/realtime/v1/presence/plan/\(plan)", as: .user(other.viewer))
            #expect(!present.text.contains(team.editor.uuidString.lowercased()), "\(present.text)")
            for user in [team.viewer, team.editor] {
                let refused = try await client.send(.post, "/realtime/v1/presence/plan/\(plan)", as: .user(user), json: heartbeat)
                #expect(refused.status == .notFound)
            }
        }
    }

    @Test func aRevokedMemberCannotHeartbeatOrBroadcastWhileTheFeedLags() async throws {
        let server = try await TestServer.make(changeFeed: true)
        try await server.testLive { client in
            let team = try await Team.make(client)
            let plan = try await team.makePlan(client)
            let heartbeat = #"{"state":{"action":"viewing"}}"#
            #expect(try await client.send(.post, "/realtime/v1/presence/plan/\(plan)", as: .user(team.viewer), json: heartbeat).status == .ok)
            let stream = try await ChangeFeedTests.open(client, "/realtime/v1/plan/\(plan)", as: .user(team.viewer))
            try await Self.waitUntilTheFeedCountsHerIn(client, team: team, plan: plan, stream: stream)
            stream.close()
            try await server.withOwnerConnection { connection in
                // Hold the relay's appends: the feed, and so the hub's memberships, stop where they are.
                _ = try await connection.query("BEGIN", logger: server.logger)
                _ = try await connection.query("LOCK TABLE realtime.event_log IN EXCLUSIVE MODE", logger: server.logger)
                let removed = try await client.send(.delete, "/rest/v1/branches/\(team.branch)/members/\(team.viewer)", as: .user(team.admin))
                #expect(removed.status == .noContent)
                let beat = try await client.send(.post, "/realtime/v1/presence/plan/\(plan)", as: .user(team.viewer), json: heartbeat)
                #expect(beat.status == .forbidden, "\(beat.status) \(beat.text)")
                let message = #"{"event":"cursor","payload":{}}"#
                let sent = try await client.send(.post, "/realtime/v1/broadcast/plan/\(plan)", as: .user(team.viewer), json: message)
                #expect(sent.status == .forbidden, "\(sent.status) \(sent.text)")
                _ = try await connection.query("COMMIT", logger: server.logger)
            }
        }
    }

    // MARK: One user cannot slow the others

    @Test func eachUserHasABudgetOfWritesPollsAndStreamOpens() async throws {
        let server = try await TestServer.make(changeFeed: true) { $0.limitEveryUser(rate: 0.01, burst: 2) }
        try await server.testLive { client in
            let team = try await Team.make(client)  // as the service role, which is not limited
            let plan = try await team.makePlan(client)  // the editor's first write
            _ = try await team.makeTask(client, plan: plan)  // and second
            let refused = try await client.send(
                .post, "/rest/v1/tasks", as: .user(team.editor),
                json: #"{"plan_id":"\#(plan)","title":"Third","starts_at":"2026-11-30T09:00:00Z","ends_at":"2026-11-30T10:00:00Z"}"#)
            #expect(refused.status == .tooManyRequests)
            #expect(refused.errorCode == "rate_limited")
            #expect(Int(refused.headers[.retryAfter] ?? "") ?? 0 >= 1)
            let titles = try await client.send(.get, "/rest/v1/tasks?plan_id=eq.\(plan)", as: Self.service).array.compactMap {
                $0["title"] as? String
            }
            #expect(titles == ["Shift"], "a refused write changed something: \(titles)")
            // Another user's budget is their own; reads are not writes.
            #expect(try await client.send(.get, "/rest/v1/tasks?plan_id=eq.\(plan)", as: .user(team.editor)).status == .ok)
            let card = try await client.send(
                .post, "/rest/v1/client_cards", as: .user(team.admin), json: #"{"branch_id":"\#(team.branch)","name":"Admin's"}"#)
            #expect(card.status == .created)

            let poll = "/realtime/v1/changes?channel=branch:\(team.branch)"
            for _ in 0..<2 { #expect(try await client.send(.get, poll, as: .user(team.viewer)).status == .ok) }
            let tooMany = try await client.send(.get, poll, as: .user(team.viewer))
            #expect(tooMany.status == .tooManyRequests && tooMany.errorCode == "rate_limited")
            #expect(try await client.send(.get, poll, as: Self.service).status == .ok)

            let token = try await client.token(for: .user(team.viewer))
            var open: [SSEClient] = []
            for _ in 0..<2 {
                let stream = try await SSEClient.open(
                    client.baseURL + "/realtime/v1/branch/\(team.branch)", headers: [("Authorization", "Bearer \(token)")])
                #expect(stream.status == 200)
                open.append(stream)
            }
            let third = try await SSEClient.open(
                client.baseURL + "/realtime/v1/branch/\(team.branch)", headers: [("Authorization", "Bearer \(token)")])
            #expect(third.status == 429)
            try await third.waitUntilFinished()
            #expect(third.errorBody.contains("rate_limited"))
            #expect(third.header("Retry-After") != nil)
            for stream in open { stream.close() }
        }
    }

    /// Rows the plan's scans of `realtime.event_log` returned, from `EXPLAIN (ANALYZE, FORMAT JSON)`, loops counted.
    static func eventLogRowsRead(_ plan: Any) -> Double {
        var total = 0.0
        if let node = plan as? [String: Any] {
            if node["Relation Name"] as? String == "event_log" || (node["Index Name"] as? String)?.hasPrefix("event_log") == true {
                total += (node["Actual Rows"] as? Double ?? 0) * (node["Actual Loops"] as? Double ?? 1)
            }
            for child in node["Plans"] as? [Any] ?? [] { total += eventLogRowsRead(child) }
            if let inner = node["Plan"] { total += eventLogRowsRead(inner) }
        } else if let list = plan as? [Any] {
            for item in list { total += eventLogRowsRead(item) }
        }
        return total
    }

    @Test func aReplayReadsOnlyItsOwnChannelsEvents() async throws {
        let server = try await TestServer.make(changeFeed: true)
        try await server.testLive { client in
            let small = try await Team.make(client, name: "Small")
            let busy = try await Team.make(client, name: "Busy")
            let plan = try await small.makePlan(client)
            _ = try await small.makeTask(client, plan: plan)
            // Another branch's history: 20,000 events logged before the small branch's next one.
            try await server.withOwnerConnection { connection in
                _ = try await connection.query(
                    """
                    INSERT INTO realtime.event_log (commit_lsn, tx_index, xid, commit_time, table_name, op, branch_id, record, old_record)
                    SELECT '0/1'::pg_lsn + i, 0, 1000 + i, now(), 'client_card', 'INSERT', \(busy.branch),
                           json_build_object('id', gen_random_uuid(), 'branch_id', \(busy.branch), 'name', 'n' || i), '{}'
                    FROM generate_series(1, 20000) AS i
                    """,
                    logger: server.logger
                )
                // As autovacuum would: the planner's choice of index rests on the table's statistics.
                _ = try await connection.query("ANALYZE realtime.event_log", logger: server.logger)
            }
            let last = try await small.makeTask(client, plan: plan, title: "after the busy branch")
            let channel = "branch:\(small.branch.uuidString.lowercased())"
            var polled: [[String: Any]] = []
            var cursor = ""
            let deadline = ContinuousClock.now + .seconds(30)
            while ContinuousClock.now < deadline {
                let reply = try await client.send(.get, "/realtime/v1/changes?channel=\(channel)&after=0&limit=1000", as: .user(small.viewer))
                polled = reply.object["events"] as? [[String: Any]] ?? []
                cursor = reply.string("cursor") ?? ""
                if polled.contains(where: { ($0["record"] as? [String: Any])?["id"] as? String == last.uuidString.lowercased() }) { break }
                try await Task.sleep(for: .milliseconds(100))
            }
            #expect(polled.contains { ($0["record"] as? [String: Any])?["title"] as? String == "after the busy branch" })
            #expect(polled.allSatisfy { ($0["channels"] as? [String]) == [channel] }, "another branch's event in the answer")
            // The cursor moves past the other branch's events: the next poll starts after them.
            #expect((Int64(cursor) ?? 0) > 20_000, "cursor \(cursor)")

            // The statement a replay runs reads the small branch's events only, through the indexes.
            let query = EventLog.channelRead(after: 0, through: .max, limit: 1000, channels: [.branch(small.branch)], memberBranches: [small.branch])
            let rowsRead = try await server.withOwnerConnection { connection in
                let explained = try await connection.query(
                    PostgresQuery(unsafeSQL: "EXPLAIN (ANALYZE, FORMAT JSON) " + query.sql, binds: query.binds), logger: server.logger)
                var text = ""
                for try await row in explained { text = try row.decode(String.self) }
                return Self.eventLogRowsRead(try JSONSerialization.jsonObject(with: Data(text.utf8)))
            }
            #expect(rowsRead < 500, "the replay read \(rowsRead) rows of the event log for a branch of a few dozen events")
        }
    }

    // MARK: Operations

    @Test func readinessSaysWhenTheRelayStopsConfirmingTheWAL() async throws {
        let server = try await TestServer.make(changeFeed: true) { $0.readyMaxLagSeconds = 2 }
        try await server.testLive { client in
            @Sendable func waitForReadiness(_ status: HTTPResponse.Status, _ what: String) async throws -> TestServer.Client.Reply {
                let deadline = ContinuousClock.now + .seconds(60)
                while ContinuousClock.now < deadline {
                    let reply = try await client.send(.get, "/readyz", as: nil)
                    if reply.status == status { return reply }
                    try await Task.sleep(for: .milliseconds(200))
                }
                Issue.record("readyz did not answer \(status) (\(what)) within 60 s")
                return try await client.send(.get, "/readyz", as: nil)
            }
            _ = try await waitForReadiness(.ok, "the feed started")
            let metrics = try await client.send(.get, "/metrics", as: nil)
            #expect(metrics.text.contains("realtime_slot_retained_wal_bytes "), "the slot's retained WAL is on /metrics")
            let team = try await Team.make(client)
            try await server.withOwnerConnection { connection in
                // Hold the relay's appends while a change waits in the WAL.
                _ = try await connection.query("BEGIN", logger: server.logger)
                _ = try await connection.query("LOCK TABLE realtime.event_log IN EXCLUSIVE MODE", logger: server.logger)
                _ = try await team.makePlan(client)
                let stalled = try await waitForReadiness(.serviceUnavailable, "the relay held")
                #expect(stalled.errorCode == "not_ready")
                #expect(stalled.text.contains("relay"), "\(stalled.text)")
                _ = try await connection.query("COMMIT", logger: server.logger)
            }
            _ = try await waitForReadiness(.ok, "the relay caught up")
        }
    }

    @Test func idempotencyKeysAreCappedPerUser() async throws {
        let server = try await TestServer.make()
        try await server.test { client in
            let team = try await Team.make(client)
            let owner = Principal.user(team.editor).key
            // 10,000 keys already, the oldest first (written as the table's owner, without the cap's trigger, for speed).
            try await server.withOwnerConnection { connection in
                _ = try await connection.query("ALTER TABLE realtime.idempotency_key DISABLE TRIGGER idempotency_key_cap", logger: server.logger)
                _ = try await connection.query(
                    """
                    INSERT INTO realtime.idempotency_key (owner, key, request_hash, status, response, created_at)
                    SELECT \(owner), 'old-' || lpad(i::text, 5, '0'), 'h', 201, '{}', now() - interval '1 hour' + i * interval '1 ms'
                    FROM generate_series(1, 10000) AS i
                    """,
                    logger: server.logger
                )
                _ = try await connection.query("ALTER TABLE realtime.idempotency_key ENABLE TRIGGER idempotency_key_cap", logger: server.logger)
            }
            for index in 0..<3 {
                var headers = HTTPFields()
                headers[Idempotency.header] = "new-\(index)"
                let reply = try await client.send(
                    .post, "/rest/v1/client_cards", as: .user(team.editor), json: #"{"branch_id":"\#(team.branch)","name":"c\#(index)"}"#,
                    headers: headers)
                #expect(reply.status == .created)
            }
            let keys = try await server.withOwnerConnection { connection in
                var keys: [String] = []
                let rows = try await connection.query(
                    "SELECT key FROM realtime.idempotency_key WHERE owner = \(owner) ORDER BY created_at, key", logger: server.logger)
                for try await key in rows.decode(String.self) { keys.append(key) }
                return keys
            }
            #expect(keys.count == 10_000)
            #expect(keys.prefix(3) == ["old-00004", "old-00005", "old-00006"])
            #expect(keys.suffix(3) == ["new-0", "new-1", "new-2"])
        }
    }

    @Test func aSlotPostgreSQLInvalidatedIsRecreatedAndEveryStreamReloads() async throws {
        // A cluster of its own: it is told to keep almost no WAL for slots.
        let cluster = EmbeddedPostgres(directory: TestCluster.makeScratchDirectory(), logger: TestCluster.logger)
        _ = try await cluster.start()
        defer { cluster.stopImmediatelyBlocking() }
        let database = try await cluster.createDatabase(named: "invalidated")
        // First a node without a relay: nothing reads the slot while WAL piles up.
        let held = try await TestServer.make(on: database, changeFeed: true) { $0.runsRelay = false }
        try await held.testLive { client in
            let team = try await Team.make(client)
            let stream = try await ChangeFeedTests.open(client, "/realtime/v1/branch/\(team.branch)", as: Self.service)
            let slot = Relay.slotName(for: database.database)
            try await held.withOwnerConnection { connection in
                _ = try await connection.query("ALTER SYSTEM SET max_slot_wal_keep_size = '1MB'", logger: held.logger)
                _ = try await connection.query("SELECT pg_reload_conf()", logger: held.logger)
                _ = try await connection.query(
                    "CREATE TABLE filler AS SELECT repeat(md5(i::text), 40) AS x FROM generate_series(1, 50000) AS i", logger: held.logger)
            }
            try await ChangeFeedFaultTests.waitUntil("PostgreSQL to invalidate the slot", timeout: .seconds(60)) {
                try await held.withOwnerConnection { connection in
                    _ = try await connection.query("CHECKPOINT", logger: held.logger)
                    let rows = try await connection.query(
                        "SELECT coalesce(wal_status = 'lost', false) FROM pg_replication_slots WHERE slot_name = \(slot)", logger: held.logger)
                    for try await lost in rows.decode(Bool.self) { return lost }
                    return false
                }
            }
            // A node with a relay starts: it recreates the slot, and every stream (on any node) is told to reload.
            let relaying = try await TestServer.make(on: database, changeFeed: true)
            try await relaying.testLive { _ in
                let frames = try await stream.waitFor("reset", timeout: .seconds(90)) { $0.contains { $0.event == "reset" } }
                #expect(frames.last?.event == "reset")
                try await stream.waitUntilFinished()
                // The feed goes on from the new slot.
                let plan = try await team.makePlan(client, title: "after the new slot")
                let polled = try await client.send(
                    .get, "/realtime/v1/changes?channel=plan:\(plan)&after=0&wait=20", as: Self.service)
                #expect(polled.object["reset"] as? Bool == true, "a poll from before the lost changes is told to reload: \(polled.text)")
                let cursor = try #require(polled.string("cursor"))
                let after = try await client.send(.get, "/realtime/v1/changes?channel=plan:\(plan)&after=\(cursor)&wait=20", as: Self.service)
                #expect(
                    (after.object["events"] as? [[String: Any]])?.contains {
                        ($0["record"] as? [String: Any])?["title"] as? String == "after the new slot"
                    } == true, "\(after.text)")
            }
        }
    }
}
