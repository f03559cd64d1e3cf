import Foundation
import HTTPTypes
import Hummingbird
import HummingbirdTesting
import Logging
import NIOCore
import PostgresNIO
import Synchronization
import Testing

@testable import Realtime

#if canImport(Glibc)
    import Glibc
#elseif canImport(Musl)
    import Musl
#elseif canImport(Darwin)
    import Darwin
#endif

/// The change feed under faults: connections of the relay killed, a relay node stopped while another runs, resuming on
/// another node, transactions that commit in another order than they began, a reader too slow for the stream, tokens
/// that expire, and the options and channels of one stream. Real PostgreSQL, real servers on real ports, real sockets.
/// (These were once gated off: a statement written to a pooled connection they had just killed was never answered, so the
/// server's pool waited forever for its lease at shutdown. `PostgresConnection.queryIfOpen` ended that; see
/// ConnectionLossTests.)
/// One file over 400 lines because every fault is tried on the same setup: nodes, a shared database, streams.
@Suite(.timeLimit(.minutes(5)))
struct ChangeFeedFaultTests {
    /// What a test kills of the server's database connections.
    enum RelayConnection: String, Sendable, CaseIterable, CustomStringConvertible {
        /// The walsender: the replication connection that streams the slot.
        case walsender
        /// The session that holds the relay's advisory lock and writes the event log.
        case lockHolder
        /// Every connection of the server: the relay's two, the tailer's LISTEN, the pool's.
        case everyConnection

        var description: String { rawValue }
    }

    // MARK: - 1. A connection of the relay is killed

    @Test(arguments: RelayConnection.allCases)
    func killingARelayConnectionLosesAndRepeatsNothing(_ victim: RelayConnection) async throws {
        let server = try await TestServer.make(changeFeed: true)
        try await server.testLive { client in
            try await Self.waitForRelay(server)
            let team = try await Team.make(client)
            let plan = try await team.makePlan(client)
            let before = try await Self.open(client, "/realtime/v1/plan/\(plan)?table=task", as: .user(team.viewer))

            // A writer inserts tasks one after another, before, while and after the relay's connection is killed three
            // times. When every
            // connection of the server is killed, a request in flight fails with its pooled connection: then the writer
            // goes around the server, with SQL.
            let progress = Locked(0)
            let faultsOver = Locked<Int?>(nil)
            let killed = Locked<[[Int64]]>([])
            let inserted = try await withThrowingTaskGroup(of: [UUID].self) { group in
                group.addTask {
                    guard victim == .everyConnection else {
                        return try await Self.keepWriting(progress, until: faultsOver) { index in
                            try await team.makeTask(client, plan: plan, title: "task \(index)")
                        }
                    }
                    return try await server.withOwnerConnection { connection in
                        try await Self.keepWriting(progress, until: faultsOver) { index in
                            let id = UUID()
                            try await connection.query(Self.insertTask(id, team: team, plan: plan, title: "task \(index)"), logger: server.logger)
                            return id
                        }
                    }
                }
                group.addTask {
                    for threshold in [8, 22, 36] {
                        try await Self.waitUntil("\(threshold) tasks written", timeout: .seconds(60)) { progress.value >= threshold }
                        // Kill it only once it is up again, so that every kill hits a working relay.
                        try await Self.waitUntil("the relay to stream again", timeout: .seconds(30)) {
                            try await Self.relayIsUp(server)
                        }
                        if victim == .everyConnection {
                            // The tailer's listener reconnects on its own schedule: wait for it too, so that every kill
                            // hits the relay's lock, its walsender and the listener.
                            try await Self.waitUntil("the relay and the listener to be connected", timeout: .seconds(30)) {
                                try await Self.serverConnections(server).count >= 3
                            }
                        }
                        let victims: [Int64]
                        switch victim {
                        case .walsender: victims = try await Self.walsenders(server)
                        case .lockHolder: victims = try await Self.relayLockHolders(server)
                        case .everyConnection: victims = try await Self.serverConnections(server)
                        }
                        let pids = try await Self.terminate(victims, server)
                        killed.update { $0.append(pids) }
                    }
                    faultsOver.update { $0 = progress.value }
                    return []
                }
                var inserted: [UUID] = []
                for try await ids in group where !ids.isEmpty { inserted = ids }
                return inserted
            }
            let taskCount = inserted.count
            try #require(taskCount >= 50)
            let kills = killed.value
            #expect(kills.count == 3)
            if victim == .everyConnection {
                // At least the relay's lock and walsender and the tailer's LISTEN, each time.
                #expect(kills.allSatisfy { $0.count >= 3 }, "terminated: \(kills)")
            } else {
                #expect(kills.allSatisfy { $0.count == 1 }, "each kill should have terminated one \(victim): \(kills)")
            }
            let expected = inserted.map { $0.uuidString.lowercased() }

            // The stream that was open throughout has every task once, in commit order.
            try await before.waitFor("all \(taskCount) tasks on the open stream", timeout: .seconds(90)) {
                Self.taskInserts($0).count >= taskCount
            }
            try await Task.sleep(for: .seconds(1.5))  // room for a late duplicate to show up
            #expect(Self.taskInserts(before.frames) == expected)
            Self.expectIncreasingIDs(before.changes)

            // A stream that replays the whole log has the same.
            let replay = try await Self.open(client, "/realtime/v1/plan/\(plan)?table=task&last_event_id=0", as: .user(team.viewer))
            try await replay.waitFor("all \(taskCount) tasks replayed", timeout: .seconds(30)) { Self.taskInserts($0).count >= taskCount }
            try await Task.sleep(for: .seconds(1))
            #expect(Self.taskInserts(replay.frames) == expected)
            Self.expectIncreasingIDs(replay.changes)
            #expect(replay.changes.map(\.id) == before.changes.map(\.id))

            try await Self.expectLogMatchesTables(server, taskInserts: taskCount)
            // The relay is back: it holds the lock and streams the slot; and the tailer listens again.
            try await Self.waitUntil("the relay to stream again", timeout: .seconds(30)) {
                try await Self.relayIsUp(server)
            }
            let listeners = try await Self.int64s(
                server,
                "SELECT pid::bigint FROM pg_stat_activity WHERE datname = current_database() AND application_name = 'realtime' AND query LIKE 'LISTEN %'"
            )
            #expect(listeners.count == 1 && !kills.joined().contains(listeners[0]), "the tailer's LISTEN connection: \(listeners)")
            before.close()
            replay.close()
        }
    }

