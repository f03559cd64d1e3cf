import Foundation
import Testing

@testable import Realtime

/// A write's Swift policy and statement, without a database: what the planner refuses with which error, and what it
/// hands `realtime.commit_write` (values only as parameters, never in the statement's text).
@Suite struct RowWritePlannerTests {
    let branch = UUID()
    let otherBranch = UUID()
    let user = UUID()
    let plan = UUID()
    let task = UUID()

    func caller(_ role: MemberRole?, located: [RowLocation: UUID?] = [:]) -> CallerView {
        CallerView(principal: .user(user), memberships: Memberships(role.map { [branch: $0] } ?? [:]), located: located)
    }

    func taskBody(plan: UUID, title: String = "Fit'; DROP TABLE task; --") -> [String: JSONValue] {
        [
            "plan_id": .string(plan.uuidString), "title": .string(title), "starts_at": .string("2026-12-07T09:00:00Z"),
            "ends_at": .string("2026-12-07T10:00:00Z"),
        ]
    }

    func code(_ body: () throws -> PlannedWrite) -> String? {
        do {
            _ = try body()
            return nil
        } catch let error as APIError {
            return error.code
        } catch {
            return "\(error)"
        }
    }

    @Test func anEditorsCreateCarriesEveryValueAsAParameter() throws {
        let located = [RowLocation(table: "plan", id: plan): branch]
        let write = try RowWritePlanner(schema: .task, caller: caller(.editor, located: located)).create(taskBody(plan: plan))
        #expect(write.staleCheck == nil)
        #expect(write.statement.hasPrefix("INSERT INTO \"task\""))
        #expect(!write.statement.contains("DROP TABLE") && !write.statement.contains(branch.uuidString.lowercased()))
        #expect(write.values.contains { $0?.contains("DROP TABLE") == true }, "the title travels as a value")
        #expect(write.values.contains(branch.uuidString.lowercased()), "the branch comes from the plan")
    }

    @Test func thePolicyRefusesBeforeAnythingIsSent() {
        let located = [RowLocation(table: "plan", id: plan): branch]
        #expect(code { try RowWritePlanner(schema: .task, caller: caller(.viewer, located: located)).create(taskBody(plan: plan)) } == "forbidden")
        #expect(
            code { try RowWritePlanner(schema: .task, caller: caller(nil, located: located)).create(taskBody(plan: plan)) } == "invalid_reference")
        #expect(
            code { try RowWritePlanner(schema: .task, caller: caller(.editor)).create(taskBody(plan: plan)) } == "invalid_reference", "no such plan")
        #expect(code { try RowWritePlanner(schema: .task, caller: caller(.editor)).update(task, ["title": .string("x")]) } == "not_found")
        let elsewhere = [RowLocation(table: "task", id: task): otherBranch]
        #expect(code { try RowWritePlanner(schema: .task, caller: caller(.admin, located: elsewhere)).delete(task) } == "not_found")
        #expect(code { try RowWritePlanner(schema: .task, caller: caller(.editor, located: located)).create(["title": .string("x")]) } != nil)
    }

    @Test func anUpdateChecksStalenessOnlyWithTheClientsUpdatedAt() throws {
        let located: [RowLocation: UUID?] = [RowLocation(table: "task", id: task): branch, RowLocation(table: "plan", id: plan): branch]
        let planner = RowWritePlanner(schema: .task, caller: caller(.editor, located: located))
        #expect(try planner.update(task, ["title": .string("x")]).staleCheck == nil)
        let checked = try planner.update(task, ["title": .string("x"), "updated_at": .string("2026-12-07T09:00:00Z")])
        #expect(checked.staleCheck?.contains("FOR UPDATE") == true)
        #expect(checked.values.contains("2026-12-07T09:00:00Z"))
        let moved = [RowLocation(table: "task", id: task): branch, RowLocation(table: "plan", id: plan): otherBranch]
        let other = RowWritePlanner(
            schema: .task,
            caller: CallerView(principal: .user(user), memberships: Memberships([branch: .editor, otherBranch: .editor]), located: moved))
        #expect(code { try other.update(task, ["plan_id": .string(plan.uuidString)]) } == "plan_in_other_branch")
    }
}
