import Foundation
import HTTPTypes
import Logging
import PostgresNIO

/// Decides whether a principal may see channels: a branch it is a member of, a plan (or a plan's presence) of such a
/// branch, anything for the service role. Refusals are 404, as in REST, so that a stranger cannot tell a hidden plan
/// from a missing one.
struct ChannelAccess: Sendable {
    let hub: Hub
    let database: Database

    /// Refuses channels the caller cannot see, and makes sure the hub knows the plans the database knows — a plan
    /// created a moment ago may not have reached the hub yet. Returns the caller's memberships as the database has them,
    /// to admit the subscription with (``Hub/subscribe(principal:channels:options:expiresAt:after:snapshot:admittedWith:)``):
    /// the hub itself learns memberships only from the feed, in log order.
    @discardableResult
    func check(_ principal: Principal, _ channels: Set<Channel>) async throws -> Memberships {
        try await database.withRequestTransaction(as: principal) { transaction in
            let memberships = transaction.memberships()
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
            return memberships
        }
    }

    /// Whether the principal may read a plan, asked of the database every time (a presence heartbeat, a leave, a
    /// broadcast or a presence list): the hub's cache follows the feed, which may lag behind a revocation.
    ///
    /// - Throws: `APIError` 404 when the plan is missing or not visible; 403 `forbidden` when the database refuses a
    ///   user who was a member of the plan's branch as far as the feed knows (the membership was revoked: they know the
    ///   plan exists, and are told why they are refused).
    func checkPlan(_ principal: Principal, _ plan: UUID) async throws {
        do {
            try await check(principal, [.plan(plan)])
        } catch let error as APIError where error.status == .notFound {
            guard case .user(let user) = principal, let branch = hub.branch(ofPlan: plan), hub.knows(user, asMemberOf: branch) else {
                throw error
            }
            throw APIError.forbidden("Your membership of this plan's branch was removed.")
        }
    }
}
