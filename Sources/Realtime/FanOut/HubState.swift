import Foundation
import Logging
import NIOCore
import Synchronization

/// Everything the hub guards with its lock.
struct HubState {
    var subscribers: [SubscriptionID: Subscriber] = [:]
    /// The subscribers of each channel; channels without subscribers have no entry.
    var index: [Channel: [SubscriptionID: Subscriber]] = [:]
    /// Each user's subscriptions, to end them when the user loses a branch.
    var byUser: [UUID: Set<SubscriptionID>] = [:]
    var memberships: [UUID: Memberships] = [:]
    var planBranches: [UUID: UUID] = [:]
    /// Memberships the change feed removed (and has not granted again since), with the sequence of the removal: a
    /// database read that predates the removal must not admit a subscription with them. At most
    /// ``removedMembershipsLimit``; past that the oldest removals are forgotten (a read that old is long answered).
    var removedMemberships: [MembershipChange.Member: Int64] = [:]
    static let removedMembershipsLimit = 10_000
    var isShutDown = false
    /// Whether the memberships were loaded (``Hub/setMemberships(_:)``): until then streams wait to subscribe.
    var isLoaded = false
    /// Who is present on which plan (see `Hub+presence.swift`).
    var presence = PresenceBook()
    /// Scratch list of the subscribers one event reaches, kept to reuse its storage.
    var reached: [Subscriber] = []
    /// What to send to whom, in order, as decided under the lock: the hub carries it out (``Hub/carryOut(_:)``) before
    /// it lets go of the lock.
    var outbox: [(Subscriber, Delivery)] = []
    /// Subscribers resumed from a snapshot's cursor whose snapshot no event has settled yet: every event is shown to
    /// them, delivered to them or not.
    var unsettledSnapshots: [SubscriptionID: Subscriber] = [:]

    func memberships(of principal: Principal) -> Memberships {
        guard case .user(let userID) = principal else { return Memberships() }
        return memberships[userID] ?? Memberships()
    }

    /// Whether the feed has removed this user's membership of this branch (within what ``removedMemberships`` keeps).
    func wasRemoved(_ userID: UUID, from branch: UUID) -> Bool {
        removedMemberships[MembershipChange.Member(userID: userID, branchID: branch)] != nil
    }

    /// The database's memberships of a principal less those the feed has removed (the read may predate the removal).
    func stillHeld(_ database: Memberships, by principal: Principal) -> Memberships {
        guard case .user(let userID) = principal else { return database }
        var memberships = database
        for branch in database.roles.keys where wasRemoved(userID, from: branch) {
            memberships.roles[branch] = nil
        }
        return memberships
    }

    /// The branches of the channels, after checking that the principal may read each of them: by the database's
    /// memberships when given (already less those the feed removed, ``stillHeld(_:by:)``), else by the cache's.
    func readableBranches(of channels: Set<Channel>, for principal: Principal, admittedWith database: Memberships? = nil) throws(APIError)
        -> Set<UUID>
    {
        let memberships = database ?? memberships(of: principal)
        var branches = Set<UUID>()
        for channel in channels {
            let branch: UUID?
            let resource: Resource
            switch channel {
            case .branch(let id):
                branch = id
                resource = .branch
            case .plan(let id), .presence(plan: let id):
                branch = planBranches[id]
                resource = .plan
            }
            guard let branch else {
                if principal.isService { continue }
                throw .notFound("\(channel) was not found.")
            }
            guard Policy.decide(principal, memberships, .read, resource, inBranch: branch) == .allowed else {
                throw .notFound("\(channel) was not found, or you are not a member of its branch.")
            }
            branches.insert(branch)
        }
        return branches
    }

    mutating func add(_ subscriber: Subscriber) {
        subscribers[subscriber.id] = subscriber
        for channel in subscriber.channels { index[channel, default: [:]][subscriber.id] = subscriber }
        if case .user(let userID) = subscriber.principal { byUser[userID, default: []].insert(subscriber.id) }
        if subscriber.snapshot != nil { unsettledSnapshots[subscriber.id] = subscriber }
    }

