import Foundation
import HTTPTypes
import NIOCore
import Synchronization
import Testing

@testable import Realtime

/// Fixed ids and a factory of change events for the fan-out tests.
private enum Fixture {
    static let branchA = UUID(uuidString: "aaaaaaaa-0000-0000-0000-000000000001")!
    static let branchB = UUID(uuidString: "bbbbbbbb-0000-0000-0000-000000000002")!
    static let planA = UUID(uuidString: "aaaaaaaa-1111-0000-0000-000000000001")!
    static let planA2 = UUID(uuidString: "aaaaaaaa-2222-0000-0000-000000000002")!
    static let planB = UUID(uuidString: "bbbbbbbb-1111-0000-0000-000000000001")!
    static let taskA = UUID(uuidString: "aaaaaaaa-3333-0000-0000-000000000001")!
    static let alice = UUID(uuidString: "a11ce000-0000-0000-0000-000000000001")!
    static let bob = UUID(uuidString: "b0b00000-0000-0000-0000-000000000002")!

    static func event(
        _ sequence: Int64,
        _ table: String,
        _ operation: ChangeEvent.Operation,
        branch: UUID?,
        plan: UUID? = nil,
        oldBranch: UUID? = nil,
        oldPlan: UUID? = nil,
        record: String = "{}",
        oldRecord: String = "{}"
    ) -> ChangeEvent {
        ChangeEvent(
            sequence: sequence,
            table: table,
            operation: operation,
            commitTimestamp: "2024-05-01T10:00:00.123456+00:00",
            commitTime: Date(timeIntervalSince1970: 1_714_557_600),
            place: RowPlace(branch: branch, plan: plan),
            previousPlace: oldBranch == nil && oldPlan == nil ? nil : RowPlace(branch: oldBranch ?? branch, plan: oldPlan ?? plan),
            record: record,
            oldRecord: oldRecord
        )
    }

    /// A task event in a branch and plan, with a record naming them.
    static func task(_ sequence: Int64, _ operation: ChangeEvent.Operation = .insert, branch: UUID, plan: UUID, status: String = "taken")
        -> ChangeEvent
    {
        let row = taskRow(branch: branch, plan: plan, status: status)
        return event(
            sequence,
            "task",
            operation,
            branch: branch,
            plan: plan,
            record: operation == .delete ? "{}" : row,
            oldRecord: operation == .delete ? row : "{}"
        )
    }

    static func taskRow(branch: UUID, plan: UUID, status: String = "taken") -> String {
        #"{"id":"\#(taskA.lowercased)","branch_id":"\#(branch.lowercased)","plan_id":"\#(plan.lowercased)","status":"\#(status)","title":"T"}"#
    }

    static func memberRow(user: UUID, branch: UUID, role: MemberRole = .viewer) -> String {
        #"{"id":"\#(UUID().lowercased)","branch_id":"\#(branch.lowercased)","user_id":"\#(user.lowercased)","role":"\#(role.rawValue)"}"#
    }

    /// Alice's memberships across the log, as a replay loads them: a viewer of A since before the log began.
    static func aliceHistory(coveredThrough: Int64 = 1_000) -> MembershipHistory? {
        MembershipHistory(
            userID: alice,
            intervals: [MembershipHistory.Interval(branchID: branchA, role: .viewer, from: 0, until: nil)],
            coveredThrough: coveredThrough
        )
    }

    /// A hub where alice is a member of A, bob of B, and the plans' branches are known.
    static func hub(bufferLimit: Int = Hub.defaultBufferLimit) -> Hub {
        let hub = Hub(bufferLimit: bufferLimit)
        hub.setMemberships([alice: Memberships([branchA: .viewer]), bob: Memberships([branchB: .editor])])
        hub.setPlanBranches([planA: branchA, planA2: branchA, planB: branchB])
        return hub
    }

    /// Every event kind of a branch: each table, each operation.
    static func everyKindOfEvent(in branch: UUID, plan: UUID, from sequence: Int64) -> [ChangeEvent] {
        let row = #"{"id":"\#(UUID().lowercased)","branch_id":"\#(branch.lowercased)","plan_id":"\#(plan.lowercased)"}"#
        var events: [ChangeEvent] = []
        var next = sequence
        for table in ["plan", "task", "status_history", "attachment", "client_card"] {
            for operation in [ChangeEvent.Operation.insert, .update, .delete] {
                let isDelete = operation == .delete
                events.append(
                    event(next, table, operation, branch: branch, plan: plan, record: isDelete ? "{}" : row, oldRecord: isDelete ? row : "{}")
                )
                next += 1
            }
        }
        return events
    }
}

extension UUID {
    fileprivate var lowercased: String { uuidString.lowercased() }
}

extension Delivery {
    /// The frame's text and sequence, or nil for other deliveries.
    fileprivate var frame: (text: String, sequence: Int64)? {
        guard case .frame(let bytes, let sequence, _) = self else { return nil }
        return (String(buffer: bytes), sequence)
    }

    /// The JSON of a frame's data line.
    fileprivate var json: [String: Any]? {
        guard let text = frame?.text, let line = text.split(separator: "\n").first(where: { $0.hasPrefix("data: ") }) else { return nil }
        return (try? JSONSerialization.jsonObject(with: Data(line.dropFirst(6).utf8))) as? [String: Any]
    }

    fileprivate var channels: [String]? { json?["channels"] as? [String] }

    /// The text of an ephemeral frame (presence, broadcast), or nil for other deliveries.
    fileprivate var frameText: String? {
        guard case .ephemeral(let bytes) = self else { return nil }
        return String(buffer: bytes)
    }

    /// The `id:` of a frame.
    fileprivate var frameID: String? {
        guard let line = frame?.text.split(separator: "\n").first, line.hasPrefix("id: ") else { return nil }
        return String(line.dropFirst(4))
    }
    fileprivate var operation: String? { json?["event"] as? String }
}

extension Subscription {
    /// What is buffered now, without waiting.
    fileprivate func buffered() -> [Delivery] { deliveries.availableDeliveries() }

    fileprivate func sequences() -> [Int64] { buffered().compactMap { $0.frame?.sequence } }
}

// MARK: - Channels

@Suite struct ChannelTests {
    @Test func parsesAndPrintsChannels() throws {
        let id = Fixture.branchA
        #expect(try Channel(parsing: "branch:\(id.uuidString)") == .branch(id))
        #expect(try Channel(parsing: "plan:\(id.lowercased)") == .plan(id))
        #expect(Channel.branch(id).description == "branch:\(id.lowercased)")
        #expect(Channel.plan(id).description == "plan:\(id.lowercased)")
        #expect(
            try Channel.parseList(["branch:\(id.lowercased),plan:\(Fixture.planA.lowercased)", "branch:\(id.lowercased)"]) == [
                .branch(id), .plan(Fixture.planA),
            ])
    }

    @Test(arguments: ["", "branch:", "branch:not-a-uuid", "task:\(UUID().uuidString)", "BRANCH:\(UUID().uuidString)", " plan:x"])
    func refusesBadChannels(text: String) {
        #expect {
            try Channel(parsing: text)
        } throws: { error in
            let error = error as? APIError
            return error?.status == .badRequest && error?.code == "invalid_parameter" && error?.message.contains("branch:<uuid>") == true
        }
    }

    @Test func refusesNoOrTooManyChannels() {
        #expect(throws: APIError.self) { try Channel.parseList([]) }
        #expect(throws: APIError.self) { try Channel.parseList([","]) }
        let many = (0...Channel.maxPerSubscription).map { _ in "branch:\(UUID().uuidString)" }
        #expect(throws: APIError.self) { try Channel.parseList(many) }
    }
}

