import Foundation
import HTTPTypes
import NIOCore
import Synchronization
import Testing

@testable import Realtime

/// The hub without I/O: who receives which event, memberships and moves over time, presence, slow readers, removal.
/// One file over 400 lines because every test drives the same hub state machine through the same fixture.
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
        hub.broadcast(BroadcastMessage(planID: Fixture.planA2, userID: Fixture.alice, event: "e", payload: [:]))
        #expect(early.buffered().count == 1)
        hub.publish([
            Fixture.event(2, "branch_member", .insert, branch: Fixture.branchA, record: Fixture.memberRow(user: Fixture.bob, branch: Fixture.branchA))
        ])
        hub.broadcast(BroadcastMessage(planID: Fixture.planA2, userID: Fixture.alice, event: "e", payload: [:]))
        #expect(early.buffered().count == 1)
        hub.broadcast(BroadcastMessage(planID: Fixture.planA, userID: Fixture.bob, event: "e", payload: [:]))
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
