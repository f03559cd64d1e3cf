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
            state.isLoaded = true
            state.memberships = all.filter { !$0.value.roles.isEmpty }
            state.removedMemberships.removeAll()
            for subscriber in Array(state.subscribers.values) {
                guard case .user(let userID) = subscriber.principal else { continue }
                let memberships = state.memberships[userID] ?? Memberships()
                if subscriber.branches.contains(where: { memberships.role(in: $0) == nil }) {
                    state.end(subscriber, .revoked, logger: logger)
                }
            }
            carryOut(&state)
        }
    }

    /// Whether the memberships were loaded (by the tailer, as the feed starts).
    public var isLoaded: Bool { state.withLock { $0.isLoaded } }

    /// Returns once the memberships are loaded, checking every 20 ms; `503 not_ready` after `limit`. Only a node that
    /// has just started waits: a stream must not be admitted before the load, whose memberships, read from the event
    /// log, may not hold a grant the database already showed the stream's check (the relay had not carried it yet), and
    /// would end that stream as revoked.
    public func waitUntilLoaded(within limit: Duration) async throws(APIError) {
        let deadline = ContinuousClock.now + limit
        while !isLoaded {
            guard ContinuousClock.now < deadline else { throw .notReady("The change feed is starting on this node; retry shortly.") }
            do { try await Task.sleep(for: .milliseconds(20)) } catch { throw .notReady("The request was cancelled.") }
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
        let mailbox = Mailbox(limit: bufferLimit, readThrough: cursor)
        let id = try subscribe(
            principal: principal,
            channels: channels,
            options: options,
            expiresAt: expiresAt,
            after: cursor,
            snapshot: snapshot,
            admittedWith: databaseMemberships,
            outlet: .mailbox(mailbox)
        )
        mailbox.onTermination { [weak self] in self?.unsubscribe(id) }
        return Subscription(id: id, channels: channels, deliveries: DeliveryStream(mailbox: mailbox))
    }

    /// Registers a subscriber whose deliveries go to `outlet`, like
    /// ``subscribe(principal:channels:options:expiresAt:after:snapshot:admittedWith:)``. An event stream held at its
    /// socket (``Outlet/socket(_:)``) has its deliveries written on the connection's event loop, held until
    /// ``goLive(_:)``.
    func subscribe(
        principal: Principal,
        channels: Set<Channel>,
        options: SubscriptionOptions,
        expiresAt: Date?,
        after cursor: Int64,
        snapshot: Cursor.Snapshot?,
        admittedWith databaseMemberships: Memberships?,
        outlet: Outlet
    ) throws(APIError) -> SubscriptionID {
        let id = SubscriptionID(rawValue: nextID.add(1, ordering: .relaxed).newValue)
        guard !channels.isEmpty else { throw .invalidParameter("Name at least one channel, e.g. channel=branch:<uuid>.") }
        guard channels.count <= Channel.maxPerSubscription else {
            throw .invalidParameter("A subscription takes at most \(Channel.maxPerSubscription) channels.")
        }
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
                outlet: outlet,
                lastSequence: cursor,
                snapshot: snapshot
            )
            state.add(subscriber)
            for case .presence(let plan) in channels {
                state.outbox.append((subscriber, .ephemeral(SSEFrame.presenceSync(plan: plan, entries: state.presence.present(on: plan)))))
            }
            carryOut(&state)
        }
        logger.debug("subscribed", metadata: ["subscription": "\(id)", "principal": "\(principal)", "channels": "\(channels.count)"])
        return id
    }

    /// The catch-up of a stream at a socket is written: from now on its deliveries are written as they come, except
    /// those the catch-up wrote.
    func goLive(_ id: SubscriptionID) {
        state.withLock { state in
            guard let subscriber = state.subscribers[id], case .socket(let outlet) = subscriber.outlet else { return }
            outlet.goLive(through: subscriber.readThrough)
        }
    }

    /// Removes a subscriber, e.g. when its response ends. Safe to call more than once.
    public func unsubscribe(_ id: SubscriptionID) {
        let removed = state.withLock { $0.remove(id) }
        if let removed {
            switch removed.outlet {
            case .mailbox(let mailbox): mailbox.terminate()
            case .socket(let outlet): outlet.close()
            }
            logger.debug("unsubscribed", metadata: ["subscription": "\(id)"])
        }
    }

    /// Sends what the state decided (``HubState/outbox``), still under the lock so that every subscriber gets its
    /// deliveries in the order they were decided: to an in-process mailbox at once (one that is full ends the
    /// subscriber as slow), to sockets in one batch per event loop, written there.
    func carryOut(_ state: inout HubState) {
        while !state.outbox.isEmpty {
            let outbox = state.outbox
            state.outbox.removeAll(keepingCapacity: true)
            var byLoop: [ObjectIdentifier: (loop: any EventLoop, batch: [(SocketOutlet, Delivery)])] = [:]
            for (subscriber, delivery) in outbox {
                switch subscriber.outlet {
                case .mailbox(let mailbox):
                    switch mailbox.offer(delivery) {
                    case .accepted: break
                    case .full: state.end(subscriber, .slowConsumer, logger: logger)
                    case .closed: _ = state.remove(subscriber.id)
                    }
                case .socket(let outlet):
                    byLoop[ObjectIdentifier(outlet.eventLoop), default: (outlet.eventLoop, [])].batch.append((outlet, delivery))
                }
            }
            for (loop, batch) in byLoop.values { SocketOutlet.deliver(batch, on: loop) }
        }
    }

    /// How many subscribers are held at their socket (written by their connection's event loop, with no task of their
    /// own) and how many are read by a task from a mailbox.
    public var subscribersByHold: (atSocket: Int, readByTask: Int) {
        state.withLock { state in
            var atSocket = 0
            for subscriber in state.subscribers.values { if case .socket = subscriber.outlet { atSocket += 1 } }
            return (atSocket, state.subscribers.count - atSocket)
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
        // Events go in slices, so that subscribing never waits long on the lock, while a socket is written once per
        // slice: one `execute` per event loop, each subscriber's frames of the slice in one write.
        var start = events.startIndex
        while start < events.endIndex {
            let end = min(start + Self.publishSlice, events.endIndex)
            state.withLock { state in
                for event in events[start..<end] { state.publish(event, now: now, logger: logger) }
                carryOut(&state)
            }
            start = end
        }
    }

    /// How many events one hold of the lock publishes.
    static let publishSlice = 64

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
            var readThrough = subscriber.readThrough
            for event in events where event.sequence > readThrough {
                if let ended = history?.apply(event), !ended.isDisjoint(with: subscriber.branches) {
                    subscriber.markRead(through: readThrough)
                    state.end(subscriber, .revoked, logger: logger)
                    carryOut(&state)
                    return frames
                }
                if subscriber.isReset(by: event) {
                    subscriber.markRead(through: readThrough)
                    state.end(subscriber, .reset, logger: logger)
                    carryOut(&state)
                    return frames
                }
                subscriber.noteSnapshotSettling(event)
                var fanOut = EventFanOut(event)
                let mask = fanOut.mask(for: subscriber.channels)
                let memberships = history?.memberships(at: event.sequence) ?? Memberships()
                if let shared = fanOut.frame(for: subscriber.reader(holding: readThrough), mask: mask, memberships: memberships) {
                    let bytes = subscriber.frame(shared, sequence: event.sequence)
                    frames.append(.frame(bytes, sequence: event.sequence, committedAt: event.commitTime.timeIntervalSince1970))
                    readThrough = event.sequence
                }
            }
            if let last = events.last?.sequence, last > readThrough { readThrough = last }
            subscriber.markRead(through: readThrough)
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
            carryOut(&state)
            return expired.count
        }
    }

    /// Gives each subscriber a `.keepalive` delivery: one that was idle since the last round writes
    /// ``SSEFrame/keepalive``. Call it every 15 s or so; streams at sockets get it in one batch per event loop.
    public func sendKeepalives() {
        state.withLock { state in
            for subscriber in state.subscribers.values { state.outbox.append((subscriber, .keepalive)) }
            carryOut(&state)
        }
    }

    /// Ends every subscriber as `shutdown` and refuses new ones.
    public func shutdown() {
        state.withLock { state in
            state.isShutDown = true
            for subscriber in Array(state.subscribers.values) { state.end(subscriber, .shutdown, logger: logger) }
            carryOut(&state)
        }
    }
}