    /// The relay backs off when it fails again and again, but one that was relaying again in between starts over from
    /// the shortest delay: every failure of a working relay costs a fraction of a second, not the longest backoff.
    @Test func aRelayThatKeepsLosingItsStreamComesBackPromptlyEveryTime() async throws {
        let server = try await TestServer.make(changeFeed: true)
        try await server.testLive { client in
            try await Self.waitForRelay(server)
            let team = try await Team.make(client)
            let plan = try await team.makePlan(client)
            let stream = try await Self.open(client, "/realtime/v1/plan/\(plan)?table=task", as: .user(team.viewer))
            var written: [UUID] = []
            var recoveries: [Duration] = []
            for round in 0..<8 {
                // The relay works: a task written now arrives.
                let task = try await team.makeTask(client, plan: plan, title: "round \(round)")
                written.append(task)
                try await stream.waitFor("the task of round \(round)", timeout: .seconds(30)) {
                    Self.taskInserts($0).contains(task.uuidString.lowercased())
                }
                let killed = try await Self.terminate(Self.walsenders(server), server)
                try #require(killed.count == 1, "round \(round): no walsender to kill")
                let start = ContinuousClock.now
                try await Self.waitUntil("the relay to stream again after round \(round)", timeout: .seconds(60)) {
                    let streaming = try await Self.walsenders(server)
                    guard !streaming.isEmpty, !streaming.contains(killed[0]) else { return false }
                    return try await Self.relayIsUp(server)
                }
                recoveries.append(ContinuousClock.now - start)
            }
            // Without the reset the waits would double each round up to the 5 s maximum (0.2, 0.4, … 3.2, 5, 5, 5 s), so
            // each of the last rounds would take longer than 5 s whatever the machine. With it each waits 0.2 s plus the
            // time to reconnect, which a busy machine stretches now and then: one of the last three under 5 s is enough.
            let lastRounds = recoveries.suffix(3)
            #expect(lastRounds.min().map { $0 < Relay.maximumBackoff } == true, "time to stream again after each failure: \(recoveries)")
            try await Task.sleep(for: .seconds(1))
            #expect(Self.taskInserts(stream.frames) == written.map { $0.uuidString.lowercased() })
            try await Self.expectLogMatchesTables(server, taskInserts: written.count)
            stream.close()
        }
    }

    // MARK: - 2. The relay's node stops; another takes over

    @Test func anotherNodeTakesOverWhenTheRelayNodeStops() async throws {
        let server = try await TestServer.make(changeFeed: true)
        let nodeA = try await TestNode.start(server)
        var nodeB: TestNode?
        do {
            // Node A alone first, so that it is the relay; then node B, which follows.
            try await Self.waitForRelay(server)
            let leaderA = try #require(try await Self.relayLockHolders(server).first)
            let b = try await TestNode.start(server)
            nodeB = b
            let client = b.client
            let team = try await Team.make(client)
            let plan = try await team.makePlan(client)
            let stream = try await Self.open(client, "/realtime/v1/plan/\(plan)?table=task", as: .user(team.viewer))
            #expect(try await Self.relayLockHolders(server) == [leaderA], "node B must not take the lead while node A holds it")

            // A writer through node B, paced so that it is still writing when node A has stopped, and 15 tasks more.
            let written = Locked<[UUID]>([])
            let writtenWhenStopped = Locked<Int?>(nil)
            let writer = Task {
                for index in 0..<1000 {
                    let id = try await team.makeTask(client, plan: plan, title: "task \(index)")
                    written.update { $0.append(id) }
                    if let stopped = writtenWhenStopped.value, index + 1 >= stopped + 15 { break }
                    try await Task.sleep(for: .milliseconds(50))
                }
            }
            do {
                try await Self.waitUntil("10 tasks written", timeout: .seconds(60)) { written.value.count >= 10 }
                try await nodeA.stop()
                let writtenAtStop = written.value.count
                writtenWhenStopped.update { $0 = writtenAtStop }
                // A task committed after node A is gone must come through node B's relay within its retry interval.
                try await Self.waitUntil("a task written after node A stopped", timeout: .seconds(60)) {
                    written.value.count > writtenAtStop
                }
                let afterStop = written.value[writtenAtStop].uuidString.lowercased()
                try await stream.waitFor("the first task written after node A stopped", timeout: .seconds(12)) {
                    Self.taskInserts($0).contains(afterStop)
                }
                try await writer.value
            } catch {
                writer.cancel()
                throw error
            }

            let expected = written.value.map { $0.uuidString.lowercased() }
            let taskCount = expected.count
            try #require(taskCount >= 25)
            try await stream.waitFor("all \(taskCount) tasks", timeout: .seconds(60)) { Self.taskInserts($0).count >= taskCount }
            try await Task.sleep(for: .seconds(1.5))
            #expect(Self.taskInserts(stream.frames) == expected)
            Self.expectIncreasingIDs(stream.changes)
            let leaders = try await Self.relayLockHolders(server)
            #expect(leaders.count == 1 && leaders != [leaderA], "node B should hold the relay lock now: \(leaders) (was \(leaderA))")
            try await Self.expectLogMatchesTables(server, taskInserts: taskCount)
            stream.close()
            try await b.stop()
        } catch {
            await nodeA.stopAfterFailure()
            await nodeB?.stopAfterFailure()
            throw error
        }
    }

