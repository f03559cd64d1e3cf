import Foundation
import HTTPTypes
import Logging
import Testing

@testable import Realtime

@Suite struct TokenTests {
    @Test func roundTripsUsersAndTheServiceRole() async throws {
        let tokens = try await TokenAuthority(secret: "unit-test-secret-unit-test-secret")
        let user = UUID()
        let userToken = try await tokens.issue(subject: user.uuidString, role: .authenticated, lifetime: 60)
        #expect(try await tokens.principal(for: userToken) == .user(user))
        let serviceToken = try await tokens.issue(subject: "service", role: .serviceRole, lifetime: 60)
        #expect(try await tokens.principal(for: serviceToken) == .service(actingUser: nil))
    }

    @Test func refusesExpiredForeignAndNonUserTokens() async throws {
        let tokens = try await TokenAuthority(secret: "unit-test-secret-unit-test-secret")
        let expired = try await tokens.issue(subject: UUID().uuidString, role: .authenticated, lifetime: -1)
        await #expect(throws: TokenAuthority.Failure.expired) { try await tokens.principal(for: expired) }
        let foreign = try await TokenAuthority(secret: "other-secret-other-secret-other-secret").issue(
            subject: UUID().uuidString,
            role: .authenticated,
            lifetime: 60
        )
        await #expect(throws: TokenAuthority.Failure.badSignature) { try await tokens.principal(for: foreign) }
        let notAUser = try await tokens.issue(subject: "bob", role: .authenticated, lifetime: 60)
        await #expect(throws: TokenAuthority.Failure.self) { try await tokens.principal(for: notAUser) }
    }
}
