import Foundation
import Logging
import PostgresNIO

/// Decides whether a principal may see channels: a branch it is a member of, a plan (or a plan's presence) of such a
/// branch, anything for the service role. Refusals are 404, as in REST, so that a stranger cannot tell a hidden plan
/// from a missing one.
struct ChannelAccess: Sendable {
    let hub: Hub
    let database: Database
    /// Whether the hub's membership cache is kept current by the change feed, so that an allowed answer from it can be
    /// trusted without asking the database.
    let cacheIsCurrent: Bool

    /// Refuses channels the caller cannot see, and makes sure the hub knows the plans and the memberships the database
    /// knows — a plan or a membership created a moment ago may not have reached the hub yet. Returns the caller's
    /// memberships as the database has them.
    @discardableResult
    func check(_ principal: Principal, _ channels: Set<Channel>) async throws -> Memberships {
        try await database.withRequestTransaction(as: principal) { transaction in
            let memberships = try await transaction.memberships()
            for channel in channels {
                switch channel {
                case .branch(let branch):
                    guard Policy.decide(principal, memberships, .read, .branch, inBranch: branch) == .allowed else {
                        throw APIError.notFound("No branch with id \(branch.uuidString.lowercased()) is visible to you.")
                    }
                    if principal.isService {
                        let exists = try await !transaction.query("SELECT 1 FROM branch WHERE id = \(branch)").isEmpty
                        if !exists { throw APIError.notFound("No branch with id \(branch.uuidString.lowercased()).") }
                    }
                case .plan(let plan), .presence(plan: let plan):
                    let rows = try await transaction.query("SELECT branch_id FROM plan WHERE id = \(plan)")
                    guard let branch = try rows.first?.decode(UUID.self),
                        Policy.decide(principal, memberships, .read, .plan, inBranch: branch) == .allowed
                    else { throw APIError.notFound("No plan with id \(plan.uuidString.lowercased()) is visible to you.") }
                    hub.setPlanBranches([plan: branch])
                }
            }
            if case .user(let user) = principal { hub.learnMemberships(of: user, memberships) }
            return memberships
        }
    }

    /// Whether the principal may read a plan: from the hub's cache when that is current and says yes (a heartbeat
    /// every few seconds per user should not cost a transaction), from the database otherwise.
    ///
    /// - Throws: `APIError` 404 when the plan is missing or not visible.
    func checkPlan(_ principal: Principal, _ plan: UUID) async throws {
        if cacheIsCurrent, let branch = hub.branch(ofPlan: plan) {
            let memberships: Memberships
            if case .user(let user) = principal { memberships = hub.memberships(of: user) } else { memberships = Memberships() }
            if Policy.decide(principal, memberships, .read, .plan, inBranch: branch) == .allowed { return }
        }
        try await check(principal, [.plan(plan)])
    }
}