    // MARK: - 3. Resuming on another node

    @Test func aStreamResumesOnAnotherNodeWithExactlyWhatItMissed() async throws {
        let server = try await TestServer.make(changeFeed: true)
        let nodeA = try await TestNode.start(server)
        var nodeB: TestNode?
        do {
            let b = try await TestNode.start(server)
            nodeB = b
            try await Self.waitForRelay(server)
            let team = try await Team.make(nodeA.client)
            let plan = try await team.makePlan(nodeA.client)
            let path = "/realtime/v1/plan/\(plan)?table=task"

            let first = try await Self.open(nodeA.client, path, as: .user(team.viewer))
            var seen: [UUID] = []
            for index in 0..<3 { seen.append(try await team.makeTask(nodeA.client, plan: plan, title: "seen \(index)")) }
            let frames = try await first.waitForChanges(3, timeout: .seconds(30))
            first.close()
            #expect(Self.taskInserts(frames) == seen.map { $0.uuidString.lowercased() })
            let lastID = try #require(frames.last?.id)

            // Missed while away, written through both nodes.
            var missed: [UUID] = []
            for index in 0..<4 {
                let node = index.isMultiple(of: 2) ? b : nodeA
                missed.append(try await team.makeTask(node.client, plan: plan, title: "missed \(index)"))
            }
            let resumed = try await Self.open(b.client, path, as: .user(team.viewer), lastEventID: lastID)
            missed.append(try await team.makeTask(nodeA.client, plan: plan, title: "live"))
            try await resumed.waitForChanges(missed.count, timeout: .seconds(30))
            try await Task.sleep(for: .seconds(1))
            #expect(Self.taskInserts(resumed.frames) == missed.map { $0.uuidString.lowercased() })
            #expect(resumed.changes.count == missed.count)
            Self.expectIncreasingIDs(resumed.changes)
            #expect(resumed.changes.allSatisfy { Int64($0.id ?? "") ?? 0 > Int64(lastID) ?? .max })
            resumed.close()
            try await b.stop()
            try await nodeA.stop()
        } catch {
            await nodeA.stopAfterFailure()
            await nodeB?.stopAfterFailure()
            throw error
        }
    }

    // MARK: - 4. Commit order is not transaction id order

