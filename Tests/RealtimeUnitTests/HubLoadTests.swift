import Foundation
import HTTPTypes
import Testing

@testable import Realtime

/// A node's hub before and after it loads the memberships. The load ends as revoked every subscription whose user the
/// loaded memberships lack; they are read from the event log, which may not hold yet a grant the database already
/// showed when it admitted the subscription. So no subscription is admitted before the load: a stream waits for it
/// (``Hub/waitUntilLoaded(within:)``). (`SlowClientAndLimitTests.aStreamOutlivesTheIdleTimeout`, which opens a stream
/// on a node just started, was revoked so in 4 of 7 runs before the wait.)
@Suite struct HubLoadTests {
    @Test func theLoadRevokesASubscriptionAdmittedBeforeItWhoseGrantTheLogLacks() throws {
        let hub = Hub()
        let early = try hub.subscribe(
            principal: .user(Fixture.alice), channels: [.branch(Fixture.branchA)], admittedWith: Memberships([Fixture.branchA: .viewer]))
        hub.setMemberships([:])  // the relay had not carried Alice's grant into the log yet
        #expect(early.buffered() == [.end(reason: .revoked)])
    }

    @Test func waitingEndsWithTheLoadOrAsNotReady() async throws {
        let hub = Hub()
        #expect(!hub.isLoaded)
        let error = await #expect(throws: APIError.self) { try await hub.waitUntilLoaded(within: .milliseconds(50)) }
        #expect(error?.code == "not_ready")
        #expect(error?.status == .serviceUnavailable)

        async let waited: Void = hub.waitUntilLoaded(within: .seconds(60))
        hub.setMemberships([:])
        try await waited
        #expect(hub.isLoaded)
    }

    @Test func aSubscriptionAdmittedAfterTheLoadOutlivesTheLogsLag() throws {
        let hub = Hub()
        hub.setMemberships([:])
        let alice = try hub.subscribe(
            principal: .user(Fixture.alice), channels: [.branch(Fixture.branchA)], admittedWith: Memberships([Fixture.branchA: .viewer]))
        hub.publish([
            Fixture.event(
                1, "branch_member", .insert, branch: Fixture.branchA, record: Fixture.memberRow(user: Fixture.alice, branch: Fixture.branchA)),
            Fixture.task(2, branch: Fixture.branchA, plan: Fixture.planA),
        ])
        #expect(alice.sequences() == [1, 2])
    }
}