@Suite struct DeliveryTests {
    let branch = Fixture.branchA
    let plan = Fixture.planA

    private func deliveries(_ table: String, plan: UUID?) -> [ChannelPlacement] {
        Channel.placements(of: Fixture.event(1, table, .insert, branch: branch, plan: plan))
    }

    @Test(arguments: ["plan", "task", "status_history", "attachment"])
    func planScopedTablesGoToPlanAndBranch(table: String) {
        #expect(
            deliveries(table, plan: plan) == [
                ChannelPlacement(channel: .plan(plan), operation: .insert, branchID: branch),
                ChannelPlacement(channel: .branch(branch), operation: .insert, branchID: branch),
            ]
        )
    }

    @Test(arguments: ["client_card", "branch_member"])
    func branchTablesGoToTheBranchOnly(table: String) {
        #expect(deliveries(table, plan: plan) == [ChannelPlacement(channel: .branch(branch), operation: .insert, branchID: branch)])
    }

    @Test func anAttachmentWithoutAPlanGoesToTheBranchOnly() {
        #expect(deliveries("attachment", plan: nil).map(\.channel) == [.branch(branch)])
    }

    @Test func anUpdateThatStaysIsAnUpdateEverywhere() {
        let event = Fixture.event(1, "task", .update, branch: branch, plan: plan, oldBranch: branch, oldPlan: plan)
        #expect(Channel.placements(of: event).map(\.operation) == [.update, .update])
    }

    @Test func aMoveBetweenPlansIsADeleteInTheOldPlanAndAnInsertInTheNew() {
        let newPlan = Fixture.planA2
        let record = Fixture.taskRow(branch: branch, plan: newPlan)
        let event = Fixture.event(
            7, "task", .update, branch: branch, plan: newPlan, oldPlan: plan, record: record,
            oldRecord: #"{"plan_id":"\#(plan.lowercased)","title":"Before"}"#)
        #expect(
            Channel.placements(of: event) == [
                ChannelPlacement(channel: .plan(newPlan), operation: .insert, branchID: branch),
                ChannelPlacement(channel: .plan(plan), operation: .delete, branchID: branch),
                ChannelPlacement(channel: .branch(branch), operation: .update, branchID: branch),
            ]
        )
        let moveOut = event.placed(as: .delete)
        #expect(moveOut.operation == .delete)
        #expect(moveOut.place.plan == plan)
        #expect(moveOut.record == "{}")
        // The whole row as it was before the move: its old plan and the old value of a column changed with it.
        let before = try? JSONSerialization.jsonObject(with: Data(moveOut.oldRecord.utf8)) as? [String: String]
        #expect(
            before == [
                "id": Fixture.taskA.lowercased, "branch_id": branch.lowercased, "plan_id": plan.lowercased, "status": "taken", "title": "Before",
            ])
        #expect(moveOut.previousPlace == nil)
        let moveIn = event.placed(as: .insert)
        #expect(moveIn.operation == .insert)
        #expect(moveIn.place.plan == newPlan)
        #expect(moveIn.record == record)
        #expect(moveIn.oldRecord == "{}")
        #expect(event.placed(as: .update) == event)
    }

    @Test func aMoveBetweenBranchesNeedsTheOldBranchForTheDelete() {
        let event = Fixture.event(
            3,
            "client_card",
            .update,
            branch: Fixture.branchB,
            oldBranch: branch,
            record: #"{"branch_id":"\#(Fixture.branchB.lowercased)"}"#
        )
        #expect(
            Channel.placements(of: event) == [
                ChannelPlacement(channel: .branch(Fixture.branchB), operation: .insert, branchID: Fixture.branchB),
                ChannelPlacement(channel: .branch(branch), operation: .delete, branchID: branch),
            ]
        )
        #expect(event.placed(as: .delete).place.branch == branch)
    }
}

// MARK: - Options

@Suite struct SubscriptionOptionsTests {
    @Test func parsesTablesEventsAndFilters() throws {
        let options = try SubscriptionOptions(parameters: [
            ("table", "task,status_history"), ("event", "INSERT"), ("event", "update"), ("filter", "status=in.(taken,done)"),
            ("channel", "ignored"),
        ])
        #expect(options.tables == ["task", "status_history"])
        #expect(options.operations == [.insert, .update])
        #expect(options.filters == [ListQuery.Filter(column: "status", negated: false, op: .in, values: ["taken", "done"])])
        #expect(try SubscriptionOptions(parameters: [("event", "*")]).operations == nil)
        #expect(SubscriptionOptions().tables == nil)
    }

