import Foundation
import HTTPTypes
import Hummingbird
import HummingbirdTesting
import Testing

@testable import Realtime

/// Presence and broadcast: heartbeats, leaves and expiry seen on streams and in the list, the limits on what presence
/// may carry, the policy, and both travelling between nodes of one database. Real PostgreSQL, real servers, real SSE.
@Suite(.timeLimit(.minutes(3)))
struct PresenceTests {
    static func heartbeat(_ client: TestServer.Client, plan: UUID, as user: UUID, slot: String? = nil, action: String = "editing")
        async throws -> TestServer.Client.Reply
    {
        let state = slot.map { #"{"slot":"\#($0)","action":"\#(action)"}"# } ?? #"{"action":"\#(action)"}"#
        return try await client.send(.post, "/realtime/v1/presence/plan/\(plan)", as: .user(user), json: #"{"state":\#(state)}"#)
    }

    static func presenceFrames(_ stream: SSEClient) -> [[String: Any]] {
        stream.frames.filter { $0.event == "presence" }.map(\.json)
    }

    static func userID(_ user: UUID) -> String { user.uuidString.lowercased() }

    // MARK: - One node

    @Test func aStreamSeesSyncJoinUpdateAndLeaveButNoFrameForAPlainHeartbeat() async throws {
        let server = try await TestServer.make(changeFeed: true)
        try await server.testLive { client in
            let team = try await Team.make(client)
            let plan = try await team.makePlan(client)
            // The editor is present before the viewer opens a stream: the sync frame lists them.
            let first = try await Self.heartbeat(client, plan: plan, as: team.editor, slot: "slot-1")
            #expect(first.status == .ok, "\(first.text)")
            #expect(first.string("channel") == "presence:plan:\(Self.userID(plan))")
            #expect(first.object["heartbeat_seconds"] as? Int == 10)
            #expect(first.object["ttl_seconds"] as? Int == 30)
            #expect(first.string("next_heartbeat_at") != nil)

            let stream = try await ChangeFeedTests.open(
                client, "/realtime/v1/stream?channel=plan:\(plan)&channel=presence:plan:\(plan)", as: .user(team.viewer))
            let sync = try #require(
                try await stream.waitFor("the sync frame") { !$0.filter { $0.event == "presence" }.isEmpty }
                    .first { $0.event == "presence" }?.json)
            #expect(sync["event"] as? String == "sync")
            #expect(sync["channel"] as? String == "presence:plan:\(Self.userID(plan))")
            let present = sync["presences"] as? [[String: Any]] ?? []
            #expect(present.map { $0["user_id"] as? String } == [Self.userID(team.editor)])
            #expect((present.first?["state"] as? [String: String]) == ["slot": "slot-1", "action": "editing"])

            // The admin joins, the editor heartbeats unchanged (no frame), then moves to another slot (an update).
            _ = try await Self.heartbeat(client, plan: plan, as: team.admin, slot: "slot-9", action: "viewing")
            _ = try await Self.heartbeat(client, plan: plan, as: team.editor, slot: "slot-1")
            _ = try await Self.heartbeat(client, plan: plan, as: team.editor, slot: "slot-2")
            let left = try await client.send(.delete, "/realtime/v1/presence/plan/\(plan)", as: .user(team.admin))
            #expect(left.status == .noContent)
            try await stream.waitFor("join, update, leave") { frames in frames.filter { $0.event == "presence" }.count >= 4 }
            try await Task.sleep(for: .milliseconds(200))
            let events = Self.presenceFrames(stream).map { "\($0["event"] as? String ?? "?") \($0["user_id"] as? String ?? "-")" }
            #expect(
                events == [
                    "sync -", "join \(Self.userID(team.admin))", "update \(Self.userID(team.editor))", "leave \(Self.userID(team.admin))",
                ])
            let update = Self.presenceFrames(stream)[2]
            #expect((update["state"] as? [String: String]) == ["slot": "slot-2", "action": "editing"])
            #expect(stream.frames.filter { $0.event == "presence" }.allSatisfy { $0.id == nil }, "presence frames carry no cursor")

            // The list shows who is left, with their times.
            let list = try await client.send(.get, "/realtime/v1/presence/plan/\(plan)", as: .user(team.viewer))
            #expect(list.status == .ok)
            let entries = list.object["presences"] as? [[String: Any]] ?? []
            #expect(entries.map { $0["user_id"] as? String } == [Self.userID(team.editor)])
            #expect(entries.first?["online_since"] as? String != nil && entries.first?["last_seen"] as? String != nil)
            // The service role may observe.
            let observed = try await client.send(.get, "/realtime/v1/presence/plan/\(plan)", as: Team.service)
            #expect(observed.status == .ok && (observed.object["presences"] as? [Any])?.count == 1)
            stream.close()
        }
    }