    mutating func remove(_ id: SubscriptionID) -> Subscriber? {
        guard let subscriber = subscribers.removeValue(forKey: id) else { return nil }
        unsettledSnapshots.removeValue(forKey: id)
        for channel in subscriber.channels {
            index[channel]?.removeValue(forKey: id)
            if index[channel]?.isEmpty == true { index.removeValue(forKey: channel) }
        }
        if case .user(let userID) = subscriber.principal {
            byUser[userID]?.remove(id)
            if byUser[userID]?.isEmpty == true { byUser.removeValue(forKey: userID) }
        }
        return subscriber
    }

    mutating func end(_ subscriber: Subscriber, _ reason: EndReason, logger: Logger) {
        outbox.append((subscriber, .end(reason: reason)))
        _ = remove(subscriber.id)
        logger.debug("subscription ended", metadata: ["subscription": "\(subscriber.id)", "reason": "\(reason)"])
    }

    mutating func publish(_ event: ChangeEvent, now: Date, logger: Logger) {
        if event.operation == .truncate {
            applyTruncate(event, logger: logger)
            return
        }
        switch event.table {
        case TableSchema.branchMember.table: applyMembershipChange(event, logger: logger)
        case TableSchema.plan.table: notePlan(event, logger: logger)
        default: break
        }
        if !unsettledSnapshots.isEmpty {
            for subscriber in unsettledSnapshots.values {
                subscriber.noteSnapshotSettling(event)
                if subscriber.snapshotSettledAt != nil { unsettledSnapshots.removeValue(forKey: subscriber.id) }
            }
        }
        guard !index.isEmpty else { return }
        var fanOut = EventFanOut(event)
        for (position, delivery) in fanOut.deliveries.enumerated() {
            guard let channelSubscribers = index[delivery.channel] else { continue }
            for subscriber in channelSubscribers.values {
                if subscriber.deliveryMask == 0 { reached.append(subscriber) }
                subscriber.deliveryMask |= 1 << position
            }
        }
        guard !reached.isEmpty else { return }
        let committedAt = event.commitTime.timeIntervalSince1970
        for subscriber in reached {
            let mask = subscriber.deliveryMask
            subscriber.deliveryMask = 0
            guard event.sequence > subscriber.lastSequence else { continue }
            if subscriber.isExpired(at: now) {
                end(subscriber, .tokenExpired, logger: logger)
                continue
            }
            let memberships = memberships(of: subscriber.principal)
            guard let shared = fanOut.frame(for: subscriber.reader(holding: subscriber.lastSequence), mask: mask, memberships: memberships)
            else { continue }
            let bytes = subscriber.frame(shared, sequence: event.sequence)
            outbox.append((subscriber, .frame(bytes, sequence: event.sequence, committedAt: committedAt)))
            subscriber.lastSequence = event.sequence
        }
        reached.removeAll(keepingCapacity: true)
    }

    /// A table emptied at once: a TRUNCATE of `branch_member` ends every membership (every user's subscription ends as
    /// `revoked`); one of `plan` forgets every plan. Every other subscription whose channels carry the table ends as
    /// `reset`, to load a snapshot: what it holds is stale. A TRUNCATE of ``ChangeEvent/everyTable`` (the feed lost
    /// changes) resets every subscription and forgets every plan; the memberships it lost come as events after it.
    private mutating func applyTruncate(_ event: ChangeEvent, logger: Logger) {
        for subscriber in unsettledSnapshots.values { subscriber.noteSnapshotSettling(event) }
        switch event.table {
        case TableSchema.branchMember.table:
            for (user, userMemberships) in memberships {
                for branch in userMemberships.roles.keys { noteRemoved(MembershipChange.Member(userID: user, branchID: branch), at: event.sequence) }
            }
            memberships.removeAll()
            for subscriber in Array(subscribers.values) where !subscriber.principal.isService { end(subscriber, .revoked, logger: logger) }
        case TableSchema.plan.table, ChangeEvent.everyTable:
            // Plans may have gone or moved: the next request for one asks the database again.
            planBranches.removeAll()
        default:
            break
        }
        for subscriber in Array(subscribers.values) where subscriber.isReset(by: event) { end(subscriber, .reset, logger: logger) }
    }

