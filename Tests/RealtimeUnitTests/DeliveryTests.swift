import Foundation
import HTTPTypes
import NIOCore
import Synchronization
import Testing

@testable import Realtime

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
