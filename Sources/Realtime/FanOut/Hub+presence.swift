import Foundation
import Logging
import NIOCore
import Synchronization

/// Presence and broadcast in the hub: ephemeral frames fanned out by channel like changes, with no sequence and no
/// replay. The presence book sits under the hub's lock, so that a stream's `sync` frame and the changes after it
/// neither overlap nor leave a gap.
extension Hub {
    /// Records a heartbeat and sends its `join` or `update` (if the state changed) to the plan's presence streams.
    /// Returns the entry as stored, with its first `onlineSince`.
    @discardableResult
    public func presenceHeartbeat(_ entry: PresenceEntry) -> PresenceEntry {
        state.withLock { state in
            let (change, stored) = state.presence.heartbeat(entry)
            if let change { state.fanOutEphemeral(SSEFrame.presence(change), on: .presence(plan: entry.planID), logger: logger) }
            carryOut(&state)
            return stored
        }
    }

    /// Removes a user from a plan's presence and sends the `leave`; returns it, or nil if they were not present.
    @discardableResult
    public func presenceLeave(plan: UUID, user: UUID) -> PresenceChange? {
        state.withLock { state in
            guard let change = state.presence.leave(plan: plan, user: user) else { return nil }
            state.fanOutEphemeral(SSEFrame.presence(change), on: .presence(plan: plan), logger: logger)
            carryOut(&state)
            return change
        }
    }

    /// Removes every entry not heard of within `ttl` and sends their `leave`s; returns how many.
    @discardableResult
    public func expirePresence(now: ContinuousClock.Instant = .now, ttl: Duration) -> Int {
        state.withLock { state in
            let leaves = state.presence.expire(now: now, ttl: ttl)
            for leave in leaves {
                state.fanOutEphemeral(SSEFrame.presence(leave), on: .presence(plan: leave.entry.planID), logger: logger)
            }
            carryOut(&state)
            return leaves.count
        }
    }

    /// Everyone present on a plan, the longest present first.
    public func presences(on plan: UUID) -> [PresenceEntry] {
        state.withLock { $0.presence.present(on: plan) }
    }

    /// The entries a node holds (to announce them again to a node that just joined).
    public func presences(heldBy node: String) -> [PresenceEntry] {
        state.withLock { $0.presence.held(by: node) }
    }

    /// Sends a broadcast to the streams of its plan.
    public func broadcast(_ message: BroadcastMessage) {
        let frame = SSEFrame.broadcast(message)
        state.withLock { state in
            state.fanOutEphemeral(frame, on: .plan(message.planID), logger: logger)
            carryOut(&state)
        }
    }

    /// The branch of a plan as the hub knows it, if it does.
    public func branch(ofPlan plan: UUID) -> UUID? {
        state.withLock { $0.planBranches[plan] }
    }
}

extension HubState {
    /// Offers an ephemeral frame to every subscriber of a channel that may read the channel's plan now (the plan's
    /// branch as the hub knows it; the memberships as the feed has brought them, or as the database showed them at
    /// admission and the feed has not removed since: see ``mayHear(plan:_:)``).
    mutating func fanOutEphemeral(_ frame: ByteBuffer, on channel: Channel, logger: Logger) {
        guard let subscribers = index[channel] else { return }
        let branch = channel.planID.flatMap { planBranches[$0] }
        for subscriber in subscribers.values where mayHear(plan: branch, subscriber) {
            outbox.append((subscriber, .ephemeral(frame)))
        }
    }

    /// Whether a subscriber may hear a plan's presence and broadcasts now. They are of the present, with no history to
    /// keep in order, so besides the feed's memberships the database's at admission count, unless the feed has
    /// removed that membership since: on a node whose feed lags, a user who just joined hears the plan at once.
    func mayHear(plan branch: UUID?, _ subscriber: Subscriber) -> Bool {
        if mayRead(plan: branch, subscriber.principal) { return true }
        guard let branch, let admitted = subscriber.admittedMemberships, case .user(let userID) = subscriber.principal,
            !wasRemoved(userID, from: branch)
        else { return false }
        return Policy.decide(subscriber.principal, admitted, .read, .plan, inBranch: branch) == .allowed
    }

    /// Whether a principal may read a plan in `branch` now; a plan of no known branch only the service role reads.
    func mayRead(plan branch: UUID?, _ principal: Principal) -> Bool {
        guard let branch else { return principal.isService }
        return Policy.decide(principal, memberships(of: principal), .read, .plan, inBranch: branch) == .allowed
    }
}
