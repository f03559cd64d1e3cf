import Foundation
import HTTPTypes
import NIOCore
import Synchronization
import Testing

@testable import Realtime

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