    private mutating func notePlan(_ event: ChangeEvent, logger: Logger) {
        guard let plan = event.place.plan else { return }
        guard event.operation != .delete else {
            // A deleted plan is gone for presence and broadcast too: the next request asks the database (404).
            planBranches.removeValue(forKey: plan)
            return
        }
        guard let branch = event.place.branch else { return }
        let moved = planBranches[plan].map { $0 != branch } ?? false
        planBranches[plan] = branch
        if moved { followPlanMove(plan, to: branch, logger: logger) }
    }

    /// After a plan moved to another branch: the subscriptions to the plan (changes, presence, broadcast) of those who
    /// may not read the new branch end as `revoked`, and they leave its presence; the others now depend on the new
    /// branch.
    private mutating func followPlanMove(_ plan: UUID, to branch: UUID, logger: Logger) {
        var affected: [SubscriptionID: Subscriber] = [:]
        for channel in [Channel.plan(plan), .presence(plan: plan)] {
            affected.merge(index[channel] ?? [:]) { first, _ in first }
        }
        for subscriber in affected.values {
            if mayRead(plan: branch, subscriber.principal) {
                subscriber.branches = branches(of: subscriber.channels)
            } else {
                end(subscriber, .revoked, logger: logger)
            }
        }
        for entry in presence.present(on: plan) where !mayRead(plan: branch, .user(entry.userID)) {
            guard let leave = presence.leave(plan: plan, user: entry.userID) else { continue }
            fanOutEphemeral(SSEFrame.presence(leave), on: .presence(plan: plan), logger: logger)
        }
    }

    /// The branches of channels as the hub knows them now.
    func branches(of channels: Set<Channel>) -> Set<UUID> {
        var branches = Set<UUID>()
        for channel in channels {
            switch channel {
            case .branch(let id): branches.insert(id)
            case .plan(let id), .presence(plan: let id): if let branch = planBranches[id] { branches.insert(branch) }
            }
        }
        return branches
    }

    private mutating func applyMembershipChange(_ event: ChangeEvent, logger: Logger) {
        guard let change = MembershipChange(event) else {
            logger.warning("branch_member event without user_id, branch_id or role", metadata: ["sequence": "\(event.sequence)"])
            return
        }
        if let removed = change.removed {
            noteRemoved(removed, at: event.sequence)
            memberships[removed.userID]?.roles[removed.branchID] = nil
            if memberships[removed.userID]?.roles.isEmpty == true { memberships.removeValue(forKey: removed.userID) }
            for id in byUser[removed.userID] ?? [] {
                guard let subscriber = subscribers[id], subscriber.branches.contains(removed.branchID) else { continue }
                end(subscriber, .revoked, logger: logger)
            }
        }
        if let (member, role) = change.added {
            removedMemberships.removeValue(forKey: member)
            memberships[member.userID, default: Memberships()].roles[member.branchID] = role
        }
    }

    /// Records a removal the feed applied, forgetting the oldest half when there are too many.
    private mutating func noteRemoved(_ member: MembershipChange.Member, at sequence: Int64) {
        removedMemberships[member] = sequence
        guard removedMemberships.count > Self.removedMembershipsLimit else { return }
        let sequences = removedMemberships.values.sorted()
        let oldestKept = sequences[sequences.count / 2]
        removedMemberships = removedMemberships.filter { $0.value >= oldestKept }
    }
}
