import Foundation
import HTTPTypes
import Logging
import Testing

@testable import Realtime

@Suite struct PolicyTests {
    let branch = UUID()
    let other = UUID()

    func decide(_ role: MemberRole?, _ access: Access, _ resource: Resource) -> PolicyDecision {
        let memberships = Memberships(role.map { [branch: $0] } ?? [other: .admin])
        return Policy.decide(.user(UUID()), memberships, access, resource, inBranch: branch)
    }

    @Test func viewersReadEditorsWriteAdminsManage() {
        for resource in [Resource.plan, .task, .clientCard, .attachment] {
            #expect(decide(.viewer, .read, resource) == .allowed)
            #expect(decide(.viewer, .write, resource) != .allowed)
            #expect(decide(.editor, .write, resource) == .allowed)
            #expect(decide(.admin, .write, resource) == .allowed)
            #expect(decide(nil, .read, resource) == .notVisible)
            #expect(decide(nil, .write, resource) == .notVisible)
        }
        #expect(decide(.editor, .write, .branchMember) != .allowed)
        #expect(decide(.admin, .write, .branchMember) == .allowed)
    }

    @Test func nobodyWritesStatusHistory() {
        #expect(decide(.admin, .write, .statusHistory) != .allowed)
        #expect(Policy.decide(.service(actingUser: nil), Memberships(), .write, .statusHistory, inBranch: branch) != .allowed)
        #expect(Policy.decide(.service(actingUser: nil), Memberships(), .write, .task, inBranch: branch) == .allowed)
    }

    @Test func creatingBranchesAndUsers() {
        #expect(Policy.mayCreateBranch(.service(actingUser: nil)))
        #expect(!Policy.mayCreateBranch(.user(UUID())))
        #expect(Policy.mayCreateUser(.user(UUID()), Memberships([branch: .admin])))
        #expect(!Policy.mayCreateUser(.user(UUID()), Memberships([branch: .editor])))
    }
}