    @Test func anEntryWithoutHeartbeatsExpires() async throws {
        let server = try await TestServer.make(changeFeed: true) { $0.presenceTTLSeconds = 3 }
        try await server.testLive { client in
            let team = try await Team.make(client)
            let plan = try await team.makePlan(client)
            let stream = try await ChangeFeedTests.open(client, "/realtime/v1/stream?channel=presence:plan:\(plan)", as: .user(team.viewer))
            let reply = try await Self.heartbeat(client, plan: plan, as: team.editor, slot: "a")
            #expect(reply.object["ttl_seconds"] as? Int == 3 && reply.object["heartbeat_seconds"] as? Int == 1)
            let started = ContinuousClock.now
            try await stream.waitFor("the leave after the TTL", timeout: .seconds(10)) { frames in
                frames.contains { $0.event == "presence" && $0.json["event"] as? String == "leave" }
            }
            let waited = ContinuousClock.now - started
            #expect(waited >= .milliseconds(2500), "left after \(waited), before the TTL")
            let list = try await client.send(.get, "/realtime/v1/presence/plan/\(plan)", as: .user(team.viewer))
            #expect((list.object["presences"] as? [Any])?.isEmpty == true)
            stream.close()
        }
    }

    @Test func presenceCarriesOnlyTheWhitelistedStateWithinItsLimits() async throws {
        let server = try await TestServer.make()
        try await server.test { client in
            let team = try await Team.make(client)
            let plan = try await team.makePlan(client)
            let path = "/realtime/v1/presence/plan/\(plan)"
            let long = String(repeating: "x", count: 129)
            let cases: [(String, String)] = [
                (#"{"state":{"action":"editing","name":"Ali Valiyev"}}"#, "unknown_field"),
                (#"{"state":{"action":"editing","phone":"+998901234567"}}"#, "unknown_field"),
                (#"{"state":{"action":"editing"},"user":"x"}"#, "unknown_field"),
                (#"{"state":{"slot":"\#(long)","action":"editing"}}"#, "invalid_value"),
                (#"{"state":{"slot":"a","action":"dancing"}}"#, "invalid_value"),
                (#"{"state":{"slot":5,"action":"editing"}}"#, "invalid_value"),
                (#"{"state":{"slot":"a"}}"#, "missing_field"),
                (#"{"state":"editing"}"#, "invalid_value"),
                (#"{}"#, "missing_field"),
            ]
            for (body, code) in cases {
                let reply = try await client.send(.post, path, as: .user(team.editor), json: body)
                #expect(reply.status == .unprocessableContent && reply.errorCode == code, "\(body) → \(reply.status) \(reply.text)")
            }
            let notJSON = try await client.send(.post, path, as: .user(team.editor), json: "state=editing", headers: [.contentType: "text/plain"])
            #expect(notJSON.status == .unsupportedMediaType)
            let list = try await client.send(.get, path, as: .user(team.editor))
            #expect((list.object["presences"] as? [Any])?.isEmpty == true, "a refused heartbeat must not make anyone present")
        }
    }

    @Test func onlyUsersWhoMayReadThePlanTakePartAndTheServiceRoleOnlyObserves() async throws {
        let server = try await TestServer.make(changeFeed: true)
        try await server.testLive { client in
            let team = try await Team.make(client)
            let plan = try await team.makePlan(client)
            let other = try await Team.make(client, name: "Other")
            let path = "/realtime/v1/presence/plan/\(plan)"
            let state = #"{"state":{"action":"viewing"}}"#

            let viewer = try await client.send(.post, path, as: .user(team.viewer), json: state)
            #expect(viewer.status == .ok, "a viewer may be present: \(viewer.text)")
            for user in [other.admin, team.outsider] {
                let refused = try await client.send(.post, path, as: .user(user), json: state)
                #expect(refused.status == .notFound && refused.errorCode == "not_found")
                #expect(try await client.send(.get, path, as: .user(user)).status == .notFound)
                #expect(try await client.send(.delete, path, as: .user(user)).status == .notFound)
                let broadcast = try await client.send(
                    .post, "/realtime/v1/broadcast/plan/\(plan)", as: .user(user), json: #"{"event":"x","payload":{}}"#)
                #expect(broadcast.status == .notFound)
                let stream = try await SSEClient.open(
                    client.baseURL + "/realtime/v1/stream?channel=presence:plan:\(plan)",
                    headers: [("Authorization", "Bearer \(try await client.token(for: .user(user)))")])
                #expect(stream.status == 404)
            }
            let service = try await client.send(.post, path, as: Team.service, json: state)
            #expect(service.status == .forbidden && service.errorCode == "forbidden")
            let serviceBroadcast = try await client.send(
                .post, "/realtime/v1/broadcast/plan/\(plan)", as: Team.service, json: #"{"event":"x","payload":{}}"#)
            #expect(serviceBroadcast.status == .forbidden)
            let missing = try await client.send(.post, "/realtime/v1/presence/plan/\(UUID())", as: .user(team.viewer), json: state)
            #expect(missing.status == .notFound)
            let unauthenticated = try await client.send(.post, path, as: nil, json: state)
            #expect(unauthenticated.status == .unauthorized)
        }
    }

    @Test func heartbeatsAndBroadcastsBeyondTheRateGet429WithRetryAfter() async throws {
        // One token per 100 s after a burst of 3: however slow the machine, none comes back during the test.
        let server = try await TestServer.make {
            $0.presenceRate = 0.01
            $0.presenceBurst = 3
        }
        try await server.test { client in
            let team = try await Team.make(client)
            let plan = try await team.makePlan(client)
            var statuses: [HTTPResponse.Status] = []
            var retryAfter: String?
            for _ in 0..<5 {
                let reply = try await Self.heartbeat(client, plan: plan, as: team.editor)
                statuses.append(reply.status)
                if reply.status == .tooManyRequests {
                    retryAfter = reply.headers[.retryAfter]
                    #expect(reply.errorCode == "rate_limited")
                }
            }
            #expect(statuses.prefix(3).allSatisfy { $0 == .ok }, "\(statuses)")
            #expect(statuses.last == .tooManyRequests, "\(statuses)")
            #expect(retryAfter.flatMap(Int.init).map { $0 >= 1 } == true)
            // Another user has a budget of their own; broadcasts have theirs.
            #expect(try await Self.heartbeat(client, plan: plan, as: team.admin).status == .ok)
            let broadcast = try await client.send(
                .post, "/realtime/v1/broadcast/plan/\(plan)", as: .user(team.editor), json: #"{"event":"cursor","payload":{}}"#)
            #expect(broadcast.status == .accepted)
        }
    }

    @Test func aBroadcastReachesThePlansStreamsOnceAndIsNeverReplayed() async throws {
        let server = try await TestServer.make(changeFeed: true)
        try await server.testLive { client in
            let team = try await Team.make(client)
            let plan = try await team.makePlan(client)
            let otherPlan = try await team.makePlan(client)
            let stream = try await ChangeFeedTests.open(client, "/realtime/v1/plan/\(plan)", as: .user(team.viewer))
            let elsewhere = try await ChangeFeedTests.open(client, "/realtime/v1/plan/\(otherPlan)", as: .user(team.viewer))
            // A change before the broadcast gives a cursor to resume from later.
            let before = try await team.makeTask(client, plan: plan, title: "before")
            let cursor = try #require(
                try await stream.waitFor("the task made before") { $0.contains { $0.record["id"] as? String == Self.userID(before) } }
                    .first { $0.record["id"] as? String == Self.userID(before) }?.id)
            let sent = try await client.send(
                .post, "/realtime/v1/broadcast/plan/\(plan)", as: .user(team.editor),
                json: #"{"event":"cursor.moved","payload":{"slot":"s-3","x":0.5}}"#)
            #expect(sent.status == .accepted, "\(sent.text)")
            let frame = try #require(
                try await stream.waitFor("the broadcast") { $0.contains { $0.event == "broadcast" } }.first { $0.event == "broadcast" })
            #expect(frame.id == nil)
            #expect(frame.json["type"] as? String == "broadcast")
            #expect(frame.json["event"] as? String == "cursor.moved")
            #expect(frame.json["channel"] as? String == "plan:\(Self.userID(plan))")
            #expect(frame.json["user_id"] as? String == Self.userID(team.editor))
            #expect((frame.json["payload"] as? [String: Any])?["slot"] as? String == "s-3")

            // Resuming from before the broadcast replays the change after it, not the broadcast.
            let after = try await team.makeTask(client, plan: plan, title: "after")
            let resumed = try await ChangeFeedTests.open(client, "/realtime/v1/plan/\(plan)", as: .user(team.viewer), lastEventID: cursor)
            try await resumed.waitFor("the task made after") { $0.contains { $0.record["id"] as? String == Self.userID(after) } }
            try await Task.sleep(for: .milliseconds(300))
            #expect(!resumed.frames.contains { $0.event == "broadcast" })
            #expect(stream.frames.filter { $0.event == "broadcast" }.count == 1, "one broadcast, one frame")
            #expect(!elsewhere.frames.contains { $0.event == "broadcast" }, "a broadcast stays on its plan")

            let tooBig = String(repeating: "y", count: 2100)
            let big = try await client.send(
                .post, "/realtime/v1/broadcast/plan/\(plan)", as: .user(team.editor), json: #"{"event":"big","payload":{"text":"\#(tooBig)"}}"#)
            #expect(big.status == .unprocessableContent && big.errorCode == "invalid_value")
            for body in [#"{"event":"","payload":{}}"#, #"{"event":"a b","payload":{}}"#, #"{"event":"x","payload":[1]}"#, #"{"event":"x"}"#] {
                let reply = try await client.send(.post, "/realtime/v1/broadcast/plan/\(plan)", as: .user(team.editor), json: body)
                #expect(reply.status == .unprocessableContent, "\(body) → \(reply.status)")
            }
            stream.close()
            elsewhere.close()
            resumed.close()
        }
    }

    // MARK: - Several nodes

    @Test func presenceAndBroadcastTravelBetweenNodesAndADeadNodesEntriesExpire() async throws {
        let server = try await TestServer.make(changeFeed: true) { $0.presenceTTLSeconds = 3 }
        let nodeA = try await TestNode.start(server)
        let nodeB = try await TestNode.start(server)
        do {
            let team = try await Team.make(nodeA.client)
            let plan = try await team.makePlan(nodeA.client)
            let onB = try await ChangeFeedTests.open(
                nodeB.client, "/realtime/v1/stream?channel=plan:\(plan)&channel=presence:plan:\(plan)", as: .user(team.viewer))
            try await onB.waitFor("the sync frame") { $0.contains { $0.event == "presence" } }

            // A heartbeat on node A: a join on node B's stream, and in node B's list.
            #expect(try await Self.heartbeat(nodeA.client, plan: plan, as: team.editor, slot: "7").status == .ok)
            try await onB.waitFor("the join from node A") { frames in
                frames.contains { $0.event == "presence" && $0.json["event"] as? String == "join" }
            }
            let listOnB = try await nodeB.client.send(.get, "/realtime/v1/presence/plan/\(plan)", as: .user(team.viewer))
            let entries = listOnB.object["presences"] as? [[String: Any]] ?? []
            #expect(entries.map { $0["user_id"] as? String } == [Self.userID(team.editor)])

            // A broadcast through node A and a write through node A reach the stream on node B.
            _ = try await nodeA.client.send(
                .post, "/realtime/v1/broadcast/plan/\(plan)", as: .user(team.editor), json: #"{"event":"ping","payload":{"n":1}}"#)
            let task = try await team.makeTask(nodeA.client, plan: plan)
            try await onB.waitFor("the broadcast and the task from node A") { frames in
                frames.contains { $0.event == "broadcast" } && frames.contains { $0.record["id"] as? String == Self.userID(task) }
            }

            // A node started now learns who is present from the others. The editor keeps heartbeating meanwhile, as a
            // browser does: starting a node may take longer than the 3 s TTL on a busy machine.
            let keepPresent = Task {
                while !Task.isCancelled {
                    try await Task.sleep(for: .seconds(1))
                    let reply = try await Self.heartbeat(nodeA.client, plan: plan, as: team.editor, slot: "7")
                    #expect(reply.status == .ok, "\(reply.text)")
                }
            }
            let nodeC = try await TestNode.start(server)
            let listOnC = try await Self.waitForPresence(nodeC.client, plan: plan, as: team.viewer, count: 1)
            #expect(listOnC.map { $0["user_id"] as? String } == [Self.userID(team.editor)])
            try await nodeC.stop()
            keepPresent.cancel()
            _ = await keepPresent.result

            // Node A goes away; nobody heartbeats; node B expires the entry within the TTL.
            let framesBefore = onB.frames.count
            try await nodeA.stop()
            try await onB.waitFor("the leave of node A's entry", timeout: .seconds(30)) { frames in
                frames.dropFirst(framesBefore).contains { $0.event == "presence" && $0.json["event"] as? String == "leave" }
            }
            onB.close()
        } catch {
            await nodeA.stopAfterFailure()
            await nodeB.stopAfterFailure()
            throw error
        }
        try await nodeB.stop()
    }

    @Test func aDeletedPlanHasNoPresenceAndNoBroadcasts() async throws {
        let server = try await TestServer.make(changeFeed: true)
        try await server.testLive { client in
            let team = try await Team.make(client)
            let plan = try await team.makePlan(client)
            let watcher = try await ChangeFeedTests.open(client, "/realtime/v1/branch/\(team.branch)?table=plan", as: .user(team.viewer))
            #expect(try await Self.heartbeat(client, plan: plan, as: team.editor).status == .ok)
            #expect(try await client.send(.delete, "/rest/v1/plans/\(plan)", as: .user(team.admin)).status == .noContent)
            // Once the plan's DELETE has come through the feed, the hub must not answer from what it knew before.
            try await watcher.waitFor("the plan's DELETE") { $0.contains { $0.operation == "DELETE" } }
            try await Task.sleep(for: .milliseconds(100))
            let path = "/realtime/v1/presence/plan/\(plan)"
            #expect(try await Self.heartbeat(client, plan: plan, as: team.editor).status == .notFound)
            #expect(try await client.send(.get, path, as: .user(team.editor)).status == .notFound)
            #expect(try await client.send(.get, path, as: Team.service).status == .notFound)
            #expect(try await client.send(.delete, path, as: .user(team.editor)).status == .notFound)
            let broadcast = try await client.send(
                .post, "/realtime/v1/broadcast/plan/\(plan)", as: .user(team.editor), json: #"{"event":"x","payload":{}}"#)
            #expect(broadcast.status == .notFound)
            watcher.close()
        }
    }

    static func waitForPresence(_ client: TestServer.Client, plan: UUID, as user: UUID, count: Int) async throws -> [[String: Any]] {
        let deadline = ContinuousClock.now + .seconds(30)
        while true {
            let reply = try await client.send(.get, "/realtime/v1/presence/plan/\(plan)", as: .user(user))
            let entries = reply.object["presences"] as? [[String: Any]] ?? []
            if entries.count >= count { return entries }
            if ContinuousClock.now > deadline { throw FaultTimeout(what: "\(count) present on a new node", timeout: .seconds(30)) }
            try await Task.sleep(for: .milliseconds(100))
        }
    }
}
