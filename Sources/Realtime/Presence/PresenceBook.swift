import Foundation

/// Who is present on which plan, as one node knows it: its own users' heartbeats and those other nodes announced.
///
/// A value type, kept by the hub under its lock so that a stream's first `sync` frame and the changes after it never
/// overlap or leave a gap.
struct PresenceBook: Sendable {
    /// plan → user → entry; plans with nobody present have no entry.
    private(set) var plans: [UUID: [UUID: PresenceEntry]] = [:]

    /// Records a heartbeat: a `join` for someone new, an `update` when the state changed, nil when only the time moved;
    /// and the entry as stored, which keeps the first `onlineSince`.
    mutating func heartbeat(_ entry: PresenceEntry) -> (change: PresenceChange?, stored: PresenceEntry) {
        var entry = entry
        let existing = plans[entry.planID]?[entry.userID]
        if let existing {
            entry.onlineSince = min(existing.onlineSince, entry.onlineSince)
            entry.lastSeen = max(existing.lastSeen, entry.lastSeen)
        }
        plans[entry.planID, default: [:]][entry.userID] = entry
        guard let existing else { return (.join(entry), entry) }
        return (existing.state == entry.state ? nil : .update(entry), entry)
    }

    /// The current entry of a user on a plan.
    func entry(plan: UUID, user: UUID) -> PresenceEntry? { plans[plan]?[user] }

    /// Removes a user from a plan; the `leave`, or nil if they were not present.
    mutating func leave(plan: UUID, user: UUID) -> PresenceChange? {
        guard let entry = plans[plan]?.removeValue(forKey: user) else { return nil }
        if plans[plan]?.isEmpty == true { plans.removeValue(forKey: plan) }
        return .leave(entry)
    }

    /// Removes every entry not heard of for `ttl` by `now`; their `leave`s.
    mutating func expire(now: ContinuousClock.Instant, ttl: Duration) -> [PresenceChange] {
        var leaves: [PresenceChange] = []
        for (plan, users) in plans {
            for (user, entry) in users where now - entry.heardAt >= ttl {
                if let leave = leave(plan: plan, user: user) { leaves.append(leave) }
            }
        }
        return leaves
    }

    /// Everyone present on a plan, the longest present first.
    func present(on plan: UUID) -> [PresenceEntry] {
        (plans[plan] ?? [:]).values.sorted { ($0.onlineSince, $0.userID.uuidString) < ($1.onlineSince, $1.userID.uuidString) }
    }

    /// The entries a node holds.
    func held(by node: String) -> [PresenceEntry] {
        plans.values.flatMap { $0.values.filter { $0.node == node } }
    }

    var count: Int { plans.values.reduce(0) { $0 + $1.count } }
}
