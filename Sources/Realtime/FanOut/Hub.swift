import Foundation
import Logging
import NIOCore
import Synchronization

/// The fan-out of committed changes to live subscribers.
///
/// One tailer task calls ``publish(_:now:)`` in sequence order; request handlers ``subscribe(principal:channels:options:expiresAt:after:)``
/// and read their ``Subscription/deliveries``. Subscribers are indexed by channel, so an event costs work only for the
/// subscribers of its channels. The hub keeps its own copy of who is a member of which branch, and of which branch each
/// plan is in, loaded at start (``setMemberships(_:)``, ``setPlanBranches(_:)``) and kept current by the `plan` and
/// `branch_member` events it publishes — and only by them: so that at each event, the cache says who was a member at
/// that event's position in the log, and no one receives an event of a branch before the event that made them a
/// member of it. State sits behind one lock: publishing is one task, subscribing many.
public final class Hub: Sendable {
    /// The default number of frames a subscriber may have unread before it is ended as slow.
    public static let defaultBufferLimit = 1024

    /// The number of frames a subscriber may have unread before it is ended as slow.
    public let bufferLimit: Int
    let logger: Logger
    let state = Mutex(HubState())
    private let nextID = Atomic<UInt64>(0)

    public init(bufferLimit: Int = defaultBufferLimit, logger: Logger = Logger(label: "realtime.fanout")) {
        self.bufferLimit = max(1, bufferLimit)
        self.logger = logger
    }

    // MARK: Caches

    /// Replaces the membership cache with every user's memberships; subscriptions to branches no longer readable end
    /// as revoked.
    public func setMemberships(_ all: [UUID: Memberships]) {
        state.withLock { state in
            state.memberships = all.filter { !$0.value.roles.isEmpty }
            state.removedMemberships.removeAll()
            for subscriber in Array(state.subscribers.values) {
                guard case .user(let userID) = subscriber.principal else { continue }
                let memberships = state.memberships[userID] ?? Memberships()
                if subscriber.branches.contains(where: { memberships.role(in: $0) == nil }) {
                    state.end(subscriber, .revoked, logger: logger)
                }
            }
        }
    }

    /// Adds plans' branches (`[planID: branchID]`) to what the hub knows, e.g. all plans at start, or a plan just read
    /// from the database that the change feed has not brought yet.
    public func setPlanBranches(_ planBranches: [UUID: UUID]) {
        state.withLock { $0.planBranches.merge(planBranches) { _, new in new } }
    }

    /// Whether the feed has shown the user as a member of the branch: a member now, or one whose removal it applied.
    public func knows(_ userID: UUID, asMemberOf branch: UUID) -> Bool {
        state.withLock { state in
            state.memberships[userID]?.role(in: branch) != nil
                || state.removedMemberships[MembershipChange.Member(userID: userID, branchID: branch)] != nil
        }
    }

    /// The branches of channels as the hub knows them now (a plan channel's, if the hub knows the plan).
    public func branches(of channels: Set<Channel>) -> Set<UUID> {
        state.withLock { $0.branches(of: channels) }
    }

    /// A user's memberships as the hub knows them.
    public func memberships(of userID: UUID) -> Memberships {
        state.withLock { $0.memberships[userID] ?? Memberships() }
    }

    // MARK: Subscribers