    @Test(arguments: [
        ("table", "tasks", "invalid_parameter"),
        ("table", "app_user", "invalid_parameter"),
        ("table", ",", "invalid_parameter"),
        ("event", "TRUNCATE", "invalid_parameter"),
        ("filter", "status", "invalid_filter"),
        ("filter", "=eq.done", "invalid_filter"),
        ("filter", "nope=eq.1", "invalid_filter"),
        ("filter", "status=eq.lost", "invalid_filter"),
        ("filter", "status=like.done", "invalid_filter"),
        ("filter", "plan_id=eq.not-a-uuid", "invalid_filter"),
    ])
    func refusesBadOptions(name: String, value: String, code: String) {
        #expect {
            try SubscriptionOptions(parameters: [(name, value)])
        } throws: { error in
            (error as? APIError)?.code == code && (error as? APIError)?.status == .badRequest
        }
    }

    @Test func aFilterColumnMustBeInATableInScope() throws {
        #expect(throws: APIError.self) { try SubscriptionOptions(parameters: [("table", "client_card"), ("filter", "status=eq.done")]) }
        _ = try SubscriptionOptions(parameters: [("table", "client_card,task"), ("filter", "status=eq.done")])
        _ = try SubscriptionOptions(parameters: [("filter", "role=eq.admin")])
    }

    @Test func allowsAtMostTwentyFilters() throws {
        let filters = (0..<SubscriptionOptions.maxFilters).map { _ in ("filter", "status=neq.done") }
        _ = try SubscriptionOptions(parameters: filters)
        #expect(throws: APIError.self) { try SubscriptionOptions(parameters: filters + [("filter", "status=neq.done")]) }
    }

    @Test func tableAndEventOptionsSelectEvents() throws {
        let options = try SubscriptionOptions(parameters: [("table", "task"), ("event", "DELETE")])
        let task = Fixture.task(1, .delete, branch: Fixture.branchA, plan: Fixture.planA)
        #expect(options.matches(task, operation: .delete))
        #expect(!options.matches(task, operation: .insert))
        #expect(!options.matches(Fixture.event(2, "plan", .delete, branch: Fixture.branchA), operation: .delete))
    }

    private func matches(_ filter: String, _ record: String, table: String = "task", operation: ChangeEvent.Operation = .insert) throws -> Bool {
        let options = try SubscriptionOptions(parameters: [("filter", filter)])
        let event = Fixture.event(
            1,
            table,
            operation,
            branch: Fixture.branchA,
            record: operation == .delete ? "{}" : record,
            oldRecord: operation == .delete ? record : "{}"
        )
        return options.matches(event, operation: operation)
    }

    @Test func comparisonOperators() throws {
        let row = #"{"status":"done","title":"b","byte_size":1000,"client_card_id":null}"#
        #expect(try matches("status=eq.done", row))
        #expect(try !matches("status=eq.taken", row))
        #expect(try matches("status=neq.taken", row))
        #expect(try !matches("status=neq.done", row))
        #expect(try matches("title=lt.c", row))
        #expect(try !matches("title=lt.b", row))
        #expect(try matches("title=lte.b", row))
        #expect(try matches("title=gt.a", row))
        #expect(try !matches("title=gt.b", row))
        #expect(try matches("title=gte.b", row))
        #expect(try !matches("title=gte.c", row))
        #expect(try matches("status=in.(taken,done)", row))
        #expect(try !matches("status=in.(taken,posted)", row))
        #expect(try matches("status=not.in.(taken,posted)", row))
        #expect(try !matches("status=not.eq.done", row))
    }

    @Test func numbersCompareAsNumbers() throws {
        let row = #"{"byte_size":1000}"#
        #expect(try matches("byte_size=gt.200", row, table: "attachment"))
        #expect(try !matches("byte_size=lt.200", row, table: "attachment"))
        #expect(try matches("byte_size=eq.1000", row, table: "attachment"))
        #expect(try matches("byte_size=in.(5,1000)", row, table: "attachment"))
    }

    @Test func nullMatchesOnlyIsNull() throws {
        let row = #"{"client_card_id":null}"#
        #expect(try matches("client_card_id=is.null", row))
        #expect(try !matches("client_card_id=not.is.null", row))
        #expect(try !matches("client_card_id=eq.\(UUID().uuidString)", row))
        #expect(try !matches("client_card_id=not.eq.\(UUID().uuidString)", row))
        #expect(try matches("client_card_id=is.null", "{}"))
        let set = #"{"client_card_id":"\#(Fixture.taskA.lowercased)"}"#
        #expect(try matches("client_card_id=not.is.null", set))
        #expect(try matches("client_card_id=eq.\(Fixture.taskA.uuidString)", set))
    }

    @Test func timestampsCompareAsInstants() throws {
        let row = #"{"starts_at":"2024-05-01T10:00:00.5+00:00"}"#
        #expect(try matches("starts_at=eq.2024-05-01T12:00:00.500+02:00", row))
        #expect(try matches("starts_at=gt.2024-05-01T11:00:00+02:00", row))
        #expect(try !matches("starts_at=gt.2024-05-01 10:00:00.500001Z", row))
        #expect(try matches("starts_at=lt.2024-05-01 10:00:00.500001Z", row))
        #expect(try matches("starts_at=gte.2024-05-01T06:00-04", row))
        #expect(try !matches("starts_at=lte.2024-05-01T06:00-04", row))
    }

    @Test func aTableWithoutTheColumnDoesNotMatch() throws {
        #expect(try !matches("status=not.is.null", #"{"status":"done"}"#, table: "client_card"))
        #expect(try !matches("status=is.null", "{}", table: "client_card"))
    }

    @Test func aDeleteIsFilteredOnTheOldRow() throws {
        #expect(try matches("status=eq.done", #"{"status":"done"}"#, operation: .delete))
        let options = try SubscriptionOptions(parameters: [("filter", "status=eq.done")])
        let event = Fixture.event(1, "task", .delete, branch: Fixture.branchA, record: #"{"status":"taken"}"#, oldRecord: #"{"status":"done"}"#)
        #expect(options.matches(event, operation: .delete))
        // A move-out DELETE is filtered on the row as it was before the move, as the channel it leaves knew it.
        let moveOut = Fixture.event(2, "task", .update, branch: Fixture.branchA, record: #"{"status":"done"}"#, oldRecord: #"{"status":"taken"}"#)
        #expect(!options.matches(moveOut, operation: .delete))
        let doneBefore = Fixture.event(3, "task", .update, branch: Fixture.branchA, record: #"{"status":"taken"}"#, oldRecord: #"{"status":"done"}"#)
        #expect(options.matches(doneBefore, operation: .delete))
    }

    @Test func readsTimestampShapes() {
        let reference = Instant(iso8601: "2024-05-01T10:00:00Z")
        #expect(reference != nil)
        #expect(Instant(iso8601: "2024-05-01 12:00:00+02") == reference)
        #expect(Instant(iso8601: "2024-05-01T05:30:00-0430") == reference)
        #expect(Instant(iso8601: "2024-05-01T10:00z") == reference)
        #expect(Instant(iso8601: "1970-01-01T00:00:00.000000001Z") == Instant(seconds: 0, nanoseconds: 1))
        #expect(Instant(iso8601: "1969-12-31T23:59:59Z") == Instant(seconds: -1, nanoseconds: 0))
        #expect(Instant(iso8601: "2000-03-01T00:00:00Z")?.seconds == 951_868_800)
        for bad in ["2024-05-01", "2024-05-01T10:00:00", "2024-13-01T10:00Z", "2024-05-01T10:00:00.Z", "2024-05-01T10:00:00.1234567890Z", "x"] {
            #expect(Instant(iso8601: bad) == nil, "\(bad)")
        }
    }
}

// MARK: - SSE frames

@Suite struct SSEFrameTests {
    @Test func encodesAChangeExactly() {
        let event = Fixture.event(
            42,
            "task",
            .update,
            branch: Fixture.branchA,
            plan: Fixture.planA,
            record: #"{"id":1,"title":"a\nb"}"#,
            oldRecord: #"{"title":"x"}"#
        )
        let text = String(buffer: SSEFrame.change(event, channels: [.plan(Fixture.planA), .branch(Fixture.branchA)]))
        let expected =
            "id: 42\nevent: postgres_changes\ndata: "
            + #"{"type":"postgres_changes","schema":"public","table":"task","event":"UPDATE","#
            + #""commit_timestamp":"2024-05-01T10:00:00.123456+00:00","#
            + #""channels":["plan:\#(Fixture.planA.lowercased)","branch:\#(Fixture.branchA.lowercased)"],"#
            + #""record":{"id":1,"title":"a\nb"},"old_record":{"title":"x"}}"# + "\n\n"
        #expect(text == expected)
    }

    @Test func replacesRawLineBreaksInSplicedJSON() {
        let event = Fixture.event(1, "task", .insert, branch: Fixture.branchA, record: "{\"a\":\n1,\r\n\"b\":2}", oldRecord: "")
        let text = String(buffer: SSEFrame.change(event, channels: []))
        #expect(text.hasSuffix(#""channels":[],"record":{"a": 1,  "b":2},"old_record":{}}"# + "\n\n"))
        #expect(text.filter { $0 == "\n" }.count == 4)
    }

    @Test func coalescesFramesInOrderWithinTheLimit() {
        let frames = (1...10).map { index in
            var buffer = ByteBufferAllocator().buffer(capacity: 0)
            buffer.writeString("id: \(index)\ndata: " + String(repeating: "x", count: index * 10) + "\n\n")
            return buffer
        }
        let whole = frames.map { String(buffer: $0) }.joined()
        let joined = SSEFrame.coalesced(frames, limit: 200)
        #expect(joined.map { String(buffer: $0) }.joined() == whole)
        #expect(joined.count > 1 && joined.count < frames.count)
        #expect(joined.allSatisfy { $0.readableBytes <= 200 })
        #expect(SSEFrame.coalesced(frames).count == 1)
        // A frame larger than the limit goes out whole, on its own.
        var large = ByteBufferAllocator().buffer(capacity: 0)
        large.writeString(String(repeating: "y", count: 500))
        let withLarge = SSEFrame.coalesced([frames[0], large, frames[1]], limit: 200)
        #expect(withLarge.map(\.readableBytes) == [frames[0].readableBytes, 500, frames[1].readableBytes])
        #expect(SSEFrame.coalesced([frames[0]]) == [frames[0]])
        // The shared frames themselves are untouched.
        #expect(frames.map { String(buffer: $0) }.joined() == whole)
    }

    @Test func encodesCommentsRetryAndControlFrames() {
        #expect(String(buffer: SSEFrame.keepalive) == ": keepalive\n\n")
        #expect(String(buffer: SSEFrame.comment("a\nb")) == ": a b\n\n")
        #expect(String(buffer: SSEFrame.retry(milliseconds: 3000)) == "retry: 3000\n\n")
        #expect(
            String(buffer: SSEFrame.control(.revoked, reason: "gone \"now\"\n"))
                == "event: revoked\ndata: {\"type\":\"revoked\",\"reason\":\"gone \\\"now\\\"\\n\"}\n\n")
        #expect(String(buffer: SSEFrame.end(.tokenExpired)).hasPrefix("event: token_expired\ndata: {\"type\":\"token_expired\",\"reason\":\""))
        #expect(String(buffer: SSEFrame.end(.slowConsumer)).hasPrefix("event: error\ndata: {\"type\":\"error\",\"reason\":\"slow_consumer"))
        #expect(String(buffer: SSEFrame.control(.reset, reason: "r")) == "event: reset\ndata: {\"type\":\"reset\",\"reason\":\"r\"}\n\n")
    }
}

// MARK: - Hub

@Suite struct HubTests {
    @Test func aMemberOfOneBranchNeverReceivesAnotherBranchsEvents() throws {
        let hub = Fixture.hub()
        let alice = try hub.subscribe(principal: .user(Fixture.alice), channels: [.branch(Fixture.branchA), .plan(Fixture.planA)])
        let eventsOfB = Fixture.everyKindOfEvent(in: Fixture.branchB, plan: Fixture.planB, from: 1)
        let eventsOfA = Fixture.everyKindOfEvent(in: Fixture.branchA, plan: Fixture.planA, from: 100)
        let membershipOfB = Fixture.event(
            200, "branch_member", .insert, branch: Fixture.branchB, record: Fixture.memberRow(user: Fixture.bob, branch: Fixture.branchB))
        hub.publish(eventsOfB + [membershipOfB] + eventsOfA)
        let received = alice.buffered()
        #expect(received.compactMap { $0.frame?.sequence } == eventsOfA.map(\.sequence))
        #expect(received.allSatisfy { $0.frame?.text.contains(Fixture.branchB.lowercased) == false })
        #expect(received.compactMap(\.operation).filter { $0 == "DELETE" }.count == 5)
    }

    @Test func aPlanChannelDeliversOnlyRowsOfABranchTheUserReads() throws {
        let hub = Fixture.hub()
        let alice = try hub.subscribe(principal: .user(Fixture.alice), channels: [.plan(Fixture.planA)])
        hub.publish([
            Fixture.task(1, branch: Fixture.branchB, plan: Fixture.planA),
            Fixture.task(2, .delete, branch: Fixture.branchB, plan: Fixture.planA),
            Fixture.task(3, branch: Fixture.branchA, plan: Fixture.planA),
        ])
        #expect(alice.sequences() == [3])
    }

    @Test func aUserCannotSubscribeToAnotherBranchOrAnUnknownPlan() {
        let hub = Fixture.hub()
        for channel in [Channel.branch(Fixture.branchB), .plan(Fixture.planB), .plan(UUID())] {
            #expect {
                try hub.subscribe(principal: .user(Fixture.alice), channels: [.branch(Fixture.branchA), channel])
            } throws: { error in
                (error as? APIError)?.code == "not_found"
            }
        }
        #expect(throws: APIError.self) { try hub.subscribe(principal: .user(Fixture.alice), channels: []) }
        #expect(hub.subscriberCount == 0)
    }

    @Test func theServiceRoleGetsEverything() throws {
        let hub = Fixture.hub()
        let service = try hub.subscribe(principal: .service(actingUser: nil), channels: [.branch(Fixture.branchA), .branch(Fixture.branchB)])
        let events =
            Fixture.everyKindOfEvent(in: Fixture.branchA, plan: Fixture.planA, from: 1)
            + Fixture.everyKindOfEvent(in: Fixture.branchB, plan: Fixture.planB, from: 100)
        hub.publish(events)
        #expect(service.sequences() == events.map(\.sequence))
    }

    @Test func anEventOnSeveralChannelsOfASubscriberArrivesOnceNamingThemAll() throws {
        let hub = Fixture.hub()
        let alice = try hub.subscribe(principal: .user(Fixture.alice), channels: [.branch(Fixture.branchA), .plan(Fixture.planA)])
        let branchOnly = try hub.subscribe(principal: .user(Fixture.alice), channels: [.branch(Fixture.branchA)])
        hub.publish([Fixture.task(5, branch: Fixture.branchA, plan: Fixture.planA)])
        let received = alice.buffered()
        #expect(received.count == 1)
        #expect(received.first?.frame?.sequence == 5)
        #expect(received.first?.channels == ["plan:\(Fixture.planA.lowercased)", "branch:\(Fixture.branchA.lowercased)"])
        #expect(branchOnly.buffered().first?.channels == ["branch:\(Fixture.branchA.lowercased)"])
    }

    @Test func aMoveShowsAsDeleteInsertOrUpdateDependingOnTheChannels() throws {
        let hub = Fixture.hub()
        let oldPlan = try hub.subscribe(principal: .user(Fixture.alice), channels: [.plan(Fixture.planA)])
        let newPlan = try hub.subscribe(principal: .user(Fixture.alice), channels: [.plan(Fixture.planA2)])
        let bothPlans = try hub.subscribe(principal: .user(Fixture.alice), channels: [.plan(Fixture.planA), .plan(Fixture.planA2)])
        let record = Fixture.taskRow(branch: Fixture.branchA, plan: Fixture.planA2)
        hub.publish([
            Fixture.event(
                9, "task", .update, branch: Fixture.branchA, plan: Fixture.planA2, oldPlan: Fixture.planA, record: record,
                oldRecord: #"{"plan_id":"\#(Fixture.planA.lowercased)"}"#)
        ])
        let deleted = oldPlan.buffered()
        #expect(deleted.map(\.operation) == ["DELETE"])
        // The row as it was: the old plan learns nothing of where it went.
        #expect((deleted.first?.json?["old_record"] as? [String: Any])?["plan_id"] as? String == Fixture.planA.lowercased)
        #expect(deleted.first?.frame?.text.contains(Fixture.planA2.lowercased) == false)
        #expect((deleted.first?.json?["record"] as? [String: Any])?.isEmpty == true)
        #expect(newPlan.buffered().map(\.operation) == ["INSERT"])
        let updated = bothPlans.buffered()
        #expect(updated.map(\.operation) == ["UPDATE"])
        #expect(updated.first?.channels?.count == 2)
    }

    @Test func optionsApplyPerSubscriber() throws {
        let hub = Fixture.hub()
        let options = try SubscriptionOptions(parameters: [("table", "task"), ("event", "INSERT,DELETE"), ("filter", "status=eq.done")])
        let filtered = try hub.subscribe(principal: .user(Fixture.alice), channels: [.branch(Fixture.branchA)], options: options)
        let all = try hub.subscribe(principal: .user(Fixture.alice), channels: [.branch(Fixture.branchA)])
        hub.publish([
            Fixture.task(1, .insert, branch: Fixture.branchA, plan: Fixture.planA, status: "taken"),
            Fixture.task(2, .insert, branch: Fixture.branchA, plan: Fixture.planA, status: "done"),
            Fixture.task(3, .update, branch: Fixture.branchA, plan: Fixture.planA, status: "done"),
            Fixture.task(4, .delete, branch: Fixture.branchA, plan: Fixture.planA, status: "done"),
            Fixture.event(5, "client_card", .insert, branch: Fixture.branchA, record: #"{"status":"done"}"#),
        ])
        #expect(filtered.sequences() == [2, 4])
        #expect(all.sequences() == [1, 2, 3, 4, 5])
    }

    @Test func aRemovedMembershipRevokesTheUsersSubscriptionsInThatBranch() throws {
        let hub = Fixture.hub()
        hub.setMemberships([Fixture.alice: Memberships([Fixture.branchA: .viewer, Fixture.branchB: .viewer])])
        let inA = try hub.subscribe(principal: .user(Fixture.alice), channels: [.plan(Fixture.planA)])
        let inB = try hub.subscribe(principal: .user(Fixture.alice), channels: [.branch(Fixture.branchB)])
        let watcher = try hub.subscribe(principal: .service(actingUser: nil), channels: [.branch(Fixture.branchA)])
        let row = Fixture.memberRow(user: Fixture.alice, branch: Fixture.branchA)
        hub.publish([
            Fixture.task(1, branch: Fixture.branchA, plan: Fixture.planA),
            Fixture.event(2, "branch_member", .delete, branch: Fixture.branchA, oldRecord: row),
            Fixture.task(3, branch: Fixture.branchA, plan: Fixture.planA),
            Fixture.task(4, branch: Fixture.branchB, plan: Fixture.planB),
        ])
        #expect(inA.buffered() == [.end(reason: .revoked)])
        #expect(inB.sequences() == [4])
        #expect(watcher.sequences() == [1, 2, 3])
        #expect(hub.memberships(of: Fixture.alice) == Memberships([Fixture.branchB: .viewer]))
        #expect(hub.subscriberCount == 2)
        #expect(hub.subscriberCount(on: .plan(Fixture.planA)) == 0)
        #expect(throws: APIError.self) { try hub.subscribe(principal: .user(Fixture.alice), channels: [.branch(Fixture.branchA)]) }
    }

    @Test func aRevokedReaderWaitingForEventsWakesWithTheEnd() async throws {
        let hub = Fixture.hub()
        let alice = try hub.subscribe(principal: .user(Fixture.alice), channels: [.branch(Fixture.branchA)])
        async let first = alice.deliveries.first { _ in true }
        try await Task.sleep(for: .milliseconds(20))
        let row = Fixture.memberRow(user: Fixture.alice, branch: Fixture.branchA)
        hub.publish([Fixture.event(1, "branch_member", .delete, branch: Fixture.branchA, oldRecord: row)])
        #expect(await first == .end(reason: .revoked))
    }

    @Test func aNewMembershipLetsTheUserSubscribeAndReceiveLaterEvents() throws {
        let hub = Fixture.hub()
        #expect(throws: APIError.self) { try hub.subscribe(principal: .user(Fixture.alice), channels: [.branch(Fixture.branchB)]) }
        let row = Fixture.memberRow(user: Fixture.alice, branch: Fixture.branchB, role: .editor)
        hub.publish([Fixture.event(1, "branch_member", .insert, branch: Fixture.branchB, record: row)])
        #expect(hub.memberships(of: Fixture.alice).role(in: Fixture.branchB) == .editor)
        let alice = try hub.subscribe(principal: .user(Fixture.alice), channels: [.branch(Fixture.branchB)], after: 1)
        hub.publish([Fixture.task(2, branch: Fixture.branchB, plan: Fixture.planB)])
        #expect(alice.sequences() == [2])
    }

    @Test func databaseMembershipsAdmitButNeverReviveARemovedOne() throws {
        let hub = Fixture.hub()
        let database = Memberships([Fixture.branchA: .admin, Fixture.branchB: .viewer])
        let inB = try hub.subscribe(principal: .user(Fixture.alice), channels: [.branch(Fixture.branchB)], admittedWith: database)
        // Admission changes nothing the feed knows: memberships come from the feed alone.
        #expect(hub.memberships(of: Fixture.alice) == Memberships([Fixture.branchA: .viewer]))
        let row = Fixture.memberRow(user: Fixture.alice, branch: Fixture.branchB)
        hub.publish([Fixture.event(1, "branch_member", .insert, branch: Fixture.branchB, record: row)])
        #expect(inB.sequences() == [1])
        hub.publish([Fixture.event(2, "branch_member", .delete, branch: Fixture.branchB, oldRecord: row)])
        #expect(inB.buffered() == [.end(reason: .revoked)])
        // A database read that predates the removal admits nothing of that branch.
        #expect(throws: APIError.self) {
            try hub.subscribe(
                principal: .user(Fixture.alice), channels: [.branch(Fixture.branchB)], admittedWith: Memberships([Fixture.branchB: .viewer]))
        }
        hub.publish([Fixture.event(3, "branch_member", .insert, branch: Fixture.branchB, record: row)])
        #expect(hub.memberships(of: Fixture.alice).role(in: Fixture.branchB) == .viewer)
        _ = try hub.subscribe(
            principal: .user(Fixture.alice), channels: [.branch(Fixture.branchB)], admittedWith: Memberships([Fixture.branchB: .viewer]))
    }

    @Test func theRemovalsTheHubRemembersAreBounded() {
        let hub = Fixture.hub()
        let removals = (1...Int64(HubState.removedMembershipsLimit + 50)).map { sequence in
            Fixture.event(
                sequence, "branch_member", .delete, branch: Fixture.branchA, oldRecord: Fixture.memberRow(user: UUID(), branch: Fixture.branchA))
        }
        hub.publish(removals)
        let remembered = hub.state.withLock { $0.removedMemberships }
        #expect(remembered.count <= HubState.removedMembershipsLimit)
        // The newest removal is remembered: a read of the database from before it is refused.
        #expect(remembered.values.contains(removals.last!.sequence))
    }

    @Test func aMembershipTheDatabaseHasButTheFeedHasNotReachedShowsNoEarlierEvent() throws {
        let hub = Fixture.hub()
        // The database already has Alice in branch B; the feed has not reached the grant yet.
        let alice = try hub.subscribe(
            principal: .user(Fixture.alice),
            channels: [.branch(Fixture.branchB)],
            admittedWith: Memberships([Fixture.branchA: .viewer, Fixture.branchB: .viewer])
        )
        let row = Fixture.memberRow(user: Fixture.alice, branch: Fixture.branchB)
        hub.publish([
            Fixture.task(1, branch: Fixture.branchB, plan: Fixture.planB),
            Fixture.event(2, "branch_member", .insert, branch: Fixture.branchB, record: row),
            Fixture.task(3, branch: Fixture.branchB, plan: Fixture.planB),
        ])
        #expect(alice.sequences() == [2, 3])
    }

    @Test func aMembershipUpdateToAnotherBranchMovesAccess() throws {
        let hub = Fixture.hub()
        let alice = try hub.subscribe(principal: .user(Fixture.alice), channels: [.branch(Fixture.branchA)])
        let row = Fixture.memberRow(user: Fixture.alice, branch: Fixture.branchB)
        hub.publish([
            Fixture.event(
                1, "branch_member", .update, branch: Fixture.branchB, oldBranch: Fixture.branchA, record: row,
                oldRecord: #"{"branch_id":"\#(Fixture.branchA.lowercased)"}"#)
        ])
        #expect(alice.buffered() == [.end(reason: .revoked)])
        #expect(hub.memberships(of: Fixture.alice) == Memberships([Fixture.branchB: .viewer]))
    }

    @Test func newPlansBecomeSubscribable() throws {
        let hub = Fixture.hub()
        let plan = UUID()
        #expect(throws: APIError.self) { try hub.subscribe(principal: .user(Fixture.alice), channels: [.plan(plan)]) }
        hub.publish([Fixture.event(1, "plan", .insert, branch: Fixture.branchA, plan: plan, record: "{}")])
        let subscription = try hub.subscribe(principal: .user(Fixture.alice), channels: [.plan(plan)])
        hub.publish([Fixture.task(2, branch: Fixture.branchA, plan: plan)])
        #expect(subscription.sequences() == [2])
    }

    @Test func aSlowConsumerIsEndedWhenItsBufferOverflows() throws {
        let hub = Fixture.hub(bufferLimit: 3)
        let slow = try hub.subscribe(principal: .user(Fixture.alice), channels: [.branch(Fixture.branchA)])
        let fast = try hub.subscribe(principal: .service(actingUser: nil), channels: [.branch(Fixture.branchA)])
        hub.publish((1...3).map { Fixture.task($0, branch: Fixture.branchA, plan: Fixture.planA) })
        #expect(fast.sequences() == [1, 2, 3])
        hub.publish([Fixture.task(4, branch: Fixture.branchA, plan: Fixture.planA)])
        #expect(slow.buffered() == [.end(reason: .slowConsumer)])
        #expect(fast.sequences() == [4])
        #expect(hub.subscriberCount == 1)
    }

    @Test func expiredTokensAreSwept() throws {
        let hub = Fixture.hub()
        let now = Date()
        let expiring = try hub.subscribe(principal: .user(Fixture.alice), channels: [.branch(Fixture.branchA)], expiresAt: now.addingTimeInterval(60))
        let lasting = try hub.subscribe(
            principal: .user(Fixture.alice), channels: [.branch(Fixture.branchA)], expiresAt: now.addingTimeInterval(3600))
        #expect(hub.sweep(now: now) == 0)
        #expect(hub.sweep(now: now.addingTimeInterval(61)) == 1)
        #expect(expiring.buffered() == [.end(reason: .tokenExpired)])
        #expect(hub.subscriberCount == 1)
        hub.publish([Fixture.task(1, branch: Fixture.branchA, plan: Fixture.planA)], now: now.addingTimeInterval(3601))
        #expect(lasting.buffered() == [.end(reason: .tokenExpired)])
        #expect(hub.subscriberCount == 0)
    }

    // MARK: Resuming from a snapshot's cursor

    /// The snapshot saw 100 and 102 committed; 101 and 103 were in progress; 104 and later had not begun.
    static let snapshot = Cursor.Snapshot(xmin: 100, xmax: 104, inProgress: [101, 103])
    static let snapshotText = "100:104:101,103"

    /// Tasks of branch A from transactions 101, 102 (which PostgreSQL logged after 101 but made visible before the
    /// snapshot) and 103; then one of transaction 104 in branch B, which settles the snapshot; then 105 in branch A.
    static func eventsAroundASnapshot() -> [ChangeEvent] {
        [(11, 101, Fixture.branchA), (12, 102, Fixture.branchA), (13, 103, Fixture.branchA), (14, 104, Fixture.branchB), (15, 105, Fixture.branchA)]
            .map { sequence, xid, branch in
                var event = Fixture.task(Int64(sequence), branch: branch, plan: branch == Fixture.branchA ? Fixture.planA : Fixture.planB)
                event.xid = UInt32(xid)
                return event
            }
    }

    @Test func framesCarryTheSnapshotInTheirIdsUntilATransactionBegunAfterItArrives() throws {
        let hub = Fixture.hub()
        let live = try hub.subscribe(principal: .user(Fixture.alice), channels: [.branch(Fixture.branchA)], after: 10, snapshot: Self.snapshot)
        let plain = try hub.subscribe(principal: .user(Fixture.alice), channels: [.branch(Fixture.branchA)], after: 10)
        hub.publish(Self.eventsAroundASnapshot())
        // Transaction 102 is in the snapshot: skipped. 101 and 103 are not, but a transaction the snapshot saw could
        // still follow them, so their ids keep the snapshot; from 104 on (seen in another branch) none can.
        #expect(live.buffered().compactMap(\.frameID) == ["11~\(Self.snapshotText)", "13~\(Self.snapshotText)", "15"])
        #expect(plain.buffered().compactMap(\.frameID) == ["11", "12", "13", "15"])

        // A client that reconnects with the id of frame 11 still skips 102.
        let resumed = try #require(Cursor("11~\(Self.snapshotText)"))
        let again = try hub.subscribe(
            principal: .user(Fixture.alice), channels: [.branch(Fixture.branchA)], after: resumed.sequence, snapshot: resumed.snapshot)
        var history = Fixture.aliceHistory()
        let replayed = hub.catchUp(again.id, with: Self.eventsAroundASnapshot().filter { $0.sequence > resumed.sequence }, history: &history)
        #expect(replayed.compactMap(\.frameID) == ["13~\(Self.snapshotText)", "15"])
    }

    @Test func anEventThatSettlesTheSnapshotLiveDoesNotChangeTheIdsOfEarlierEventsStillBeingReplayed() throws {
        let hub = Fixture.hub()
        let events = Self.eventsAroundASnapshot()
        let subscription = try hub.subscribe(
            principal: .user(Fixture.alice), channels: [.branch(Fixture.branchA)], after: 10, snapshot: Self.snapshot)
        // The tail publishes 14 and 15 while the stream still replays 11 to 14 from the log.
        hub.publish(Array(events.suffix(2)))
        var history = Fixture.aliceHistory()
        let replayed = hub.catchUp(subscription.id, with: Array(events.prefix(4)), history: &history)
        #expect(replayed.compactMap(\.frameID) == ["11~\(Self.snapshotText)", "13~\(Self.snapshotText)"])
        #expect(subscription.buffered().compactMap(\.frameID) == ["15"])
    }

    @Test func onlyATransactionBegunAfterTheSnapshotSettlesIt() {
        #expect(!Self.snapshot.isSettled(by: 99))
        #expect(!Self.snapshot.isSettled(by: 101))
        #expect(!Self.snapshot.isSettled(by: 103))
        #expect(Self.snapshot.isSettled(by: 104))
        #expect(Self.snapshot.isSettled(by: 2_000_000_000))
        // Transaction ids wrap around: 5 is 2^32 − 2^32 + 5, after a snapshot taken near the end of the range.
        #expect(Cursor.Snapshot(xmin: 4_294_967_000, xmax: 4_294_967_290, inProgress: []).isSettled(by: 5))
        #expect(!Cursor.Snapshot(xmin: 4_294_967_000, xmax: 4_294_967_290, inProgress: []).isSettled(by: 4_294_967_100))
    }

    @Test func unsubscribingRemovesFromTheIndex() throws {
        let hub = Fixture.hub()
        let first = try hub.subscribe(principal: .user(Fixture.alice), channels: [.branch(Fixture.branchA), .plan(Fixture.planA)])
        let second = try hub.subscribe(principal: .user(Fixture.alice), channels: [.branch(Fixture.branchA)])
        #expect(hub.subscriberCount(on: .branch(Fixture.branchA)) == 2)
        hub.unsubscribe(first.id)
        hub.unsubscribe(first.id)
        #expect(hub.subscriberCount == 1)
        #expect(hub.subscriberCount(on: .branch(Fixture.branchA)) == 1)
        #expect(hub.subscriberCount(on: .plan(Fixture.planA)) == 0)
        hub.publish([Fixture.task(1, branch: Fixture.branchA, plan: Fixture.planA)])
        #expect(first.buffered().isEmpty)
        #expect(second.sequences() == [1])
    }

    @Test func droppingOrCancellingTheReaderUnsubscribes() async throws {
        let hub = Fixture.hub()
        do {
            _ = try hub.subscribe(principal: .user(Fixture.alice), channels: [.branch(Fixture.branchA)])
        }
        #expect(hub.subscriberCount == 0)
        let subscription = try hub.subscribe(principal: .user(Fixture.alice), channels: [.branch(Fixture.branchA)])
        let reader = Task { await subscription.deliveries.first { _ in true } }
        try await Task.sleep(for: .milliseconds(20))
        reader.cancel()
        #expect(await reader.value == nil)
        #expect(hub.subscriberCount == 0)
    }

    @Test func aWaitingReaderGetsFramesInOrderAndNeverARepeat() async throws {
        let hub = Fixture.hub()
        let subscription = try hub.subscribe(principal: .user(Fixture.alice), channels: [.branch(Fixture.branchA)], after: 2)
        let reader = Task {
            var sequences: [Int64] = []
            for await delivery in subscription.deliveries {
                guard let frame = delivery.frame else { break }
                sequences.append(frame.sequence)
                if sequences.count == 3 { break }
            }
            return sequences
        }
        try await Task.sleep(for: .milliseconds(20))
        hub.publish((1...4).map { Fixture.task($0, branch: Fixture.branchA, plan: Fixture.planA) })
        hub.publish((4...6).map { Fixture.task($0, branch: Fixture.branchA, plan: Fixture.planA) })
        #expect(await reader.value == [3, 4, 5])
    }

    @Test func catchUpFramesComeFirstAndLiveRepeatsAreSkipped() throws {
        let hub = Fixture.hub()
        let subscription = try hub.subscribe(principal: .user(Fixture.alice), channels: [.branch(Fixture.branchA)], after: 10)
        hub.publish([13, 14, 15].map { Fixture.task($0, branch: Fixture.branchA, plan: Fixture.planA) })
        let logged =
            [9, 11, 12, 13, 14].map { Fixture.task($0, branch: Fixture.branchA, plan: Fixture.planA) } + [
                Fixture.task(14, branch: Fixture.branchB, plan: Fixture.planB)
            ]
        var history = Fixture.aliceHistory()
        let caughtUp = hub.catchUp(subscription.id, with: logged, history: &history)
        #expect(caughtUp.compactMap { $0.frame?.sequence } == [11, 12, 13, 14])
        hub.publish([Fixture.task(16, branch: Fixture.branchA, plan: Fixture.planA)])
        #expect(subscription.sequences() == [15, 16])
    }

    @Test func aReplayShowsEachEventByTheMembershipsOfItsPosition() throws {
        let hub = Fixture.hub()
        let subscription = try hub.subscribe(principal: .user(Fixture.alice), channels: [.branch(Fixture.branchA)], after: 0)
        // Alice joined A at 3, left at 5, came back at 7: the log's intervals as loaded, accounting for events up to 8.
        var history: MembershipHistory? = MembershipHistory(
            userID: Fixture.alice,
            intervals: [
                .init(branchID: Fixture.branchA, role: .viewer, from: 3, until: 5),
                .init(branchID: Fixture.branchA, role: .viewer, from: 7, until: nil),
            ],
            coveredThrough: 8
        )
        let caughtUp = hub.catchUp(
            subscription.id, with: (1...8).map { Fixture.task($0, branch: Fixture.branchA, plan: Fixture.planA) }, history: &history)
        #expect(caughtUp.compactMap { $0.frame?.sequence } == [3, 4, 7, 8])
    }

    @Test func aReplayThatReadsPastWhatWasLoadedAppliesGrantsAndEndsAtTheUsersRevocation() throws {
        let hub = Fixture.hub()
        let subscription = try hub.subscribe(principal: .user(Fixture.alice), channels: [.branch(Fixture.branchA)], after: 0)
        var history = Fixture.aliceHistory(coveredThrough: 2)
        let row = Fixture.memberRow(user: Fixture.alice, branch: Fixture.branchA)
        let bobRow = Fixture.memberRow(user: Fixture.bob, branch: Fixture.branchA)
        let caughtUp = hub.catchUp(
            subscription.id,
            with: [
                Fixture.task(2, branch: Fixture.branchA, plan: Fixture.planA),
                Fixture.event(3, "branch_member", .insert, branch: Fixture.branchA, record: bobRow),
                Fixture.task(4, branch: Fixture.branchA, plan: Fixture.planA),
                Fixture.event(5, "branch_member", .delete, branch: Fixture.branchA, oldRecord: row),
                Fixture.task(6, branch: Fixture.branchA, plan: Fixture.planA),
            ],
            history: &history
        )
        #expect(caughtUp.compactMap { $0.frame?.sequence } == [2, 3, 4])
        #expect(subscription.buffered() == [.end(reason: .revoked)])
        #expect(history?.memberships(at: 6) == Memberships())
    }

    @Test func aTruncateResetsTheStreamsOfItsTableAndOfMembersRevokesEveryUser() throws {
        let hub = Fixture.hub()
        let branchStream = try hub.subscribe(principal: .user(Fixture.alice), channels: [.branch(Fixture.branchA)])
        let cardsOnly = try hub.subscribe(
            principal: .user(Fixture.bob), channels: [.plan(Fixture.planB)], options: try SubscriptionOptions(tables: ["task"]))
        let service = try hub.subscribe(principal: .service(actingUser: nil), channels: [.branch(Fixture.branchB)])
        let serviceTasks = try hub.subscribe(principal: .service(actingUser: nil), channels: [.plan(Fixture.planB)])
        hub.publish([Fixture.event(1, "client_card", .truncate, branch: nil)])
        #expect(branchStream.buffered() == [.end(reason: .reset)])
        #expect(service.buffered() == [.end(reason: .reset)])
        // A plan channel carries no client cards, and a stream of tasks only wants none.
        #expect(cardsOnly.buffered().isEmpty)
        #expect(serviceTasks.buffered().isEmpty)

        hub.publish([Fixture.event(2, "branch_member", .truncate, branch: nil)])
        #expect(cardsOnly.buffered() == [.end(reason: .revoked)])
        #expect(serviceTasks.buffered().isEmpty)
        #expect(hub.memberships(of: Fixture.bob) == Memberships())
        #expect(throws: APIError.self) {
            try hub.subscribe(principal: .user(Fixture.bob), channels: [.plan(Fixture.planB)], admittedWith: Memberships([Fixture.branchB: .editor]))
        }
    }

    @Test func presenceAndBroadcastReachOnlyThoseWhoMayReadThePlanNow() throws {
        let hub = Fixture.hub()
        let alice = try hub.subscribe(principal: .user(Fixture.alice), channels: [.presence(plan: Fixture.planA), .plan(Fixture.planA)])
        let watcher = try hub.subscribe(principal: .service(actingUser: nil), channels: [.presence(plan: Fixture.planA), .plan(Fixture.planA)])
        hub.presenceHeartbeat(
            PresenceEntry(
                planID: Fixture.planA, userID: Fixture.alice, state: PresenceState(action: .viewing), onlineSince: Date(), lastSeen: Date(), node: "n"
            ))
        #expect(alice.buffered().count == 2)  // the sync frame and the join
        _ = watcher.buffered()

        // The plan moves to branch B, where Alice is no member: her streams of it end, and she leaves its presence.
        let moved = Fixture.event(
            1, "plan", .update, branch: Fixture.branchB, plan: Fixture.planA, oldBranch: Fixture.branchA,
            record: #"{"id":"\#(Fixture.planA.lowercased)","branch_id":"\#(Fixture.branchB.lowercased)"}"#,
            oldRecord: #"{"branch_id":"\#(Fixture.branchA.lowercased)"}"#)
        hub.publish([moved])
        #expect(alice.buffered() == [.end(reason: .revoked)])
        #expect(hub.presences(on: Fixture.planA).isEmpty)
        #expect(watcher.buffered().contains { $0.frameText?.contains("leave") == true })

        // Bob (a member of B) hears heartbeats and broadcasts now; a stream kept by a user who lost access hears none.
        let bob = try hub.subscribe(principal: .user(Fixture.bob), channels: [.presence(plan: Fixture.planA), .plan(Fixture.planA)])
        _ = bob.buffered()
        // Bob, admitted to a plan of A by a membership the database has and the feed has not brought yet (a node whose
        // feed lags): presence and broadcasts are of the present, so he hears them now, by the database's word. (A
        // change event still waits for the grant's event: aMembershipTheDatabaseHasButTheFeedHasNotReachedShowsNoEarlierEvent.)
        let early = try hub.subscribe(
            principal: .user(Fixture.bob), channels: [.plan(Fixture.planA2)], admittedWith: Memberships([Fixture.branchA: .viewer]))
        hub.broadcast(BroadcastMessage(planID: Fixture.planA2, userID: Fixture.alice, event: "e", payloadJSON: "{}"))
        #expect(early.buffered().count == 1)
        hub.publish([
            Fixture.event(2, "branch_member", .insert, branch: Fixture.branchA, record: Fixture.memberRow(user: Fixture.bob, branch: Fixture.branchA))
        ])
        hub.broadcast(BroadcastMessage(planID: Fixture.planA2, userID: Fixture.alice, event: "e", payloadJSON: "{}"))
        #expect(early.buffered().count == 1)
        hub.broadcast(BroadcastMessage(planID: Fixture.planA, userID: Fixture.bob, event: "e", payloadJSON: "{}"))
        #expect(bob.buffered().count == 1)
    }

    @Test func keepalivesGoToIdleSubscribersOnly() throws {
        let hub = Fixture.hub()
        let idle = try hub.subscribe(principal: .user(Fixture.alice), channels: [.branch(Fixture.branchA)])
        let busy = try hub.subscribe(principal: .user(Fixture.bob), channels: [.branch(Fixture.branchB)])
        hub.publish([Fixture.task(1, branch: Fixture.branchB, plan: Fixture.planB)])
        hub.sendKeepalives()
        hub.sendKeepalives()
        #expect(idle.buffered() == [.keepalive])
        #expect(busy.sequences() == [1])
    }

    @Test func shutdownEndsEveryoneAndRefusesNewSubscribers() throws {
        let hub = Fixture.hub()
        let alice = try hub.subscribe(principal: .user(Fixture.alice), channels: [.branch(Fixture.branchA)])
        hub.publish([Fixture.task(1, branch: Fixture.branchA, plan: Fixture.planA)])
        hub.shutdown()
        #expect(alice.buffered() == [.end(reason: .shutdown)])
        #expect(hub.subscriberCount == 0)
        #expect {
            try hub.subscribe(principal: .user(Fixture.alice), channels: [.branch(Fixture.branchA)])
        } throws: { error in
            (error as? APIError)?.code == "not_ready"
        }
    }
}
