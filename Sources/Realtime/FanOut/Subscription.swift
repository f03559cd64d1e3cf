import Foundation
import NIOCore

/// Identifies one subscription of a hub.
public struct SubscriptionID: Hashable, Sendable, CustomStringConvertible {
    public let rawValue: UInt64

    public init(rawValue: UInt64) { self.rawValue = rawValue }

    public var description: String { "subscription-\(rawValue)" }
}

/// A registered subscription: read ``deliveries`` and write each frame to the response.
public struct Subscription: Sendable {
    public let id: SubscriptionID
    public let channels: Set<Channel>
    /// The frames to write, in sequence order, ending with `.end(reason:)` when the hub ends the subscription.
    public let deliveries: DeliveryStream
}

/// A subscription as the hub keeps it. Touched only under the hub's lock.
final class Subscriber {
    let id: SubscriptionID
    let principal: Principal
    let channels: Set<Channel>
    /// The branches of its channels (a plan channel's branch, where known; updated when a plan moves): losing one of
    /// them ends it.
    var branches: Set<UUID>
    let options: SubscriptionOptions
    /// The memberships the database showed when it was admitted (less those the feed had removed), if the caller read
    /// them: they let it hear presence and broadcasts, which are of the present, before a lagging feed brings the grant.
    let admittedMemberships: Memberships?
    let expiresAt: Date?
    /// Where its deliveries go.
    let outlet: Outlet
    /// For a stream at a socket: the highest sequence its catch-up wrote.
    private var caughtUpThrough: Int64
    /// The highest sequence offered to it; it is never offered that or an earlier one again.
    var lastSequence: Int64
    /// For a subscription that resumes from a snapshot's cursor: the transactions the snapshot already holds.
    let snapshot: Cursor.Snapshot?
    /// The sequence of the snapshot's cursor.
    let snapshotSequence: Int64
    /// The earliest event after the snapshot's cursor known to settle the snapshot (``Cursor/Snapshot/isSettled(by:)``).
    var snapshotSettledAt: Int64?
    /// While one event fans out: which of its deliveries reach this subscriber, one bit per delivery.
    var deliveryMask: EventFanOut.DeliveryMask = 0

    init(
        id: SubscriptionID,
        principal: Principal,
        channels: Set<Channel>,
        branches: Set<UUID>,
        options: SubscriptionOptions,
        admittedMemberships: Memberships? = nil,
        expiresAt: Date?,
        outlet: Outlet,
        lastSequence: Int64,
        snapshot: Cursor.Snapshot? = nil
    ) {
        self.admittedMemberships = admittedMemberships
        self.snapshot = snapshot
        self.snapshotSequence = lastSequence
        self.id = id
        self.principal = principal
        self.channels = channels
        self.branches = branches
        self.options = options
        self.expiresAt = expiresAt
        self.outlet = outlet
        self.lastSequence = lastSequence
        self.caughtUpThrough = lastSequence
    }

    /// The highest sequence its reader has (from a catch-up, or live); catch-ups skip up to it.
    var readThrough: Int64 {
        switch outlet {
        case .mailbox(let mailbox): mailbox.readThrough
        case .socket: caughtUpThrough
        }
    }

    /// Records that its reader wrote frames up to `sequence` from a catch-up.
    func markRead(through sequence: Int64) {
        switch outlet {
        case .mailbox(let mailbox): mailbox.markRead(through: sequence)
        case .socket: caughtUpThrough = max(caughtUpThrough, sequence)
        }
    }

    /// It as a reader of events (``EventFanOut/view(for:mask:memberships:)``) that holds every event up to `sequence`,
    /// and those its snapshot saw.
    func reader(holding sequence: Int64) -> EventFanOut.Reader {
        EventFanOut.Reader(principal: principal, options: options, holds: Cursor(sequence: sequence, snapshot: snapshot))
    }

    func isExpired(at now: Date) -> Bool { expiresAt.map { $0 <= now } ?? false }

    /// Whether a TRUNCATE event empties a table this subscription streams (a table it asked for, on one of its channels),
    /// or tells that the feed lost changes.
    func isReset(by event: ChangeEvent) -> Bool { event.resets(channels, options) }

    /// Notes an event the hub has seen (delivered to this subscriber or not): one that settles the snapshot ends the
    /// snapshot's part in the ids of the frames from it on.
    func noteSnapshotSettling(_ event: ChangeEvent) {
        guard let snapshot, event.sequence > snapshotSequence, snapshot.isSettled(by: event.xid) else { return }
        snapshotSettledAt = min(snapshotSettledAt ?? .max, event.sequence)
    }

    /// Whether the snapshot is settled by an event at or before `sequence` (or there is none).
    func snapshotIsSettled(at sequence: Int64) -> Bool {
        guard snapshot != nil else { return true }
        return snapshotSettledAt.map { $0 <= sequence } ?? false
    }

    /// The frame to send this subscriber for the event at `sequence`, given the frame all its peers share: until the
    /// snapshot is settled its id is the full cursor, snapshot included, so that a client reconnecting with that
    /// `Last-Event-ID` still skips the transactions the snapshot held (a plain sequence number would lose them).
    func frame(_ shared: ByteBuffer, sequence: Int64) -> ByteBuffer {
        guard !snapshotIsSettled(at: sequence) else { return shared }
        return SSEFrame.replacingID(of: shared, with: Cursor(sequence: sequence, snapshot: snapshot).description)
    }
}