    /// Registers a subscriber.
    ///
    /// - Parameters:
    ///   - expiresAt: when its token expires; ``sweep(now:)`` (and any publish after it) then ends it as `tokenExpired`.
    ///   - after: the cursor it already has (`Last-Event-ID`): no event up to it is delivered.
    ///   - snapshot: for a cursor from a snapshot, the transactions that snapshot saw: their events, which the relay
    ///     may log only after the snapshot was taken, are not delivered either.
    ///   - admittedWith: the user's memberships as the database has them now, when the caller read them: they admit
    ///     channels of a branch the user joined a moment ago, whose grant the feed has not brought yet. Events are still
    ///     delivered by the feed's own memberships, so nothing of that branch arrives before the grant's event. A
    ///     membership whose removal the feed has already applied admits nothing (the read may predate the removal).
    /// - Throws: `APIError` 400 `invalid_parameter` for no or too many channels; 404 `not_found` for a channel the
    ///   principal may not read (a user who is not a member of its branch, or a plan the hub does not know, which the
    ///   caller may look up and register with ``setPlanBranches(_:)`` before retrying); 503 `not_ready` after shutdown.
    public func subscribe(
        principal: Principal,
        channels: Set<Channel>,
        options: SubscriptionOptions = SubscriptionOptions(),
        expiresAt: Date? = nil,
        after cursor: Int64 = 0,
        snapshot: Cursor.Snapshot? = nil,
        admittedWith databaseMemberships: Memberships? = nil
    ) throws(APIError) -> Subscription {
        guard !channels.isEmpty else { throw .invalidParameter("Name at least one channel, e.g. channel=branch:<uuid>.") }
        guard channels.count <= Channel.maxPerSubscription else {
            throw .invalidParameter("A subscription takes at most \(Channel.maxPerSubscription) channels.")
        }
        let id = SubscriptionID(rawValue: nextID.add(1, ordering: .relaxed).newValue)
        let mailbox = Mailbox(limit: bufferLimit, readThrough: cursor)
        mailbox.onTermination { [weak self] in self?.unsubscribe(id) }
        try state.withLock { (state) throws(APIError) in
            guard !state.isShutDown else { throw .notReady("The server is shutting down; reconnect shortly.") }
            let admitted = databaseMemberships.map { state.stillHeld($0, by: principal) }
            let branches = try state.readableBranches(of: channels, for: principal, admittedWith: admitted)
            let subscriber = Subscriber(
                id: id,
                principal: principal,
                channels: channels,
                branches: branches,
                options: options,
                admittedMemberships: admitted,
                expiresAt: expiresAt,
                mailbox: mailbox,
                lastSequence: cursor,
                snapshot: snapshot
            )
            state.add(subscriber)
            for case .presence(let plan) in channels {
                _ = mailbox.offerEphemeral(SSEFrame.presenceSync(plan: plan, entries: state.presence.present(on: plan)))
            }
        }
        logger.debug("subscribed", metadata: ["subscription": "\(id)", "principal": "\(principal)", "channels": "\(channels.count)"])
        return Subscription(id: id, channels: channels, deliveries: DeliveryStream(mailbox: mailbox))
    }

    /// Removes a subscriber, e.g. when its response ends. Safe to call more than once.
    public func unsubscribe(_ id: SubscriptionID) {
        let removed = state.withLock { $0.remove(id) }
        if let removed {
            removed.mailbox.terminate()
            logger.debug("unsubscribed", metadata: ["subscription": "\(id)"])
        }
    }

    /// The number of registered subscribers.
    public var subscriberCount: Int { state.withLock { $0.subscribers.count } }

    /// The number of subscribers indexed under a channel.
    public func subscriberCount(on channel: Channel) -> Int { state.withLock { $0.index[channel]?.count ?? 0 } }

    // MARK: Publishing

    /// Fans out events, in sequence order, to the subscribers of their channels.
    ///
    /// `plan` events update the plan-to-branch map, and `branch_member` events the membership cache, before the event
    /// itself is delivered; a removed membership ends its user's subscriptions in that branch as `revoked` at once.
    /// A subscriber whose token expired by `now`, or whose buffer is full, is ended instead of being sent the event.
    public func publish(_ events: [ChangeEvent], now: Date = Date()) {
        for event in events {
            state.withLock { $0.publish(event, now: now, logger: logger) }
        }
    }

    /// The frames of events read back from the event log for one subscriber that resumes from a cursor, filtered like
    /// live events but by the memberships the user had **at each event's position** (`history`, which this advances
    /// past the `branch_member` events it reads), for its handler to write before it reads the live stream.
    ///
    /// Call it from the reading task, before reading ``Subscription/deliveries`` (or between reads), with events in
    /// sequence order. Live frames up to the last one returned are then skipped, so nothing arrives twice or out of
    /// order. Returns no frames for an unknown or ended subscription. A replay that reaches the user's own revocation
    /// from a branch of the subscription ends it as `revoked` there, whether or not the live feed got that far.
    func catchUp(_ id: SubscriptionID, with events: [ChangeEvent], history: inout MembershipHistory?) -> [Delivery] {
        state.withLock { state in
            guard let subscriber = state.subscribers[id] else { return [] }
            var frames: [Delivery] = []
            var readThrough = subscriber.mailbox.readThrough
            for event in events where event.sequence > readThrough {
                if let ended = history?.apply(event), !ended.isDisjoint(with: subscriber.branches) {
                    subscriber.mailbox.markRead(through: readThrough)
                    state.end(subscriber, .revoked, logger: logger)
                    return frames
                }
                if subscriber.isReset(by: event) {
                    subscriber.mailbox.markRead(through: readThrough)
                    state.end(subscriber, .reset, logger: logger)
                    return frames
                }
                subscriber.noteSnapshotSettling(event)
                if let snapshot = subscriber.snapshot, snapshot.sawCommitted(event.xid) { continue }
                var fanOut = EventFanOut(event)
                let mask = fanOut.mask(for: subscriber.channels)
                guard mask != 0 else { continue }
                let memberships = history?.memberships(at: event.sequence) ?? Memberships()
                if let shared = fanOut.frame(for: subscriber, mask: mask, memberships: memberships) {
                    let bytes = subscriber.frame(shared, sequence: event.sequence)
                    frames.append(.frame(bytes, sequence: event.sequence, committedAt: event.commitTime.timeIntervalSince1970))
                    readThrough = event.sequence
                }
            }
            if let last = events.last?.sequence, last > readThrough { readThrough = last }
            subscriber.mailbox.markRead(through: readThrough)
            subscriber.lastSequence = max(subscriber.lastSequence, readThrough)
            return frames
        }
    }