    @Test func eventsFollowCommitOrderNotTransactionIDOrder() async throws {
        let server = try await TestServer.make(changeFeed: true)
        try await server.testLive { client in
            try await Self.waitForRelay(server)
            let team = try await Team.make(client)
            let plan = try await team.makePlan(client)
            let stream = try await Self.open(client, "/realtime/v1/plan/\(plan)?table=task", as: .user(team.viewer))
            let older = UUID()
            let newer = UUID()
            let logger = server.logger
            let snapshot = try await server.withOwnerConnection { first in
                try await server.withOwnerConnection { second in
                    // The first transaction takes its xid first, the second commits first.
                    try await first.query("BEGIN", logger: logger)
                    try await first.query(Self.insertTask(older, team: team, plan: plan, title: "older xid"), logger: logger)
                    let olderXID = try await Self.int64(first, "SELECT txid_current()", logger: logger)
                    try await second.query("BEGIN", logger: logger)
                    try await second.query(Self.insertTask(newer, team: team, plan: plan, title: "newer xid"), logger: logger)
                    let newerXID = try await Self.int64(second, "SELECT txid_current()", logger: logger)
                    try #require(olderXID < newerXID)
                    try await second.query("COMMIT", logger: logger)
                    // The newer transaction streams while the older one is still open.
                    try await stream.waitFor("the newer transaction, committed first", timeout: .seconds(30)) {
                        Self.taskInserts($0).contains(newer.uuidString.lowercased())
                    }
                    // A snapshot taken now has the newer row and not the older one.
                    let snapshot = try await client.send(.get, "/rest/v1/plans/\(plan)/snapshot", as: .user(team.viewer))
                    try await first.query("COMMIT", logger: logger)
                    return snapshot
                }
            }
            try await stream.waitFor("the older transaction", timeout: .seconds(30)) { Self.taskInserts($0).count >= 2 }
            try await Task.sleep(for: .seconds(1))
            #expect(Self.taskInserts(stream.frames) == [newer, older].map { $0.uuidString.lowercased() })
            Self.expectIncreasingIDs(stream.changes)

            // The log agrees: the newer transaction first.
            let sequences = try await Self.int64s(
                server,
                "SELECT seq FROM realtime.event_log WHERE table_name = 'task' AND task_id IN (\(older), \(newer)) ORDER BY seq"
            )
            let newerFirst = try await Self.int64s(
                server,
                "SELECT seq FROM realtime.event_log WHERE table_name = 'task' AND task_id = \(newer)"
            )
            #expect(sequences.count == 2 && sequences.first == newerFirst.first)

            // Resuming after the newer one's id brings the older one, and only it.
            let newerID = try #require(stream.changes.first?.id)
            let resumed = try await Self.open(client, "/realtime/v1/plan/\(plan)?table=task", as: .user(team.viewer), lastEventID: newerID)
            try await resumed.waitForChanges(1, timeout: .seconds(30))
            try await Task.sleep(for: .milliseconds(500))
            #expect(Self.taskInserts(resumed.frames) == [older.uuidString.lowercased()])

            // The snapshot plus the stream from its cursor: the older row comes, the newer one does not come again.
            #expect(snapshot.status == .ok)
            let snapshotTasks = (snapshot.object["tasks"] as? [[String: Any]] ?? []).compactMap { $0["id"] as? String }
            #expect(snapshotTasks == [newer.uuidString.lowercased()])
            let cursor = try #require(snapshot.string("cursor"))
            let fromSnapshot = try await Self.open(client, "/realtime/v1/plan/\(plan)?table=task", as: .user(team.viewer), lastEventID: cursor)
            try await fromSnapshot.waitForChanges(1, timeout: .seconds(30))
            try await Task.sleep(for: .milliseconds(500))
            #expect(Self.taskInserts(fromSnapshot.frames) == [older.uuidString.lowercased()], "cursor \(cursor)")
            stream.close()
            resumed.close()
            fromSnapshot.close()
        }
    }

    // MARK: - 5. A reader too slow for the stream

