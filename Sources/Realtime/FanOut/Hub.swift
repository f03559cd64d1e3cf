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
                || state.wasRemoved(userID, from: branch)
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
