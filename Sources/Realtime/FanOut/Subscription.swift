import Foundation

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
    /// The branches of its channels (a plan channel's branch, where known): losing one of them ends it.
    let branches: Set<UUID>
    let options: SubscriptionOptions
    let expiresAt: Date?
    let mailbox: Mailbox
    /// The highest sequence offered to it; it is never offered that or an earlier one again.
    var lastSequence: Int64
    /// For a subscription that resumes from a snapshot's cursor: the transactions the snapshot already holds.
    let snapshot: Cursor.Snapshot?
    /// While one event fans out: which of its deliveries reach this subscriber, one bit per delivery.
    var deliveryMask: UInt8 = 0

    init(
        id: SubscriptionID,
        principal: Principal,
        channels: Set<Channel>,
        branches: Set<UUID>,
        options: SubscriptionOptions,
        expiresAt: Date?,
        mailbox: Mailbox,
        lastSequence: Int64,
        snapshot: Cursor.Snapshot? = nil
    ) {
        self.snapshot = snapshot
        self.id = id
        self.principal = principal
        self.channels = channels
        self.branches = branches
        self.options = options
        self.expiresAt = expiresAt
        self.mailbox = mailbox
        self.lastSequence = lastSequence
    }

    func isExpired(at now: Date) -> Bool { expiresAt.map { $0 <= now } ?? false }
}