    @Test func aSlowReaderIsCutOffAndResumesWithoutLoss() async throws {
        let base = try await TestServer.make(changeFeed: true)
        var configuration = base.configuration
        configuration.subscriberBufferLimit = 16
        let server = TestServer(endpoint: base.endpoint, tokens: base.tokens, configuration: configuration, logger: base.logger)
        try await server.testLive { client in
            try await Self.waitForRelay(server)
            let team = try await Team.make(client)
            let token = try await client.token(for: .user(team.viewer))
            let path = "/realtime/v1/branch/\(team.branch)?table=client_card"
            let port = try #require(client.client.port)

            // A reader that sends its request, then reads nothing, with a tiny receive buffer.
            let socket = try RawSocket(port: port, receiveBuffer: 4096)
            defer { socket.close() }
            try socket.send("GET \(path) HTTP/1.1\r\nHost: 127.0.0.1\r\nAccept: text/event-stream\r\nAuthorization: Bearer \(token)\r\n\r\n")
            // Wait until the stream is set up: the response head and the retry hint arrive at once.
            var received = try await socket.read(until: .seconds(30)) { String(decoding: $0, as: UTF8.self).contains("retry:") }

            // Four hundred cards of ~9 kB each, in four transactions: megabytes, far more than the socket buffers.
            let cardCount = 400
            try await server.withOwnerConnection { connection in
                for batch in 0..<4 {
                    try await connection.query(
                        """
                        INSERT INTO client_card (branch_id, name, notes)
                        SELECT \(team.branch), 'card ' || lpad(i::text, 4, '0'), repeat(md5(i::text), 280)
                        FROM generate_series(\(batch * 100 + 1), \(batch * 100 + 100)) AS i
                        """,
                        logger: server.logger
                    )
                }
            }
            try await Self.waitUntil("all cards logged", timeout: .seconds(60)) {
                try await Self.int64s(server, "SELECT count(*) FROM realtime.event_log WHERE table_name = 'client_card'") == [Int64(cardCount)]
            }
            // The tailer hands them to the fan-out, which ends the reader as slow once its buffer is full. Reading now,
            // before they all got there, could let the reader keep up: wait for the fan-out's own count, not a guess.
            try await Self.waitUntil("all cards at the fan-out", timeout: .seconds(60)) {
                let metrics = try await client.send(.get, "/metrics", as: nil)
                return ChangeFeedTests.value(of: #"realtime_delay_ms_count{table="client_card"}"#, in: metrics.text) ?? 0 >= Double(cardCount)
            }

            // Now read: what was sent, then the end for being too slow, then the end of the response (its last chunk).
            received += try await socket.read(until: .seconds(60)) { $0.suffix(7).elementsEqual("\r\n0\r\n\r\n".utf8) }
            let response = RawSocket.decodeHTTP(received)
            #expect(response.status == 200)
            #expect(response.complete, "the server should end the response of a stream it cut off")
            var parser = FrameParser()
            let frames = parser.feed(response.body)
            let changes = frames.filter { $0.event == "postgres_changes" }
            let last = try #require(frames.last)
            #expect(last.event == "error" && last.data.contains("slow_consumer"), "the stream should end as slow: \(last)")
            #expect(changes.count < cardCount, "the slow reader should have been cut off before it got everything")
            Self.expectIncreasingIDs(changes)

            // Resuming from the last id it got brings the rest, with nothing lost or repeated.
            let resumeFrom = changes.last?.id ?? "0"
            let resumed = try await Self.open(client, path, as: .user(team.viewer), lastEventID: resumeFrom)
            try await resumed.waitForChanges(cardCount - changes.count, timeout: .seconds(60))
            try await Task.sleep(for: .seconds(1))
            let names = (changes + resumed.changes).map { $0.record["name"] as? String ?? "?" }
            #expect(names == (1...cardCount).map { "card " + String(repeating: "0", count: 4 - String($0).count) + String($0) })
            Self.expectIncreasingIDs(changes + resumed.changes)
            resumed.close()
        }
    }

    // MARK: - 6. Token expiry

    @Test func aStreamEndsWhenItsTokenExpires() async throws {
        let server = try await TestServer.make(changeFeed: true)
        try await server.testLive { client in
            try await Self.waitForRelay(server)
            let team = try await Team.make(client)
            let plan = try await team.makePlan(client)
            let issued = ContinuousClock.now
            let token = try await client.tokens.issue(subject: team.viewer.uuidString.lowercased(), role: .authenticated, lifetime: 2)
            let stream = try await SSEClient.open(
                client.baseURL + "/realtime/v1/plan/\(plan)?table=task",
                headers: [("Authorization", "Bearer \(token)")]
            )
            try #require(stream.status == 200, "\(stream.errorBody)")
            try await stream.waitFor("token_expired", timeout: .seconds(15)) { $0.contains { $0.event == "token_expired" } }
            let elapsed = ContinuousClock.now - issued
            // JWT expiry has whole seconds, and the sweep runs every second: from 1 s to 3 s, plus slack for a slow machine.
            #expect(elapsed >= .seconds(1), "ended too early: \(elapsed)")
            #expect(elapsed <= .seconds(7), "ended too late: \(elapsed)")
            try await stream.waitUntilFinished(timeout: .seconds(10))
            let end = try #require(stream.frames.last)
            #expect(end.event == "token_expired")
            #expect(end.data.contains(#""type":"token_expired""#))

            // Nothing arrives after the end, and the expired token opens no new stream.
            _ = try await team.makeTask(client, plan: plan, title: "after expiry")
            try await Task.sleep(for: .milliseconds(500))
            #expect(stream.frames.last?.event == "token_expired")
            let again = try await SSEClient.open(
                client.baseURL + "/realtime/v1/plan/\(plan)",
                headers: [("Authorization", "Bearer \(token)")]
            )
            #expect(again.status == 401)
        }
    }

    // MARK: - 7. Options and multiplexing

    @Test func optionsSelectExactlyTheMatchingEventsOfEveryChannel() async throws {
        let server = try await TestServer.make(changeFeed: true)
        try await server.testLive { client in
            try await Self.waitForRelay(server)
            let team = try await Team.make(client)
            let planA = try await team.makePlan(client, title: "A")
            let planB = try await team.makePlan(client, title: "B")
            let planC = try await team.makePlan(client, title: "C")
            let stream = try await Self.open(
                client,
                "/realtime/v1/stream?channel=plan:\(planA)&channel=plan:\(planB)&table=task&event=INSERT,UPDATE&filter=status=eq.done",
                as: .user(team.viewer)
            )
            let editor = Principal.user(team.editor)
            let a1 = try await team.makeTask(client, plan: planA, title: "a1")  // taken: no
            let a2 = try await Self.postTask(client, team, plan: planA, title: "a2", status: "done")  // INSERT
            try await Self.patch(client, "/rest/v1/tasks/\(a1)", as: editor, #"{"status":"done"}"#)  // UPDATE
            try await Self.patch(client, "/rest/v1/tasks/\(a1)", as: editor, #"{"title":"a1 renamed"}"#)  // UPDATE, still done
            try await Self.patch(client, "/rest/v1/tasks/\(a1)", as: editor, #"{"status":"posted"}"#)  // posted: no
            #expect(try await client.send(.delete, "/rest/v1/tasks/\(a2)", as: editor).status == .noContent)  // DELETE: no
            _ = try await Self.postTask(client, team, plan: planC, title: "c1", status: "done")  // other plan: no
            let b1 = try await Self.postTask(client, team, plan: planB, title: "b1", status: "done")  // INSERT
            try await Self.patch(client, "/rest/v1/plans/\(planB)", as: editor, #"{"title":"B renamed"}"#)  // plan table: no
            _ = try await team.makeTask(client, plan: planB, title: "b2")  // taken: no
            let marker = try await Self.postTask(client, team, plan: planB, title: "marker", status: "done")  // INSERT

            try await stream.waitFor("the marker", timeout: .seconds(30)) { frames in
                frames.contains { $0.record["id"] as? String == marker.uuidString.lowercased() }
            }
            try await Task.sleep(for: .seconds(1))
            let got = stream.changes.map { "\($0.operation ?? "?") \($0.record["title"] as? String ?? "?") \($0.channels)" }
            let a = "plan:\(planA.uuidString.lowercased())"
            let b = "plan:\(planB.uuidString.lowercased())"
            #expect(
                got == [
                    "INSERT a2 \([a])", "UPDATE a1 \([a])", "UPDATE a1 renamed \([a])", "INSERT b1 \([b])", "INSERT marker \([b])",
                ])
            #expect(stream.changes.allSatisfy { $0.table == "task" && $0.record["status"] as? String == "done" })
            #expect(stream.changes.map { $0.record["id"] as? String ?? "?" } == [a2, a1, a1, b1, marker].map { $0.uuidString.lowercased() })
            Self.expectIncreasingIDs(stream.changes)

            // One stream on a branch and on one of its plans: an event of that plan arrives once, naming both channels.
            let both = try await Self.open(
                client,
                "/realtime/v1/stream?channel=branch:\(team.branch)&channel=plan:\(planA)&table=task",
                as: .user(team.viewer)
            )
            let inA = try await team.makeTask(client, plan: planA, title: "in A")
            let inB = try await team.makeTask(client, plan: planB, title: "in B")
            try await both.waitFor("the task in B", timeout: .seconds(30)) { frames in
                frames.contains { $0.record["id"] as? String == inB.uuidString.lowercased() }
            }
            try await Task.sleep(for: .seconds(1))
            let branch = "branch:\(team.branch.uuidString.lowercased())"
            let framesA = both.changes.filter { $0.record["id"] as? String == inA.uuidString.lowercased() }
            #expect(framesA.count == 1)
            #expect(Set(framesA.first?.channels ?? []) == [a, branch])
            #expect(framesA.first?.channels.count == 2)
            let framesB = both.changes.filter { $0.record["id"] as? String == inB.uuidString.lowercased() }
            #expect(framesB.map(\.channels) == [[branch]])
            #expect(both.changes.count == 2)
            stream.close()
            both.close()
        }
    }

    // MARK: - 8. Moving a row between plans

    @Test func aTaskMovedToAnotherPlanLeavesOneAndEntersTheOther() async throws {
        let server = try await TestServer.make(changeFeed: true)
        try await server.testLive { client in
            try await Self.waitForRelay(server)
            let team = try await Team.make(client)
            let planA = try await team.makePlan(client, title: "A")
            let planB = try await team.makePlan(client, title: "B")
            let streamA = try await Self.open(client, "/realtime/v1/plan/\(planA)?table=task", as: .user(team.viewer))
            let streamB = try await Self.open(client, "/realtime/v1/plan/\(planB)?table=task", as: .user(team.viewer))
            let branchStream = try await Self.open(client, "/realtime/v1/branch/\(team.branch)?table=task", as: .user(team.viewer))
            let editor = Principal.user(team.editor)
            let task = try await team.makeTask(client, plan: planA, title: "mover")
            let id = task.uuidString.lowercased()
            let a = planA.uuidString.lowercased()
            let b = planB.uuidString.lowercased()

            try await Self.patch(client, "/rest/v1/tasks/\(task)", as: editor, #"{"plan_id":"\#(planB)"}"#)
            try await Self.patch(client, "/rest/v1/tasks/\(task)", as: editor, #"{"title":"moved"}"#)
            try await Self.patch(client, "/rest/v1/tasks/\(task)", as: editor, #"{"plan_id":"\#(planA)"}"#)

            let framesA = try await streamA.waitForChanges(3, timeout: .seconds(30))
            let framesB = try await streamB.waitForChanges(3, timeout: .seconds(30))
            let framesBranch = try await branchStream.waitForChanges(4, timeout: .seconds(30))
            try await Task.sleep(for: .seconds(1))
            #expect(streamA.changes.count == 3)
            #expect(streamB.changes.count == 3)
            #expect(branchStream.changes.count == 4)

            // Plan A: the insert, the move out as a DELETE (the title change is not its business), the move back in.
            #expect(framesA.map(\.operation) == ["INSERT", "DELETE", "INSERT"])
            #expect(framesA.map(\.channels) == [["plan:\(a)"], ["plan:\(a)"], ["plan:\(a)"]])
            let out = framesA[1]
            #expect(out.record.isEmpty)
            #expect(out.oldRecord["id"] as? String == id)
            #expect(framesA[2].record["plan_id"] as? String == a)
            #expect(framesA[2].record["title"] as? String == "moved")
            #expect(framesA[2].oldRecord.isEmpty)

            // Plan B: the move in as an INSERT with the whole row, the title change, the move out.
            #expect(framesB.map(\.operation) == ["INSERT", "UPDATE", "DELETE"])
            #expect(framesB.map(\.channels) == [["plan:\(b)"], ["plan:\(b)"], ["plan:\(b)"]])
            #expect(framesB[0].record["id"] as? String == id)
            #expect(framesB[0].record["plan_id"] as? String == b)
            #expect(framesB[0].record["title"] as? String == "mover")
            #expect(framesB[0].oldRecord.isEmpty)
            #expect(framesB[1].record["title"] as? String == "moved")
            #expect(framesB[1].oldRecord["title"] as? String == "mover")
            #expect(framesB[2].oldRecord["id"] as? String == id)

            // One event each: the same ids on both plans, and on the branch (where the row stays) UPDATEs.
            #expect(framesA[1].id == framesB[0].id)
            #expect(framesA[2].id == framesB[2].id)
            #expect(framesBranch.map(\.operation) == ["INSERT", "UPDATE", "UPDATE", "UPDATE"])
            #expect(framesBranch[1].oldRecord["plan_id"] as? String == a)
            #expect(framesBranch[1].record["plan_id"] as? String == b)
            #expect(framesBranch.map(\.id) == [framesA[0].id, framesB[0].id, framesB[1].id, framesA[2].id])
            streamA.close()
            streamB.close()
            branchStream.close()
        }
    }
}

// MARK: - Helpers

extension ChangeFeedFaultTests {
    /// Opens a stream at `path` as `principal` and requires it to be accepted.
    static func open(
        _ client: TestServer.Client,
        _ path: String,
        as principal: Principal,
        lastEventID: String? = nil
    ) async throws -> SSEClient {
        try await ChangeFeedTests.open(client, path, as: principal, lastEventID: lastEventID)
    }

    /// The ids of the tasks inserted, in the order their INSERT frames arrived.
    static func taskInserts(_ frames: [SSEClient.Frame]) -> [String] {
        frames.filter { $0.event == "postgres_changes" && $0.table == "task" && $0.operation == "INSERT" }
            .map { $0.record["id"] as? String ?? "?" }
    }

    /// Every frame has a numeric id, and the ids grow strictly.
    static func expectIncreasingIDs(_ frames: [SSEClient.Frame], sourceLocation: SourceLocation = #_sourceLocation) {
        let ids = frames.map { Int64($0.id ?? "") }
        #expect(!ids.contains(nil), "a frame without a numeric id", sourceLocation: sourceLocation)
        let values = ids.compactMap { $0 }
        #expect(zip(values, values.dropFirst()).allSatisfy { $0 < $1 }, "ids not strictly increasing: \(values)", sourceLocation: sourceLocation)
    }

    /// Waits until `condition` holds, checking every 100 ms, or throws after `timeout`.
    static func waitUntil(_ what: String, timeout: Duration, _ condition: () async throws -> Bool) async throws {
        let deadline = ContinuousClock.now + timeout
        while try await !condition() {
            if ContinuousClock.now > deadline { throw FaultTimeout(what: what, timeout: timeout) }
            try await Task.sleep(for: .milliseconds(100))
        }
    }

    /// Writes tasks one after another, 20 ms apart, until 10 more than were written when the faults were over (and
    /// 50 at least); returns their ids in order.
    static func keepWriting(
        _ progress: Locked<Int>,
        until faultsOver: Locked<Int?>,
        _ insert: (Int) async throws -> UUID
    ) async throws -> [UUID] {
        var ids: [UUID] = []
        for index in 0..<2000 {
            ids.append(try await insert(index))
            progress.update { $0 = ids.count }
            if let over = faultsOver.value, ids.count >= max(50, over + 10) { break }
            try await Task.sleep(for: .milliseconds(20))
        }
        return ids
    }

    /// Creates a task with a status through the API, as the team's editor.
    static func postTask(_ client: TestServer.Client, _ team: Team, plan: UUID, title: String, status: String) async throws -> UUID {
        let id = UUID()
        let reply = try await client.send(
            .post,
            "/rest/v1/tasks",
            as: .user(team.editor),
            json:
                #"{"id":"\#(id)","plan_id":"\#(plan)","title":"\#(title)","status":"\#(status)","starts_at":"2026-11-30T09:00:00Z","ends_at":"2026-11-30T11:00:00Z"}"#
        )
        try #require(reply.status == .created, "task: \(reply.text)")
        return id
    }

    static func patch(
        _ client: TestServer.Client,
        _ path: String,
        as principal: Principal,
        _ json: String,
        sourceLocation: SourceLocation = #_sourceLocation
    ) async throws {
        let reply = try await client.send(.patch, path, as: principal, json: json)
        try #require(reply.status == .ok, "PATCH \(path) \(json): \(reply.text)", sourceLocation: sourceLocation)
    }

    static func insertTask(_ id: UUID, team: Team, plan: UUID, title: String) -> PostgresQuery {
        """
        INSERT INTO task (id, branch_id, plan_id, title, starts_at, ends_at)
        VALUES (\(id), \(team.branch), \(plan), \(title), '2026-11-30 09:00+00', '2026-11-30 10:00+00')
        """
    }

    // MARK: Database

    static func int64(_ connection: PostgresConnection, _ query: PostgresQuery, logger: Logger) async throws -> Int64 {
        for try await value in try await connection.query(query, logger: logger).decode(Int64.self) { return value }
        throw FaultTimeout(what: "a row from \(query.sql)", timeout: .zero)
    }

    /// The first column (bigint) of every row of `query`, run as the database's owner.
    static func int64s(_ server: TestServer, _ query: PostgresQuery) async throws -> [Int64] {
        try await server.withOwnerConnection { connection in
            var values: [Int64] = []
            for try await value in try await connection.query(query, logger: server.logger).decode(Int64.self) { values.append(value) }
            return values
        }
    }

    /// The backends that hold the relay's advisory lock in the test's database (one while a relay leads).
    static func relayLockHolders(_ server: TestServer) async throws -> [Int64] {
        let classID = Relay.lockKey >> 32
        let objectID = Relay.lockKey & 0xFFFF_FFFF
        return try await int64s(
            server,
            """
            SELECT l.pid::bigint FROM pg_locks l JOIN pg_database d ON d.oid = l.database
            WHERE l.locktype = 'advisory' AND l.granted AND d.datname = current_database()
              AND l.classid = \(classID)::bigint::oid AND l.objid = \(objectID)::bigint::oid AND l.objsubid = 1
            """
        )
    }

    /// The walsender streaming the relay's slot of the test's database, if any.
    static func walsenders(_ server: TestServer) async throws -> [Int64] {
        try await int64s(
            server,
            """
            SELECT r.pid::bigint FROM pg_stat_replication r JOIN pg_replication_slots s ON s.active_pid = r.pid
            WHERE r.application_name = 'realtime-replication' AND s.slot_name = \(Relay.slotName(for: server.endpoint.database))
            """
        )
    }

    /// Every database connection of the server(s) on the test's database, but the caller's.
    static func serverConnections(_ server: TestServer) async throws -> [Int64] {
        try await int64s(
            server,
            """
            SELECT pid::bigint FROM pg_stat_activity
            WHERE datname = current_database() AND application_name IN ('realtime', 'realtime-replication') AND pid <> pg_backend_pid()
            """
        )
    }

    /// Whether one relay holds the lock and streams its slot, which is complete (a slot being created has a walsender
    /// too, but no confirmed position yet, and what commits before it is complete is never decoded).
    static func relayIsUp(_ server: TestServer) async throws -> Bool {
        let holders = try await relayLockHolders(server)
        let streaming = try await int64s(
            server,
            """
            SELECT r.pid::bigint FROM pg_stat_replication r JOIN pg_replication_slots s ON s.active_pid = r.pid
            WHERE r.application_name = 'realtime-replication' AND r.state = 'streaming' AND s.confirmed_flush_lsn IS NOT NULL
              AND s.slot_name = \(Relay.slotName(for: server.endpoint.database))
            """
        )
        return holders.count == 1 && streaming.count == 1
    }

    /// Waits until the relay streams. A server accepts writes before its relay has completed its replication slot, and
    /// changes committed until then never reach the log (a known issue: the slot is created only after the server
    /// started serving, and creating it waits for the transactions running on the cluster); so the tests write only
    /// once the relay streams.
    static func waitForRelay(_ server: TestServer) async throws {
        try await waitUntil("the relay to stream", timeout: .seconds(90)) { try await relayIsUp(server) }
    }

    /// Terminates the backends; returns those that were.
    static func terminate(_ pids: [Int64], _ server: TestServer) async throws -> [Int64] {
        var terminated: [Int64] = []
        for pid in pids where try await int64s(server, "SELECT pg_terminate_backend(\(Int32(pid)))::int::bigint") == [1] {
            terminated.append(pid)
        }
        return terminated
    }

    /// The log holds every change of the published tables once: no position twice, as many task INSERTs as tasks
    /// written, and as many INSERTs of each table as it has rows (the tests that use it delete nothing).
    static func expectLogMatchesTables(_ server: TestServer, taskInserts: Int, sourceLocation: SourceLocation = #_sourceLocation) async throws {
        let counts = try await server.withOwnerConnection { connection in
            let rows = try await connection.query(
                """
                SELECT count(*), count(DISTINCT (commit_lsn, tx_index)),
                       count(*) FILTER (WHERE table_name = 'task' AND op = 'INSERT'),
                       count(DISTINCT task_id) FILTER (WHERE table_name = 'task' AND op = 'INSERT'),
                       (SELECT count(*) FROM task),
                       count(*) FILTER (WHERE table_name = 'status_history' AND op = 'INSERT'),
                       (SELECT count(*) FROM status_history),
                       count(*) FILTER (WHERE table_name = 'branch_member' AND op = 'INSERT'),
                       (SELECT count(*) FROM branch_member),
                       count(*) FILTER (WHERE table_name = 'plan' AND op = 'INSERT'),
                       (SELECT count(*) FROM plan)
                FROM realtime.event_log
                """,
                logger: server.logger
            )
            var counts: [Int64] = []
            for try await row in rows {
                let (a, b, c, d, e, f, g, h, i, j, k) = try row.decode(
                    (Int64, Int64, Int64, Int64, Int64, Int64, Int64, Int64, Int64, Int64, Int64).self
                )
                counts = [a, b, c, d, e, f, g, h, i, j, k]
            }
            return counts
        }
        try #require(counts.count == 11, sourceLocation: sourceLocation)
        #expect(counts[0] == counts[1], "duplicate log positions: \(counts)", sourceLocation: sourceLocation)
        #expect(counts[2] == Int64(taskInserts), "task INSERTs in the log: \(counts[2])", sourceLocation: sourceLocation)
        #expect(counts[3] == Int64(taskInserts), "distinct tasks inserted in the log: \(counts[3])", sourceLocation: sourceLocation)
        #expect(counts[4] == Int64(taskInserts), sourceLocation: sourceLocation)
        #expect(counts[5] == counts[6], "status_history INSERTs \(counts[5]) for \(counts[6]) rows", sourceLocation: sourceLocation)
        #expect(counts[7] == counts[8], "branch_member INSERTs \(counts[7]) for \(counts[8]) rows", sourceLocation: sourceLocation)
        #expect(counts[9] == counts[10], "plan INSERTs \(counts[9]) for \(counts[10]) rows", sourceLocation: sourceLocation)
    }
}

/// A wait that ran out of time.
struct FaultTimeout: Error, CustomStringConvertible {
    var what: String
    var timeout: Duration
    var description: String { "timed out after \(timeout) waiting for \(what)" }
}