    // MARK: Housekeeping

    /// Ends the subscribers whose token expired by `now` as `tokenExpired`; returns how many.
    @discardableResult
    public func sweep(now: Date = Date()) -> Int {
        state.withLock { state in
            let expired = state.subscribers.values.filter { $0.isExpired(at: now) }
            for subscriber in expired { state.end(subscriber, .tokenExpired, logger: logger) }
            return expired.count
        }
    }

    /// Gives each idle subscriber a `.keepalive` delivery, to write ``SSEFrame/keepalive``; call it every 15 s or so.
    public func sendKeepalives() {
        state.withLock { state in
            for subscriber in state.subscribers.values { subscriber.mailbox.offerKeepalive() }
        }
    }

    /// Ends every subscriber as `shutdown` and refuses new ones.
    public func shutdown() {
        state.withLock { state in
            state.isShutDown = true
            for subscriber in Array(state.subscribers.values) { state.end(subscriber, .shutdown, logger: logger) }
        }
    }
}

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
    /// Who is present on which plan (see `Hub+presence.swift`).
    var presence = PresenceBook()
    /// Scratch list of the subscribers one event reaches, kept to reuse its storage.
    var reached: [Subscriber] = []
    /// Subscribers resumed from a snapshot's cursor whose snapshot no event has settled yet: every event is shown to
    /// them, delivered to them or not.
    var unsettledSnapshots: [SubscriptionID: Subscriber] = [:]

    func memberships(of principal: Principal) -> Memberships {
        guard case .user(let userID) = principal else { return Memberships() }
        return memberships[userID] ?? Memberships()
    }

    /// The database's memberships of a principal less those the feed has removed (the read may predate the removal).
    func stillHeld(_ database: Memberships, by principal: Principal) -> Memberships {
        guard case .user(let userID) = principal else { return database }
        var memberships = database
        for branch in database.roles.keys where removedMemberships[MembershipChange.Member(userID: userID, branchID: branch)] != nil {
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
        subscriber.mailbox.end(reason)
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
        var ended: [(Subscriber, EndReason?)] = []
        for subscriber in reached {
            let mask = subscriber.deliveryMask
            subscriber.deliveryMask = 0
            guard event.sequence > subscriber.lastSequence else { continue }
            if let snapshot = subscriber.snapshot, snapshot.sawCommitted(event.xid) { continue }
            if subscriber.isExpired(at: now) {
                ended.append((subscriber, .tokenExpired))
                continue
            }
            let memberships = memberships(of: subscriber.principal)
            guard let shared = fanOut.frame(for: subscriber, mask: mask, memberships: memberships) else { continue }
            let bytes = subscriber.frame(shared, sequence: event.sequence)
            switch subscriber.mailbox.offer(bytes, sequence: event.sequence, committedAt: committedAt) {
            case .accepted: subscriber.lastSequence = event.sequence
            case .full: ended.append((subscriber, .slowConsumer))
            case .closed: ended.append((subscriber, nil))
            }
        }
        reached.removeAll(keepingCapacity: true)
        for (subscriber, reason) in ended {
            if let reason {
                end(subscriber, reason, logger: logger)
            } else {
                _ = remove(subscriber.id)
            }
        }
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
        guard let plan = event.planID else { return }
        guard event.operation != .delete else {
            // A deleted plan is gone for presence and broadcast too: the next request asks the database (404).
            planBranches.removeValue(forKey: plan)
            return
        }
        guard let branch = event.branchID else { return }
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
