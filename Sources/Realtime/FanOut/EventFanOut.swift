import Foundation
import NIOCore

/// The fan-out of one event: its deliveries, and what its subscribers share (decoded rows, encoded frames).
///
/// For one subscriber, the deliveries on its channels that it may read (the same rule as row-level security: the
/// service role reads everything, a user the branches they are a member of) are merged into one frame: an UPDATE when
/// the row is on one of those channels before and after the change, a DELETE when only before, an INSERT when only
/// after. Its `channels` name every one of those channels. Each distinct frame is encoded once and shared.
struct EventFanOut {
    /// One bit per delivery of an event (``deliveries``): which of them reach a subscriber, or which it may read.
    typealias DeliveryMask = UInt64

    let event: ChangeEvent
    let deliveries: [ChannelPlacement]
    private let resource: Resource
    private var newRow: LazyRow
    private var oldRow: LazyRow
    /// For a move-out DELETE: the row as it was before the change, decoded only if a filter needs it.
    private var rowBeforeMove: LazyRow?
    private var frames: [(operation: ChangeEvent.Operation, mask: DeliveryMask, bytes: ByteBuffer)] = []

    init(_ event: ChangeEvent) {
        self.event = event
        let deliveries = Channel.placements(of: event)
        precondition(deliveries.count <= DeliveryMask.bitWidth, "An event has at most \(DeliveryMask.bitWidth) deliveries.")
        self.deliveries = deliveries
        resource = Resource(rawValue: event.table) ?? .branch
        newRow = LazyRow(text: event.record)
        oldRow = LazyRow(text: event.oldRecord)
    }

    /// The deliveries on these channels, one bit each.
    func mask(for channels: Set<Channel>) -> DeliveryMask {
        var mask: DeliveryMask = 0
        for (index, delivery) in deliveries.enumerated() where channels.contains(delivery.channel) { mask |= 1 << index }
        return mask
    }

    /// Whether the principal may read the delivery's branch; a row without a branch only the service role reads.
    private func mayRead(_ delivery: ChannelPlacement, _ principal: Principal, _ memberships: Memberships) -> Bool {
        guard let branch = delivery.branchID else { return principal.isService }
        return Policy.decide(principal, memberships, .read, resource, inBranch: branch) == .allowed
    }

    /// Who reads the event, and what they already hold.
    struct Reader {
        let principal: Principal
        let options: SubscriptionOptions
        /// An event this covers (its sequence, or a snapshot that saw its transaction) is not shown again.
        let holds: Cursor
    }

    /// How `reader`, reached by the deliveries in `mask`, sees the event: the operation it is shown as and the
    /// deliveries it may read; nil when it already holds it, may not see it or does not want it. The one decision for
    /// live fan-out (through ``frame(for:mask:memberships:)``), catch-up and polls alike.
    mutating func view(for reader: Reader, mask: DeliveryMask, memberships: Memberships) -> (
        operation: ChangeEvent.Operation, readable: DeliveryMask
    )? {
        guard mask != 0, !reader.holds.covers(sequence: event.sequence, xid: event.xid) else { return nil }
        return decide(for: reader.principal, options: reader.options, mask: mask, memberships: memberships)
    }

    /// The frame (shared by every reader who sees the event the same way) for a reader reached by the deliveries in
    /// `mask`, or nil when ``view(for:mask:memberships:)`` shows it nothing.
    mutating func frame(for reader: Reader, mask: DeliveryMask, memberships: Memberships) -> ByteBuffer? {
        guard let (operation, readable) = view(for: reader, mask: mask, memberships: memberships) else { return nil }
        if let frame = frames.first(where: { $0.operation == operation && $0.mask == readable }) { return frame.bytes }
        let bytes = SSEFrame.change(event.placed(as: operation), channels: channels(readable))
        frames.append((operation, readable, bytes))
        return bytes
    }

    /// How a principal reached by the deliveries in `mask` sees the event, whatever it holds already: the operation it
    /// is delivered as and the deliveries it may read; nil when it may not or does not want to see it.
    mutating func decide(
        for principal: Principal,
        options: SubscriptionOptions,
        mask: DeliveryMask,
        memberships: Memberships
    ) -> (operation: ChangeEvent.Operation, readable: DeliveryMask)? {
        var readable: DeliveryMask = 0
        var before = false
        var after = false
        for (index, delivery) in deliveries.enumerated() where mask & (1 << index) != 0 {
            guard mayRead(delivery, principal, memberships) else { continue }
            readable |= 1 << index
            before = before || delivery.operation != .insert
            after = after || delivery.operation != .delete
        }
        guard readable != 0 else { return nil }
        let operation: ChangeEvent.Operation = before && after ? .update : before ? .delete : .insert
        let wanted: Bool
        switch (operation, event.operation) {
        case (.delete, .delete):
            wanted = options.matches(table: event.table, operation: operation, row: &oldRow)
        case (.delete, _):
            guard options.admits(table: event.table, operation: operation) else { return nil }
            guard options.hasFilters else { return (operation, readable) }
            var before = rowBeforeMove ?? LazyRow(text: event.rowBeforeChange)
            wanted = options.matches(table: event.table, operation: operation, row: &before)
            rowBeforeMove = before
        default:
            wanted = options.matches(table: event.table, operation: operation, row: &newRow)
        }
        return wanted ? (operation, readable) : nil
    }

    /// The channels of the deliveries in `mask`.
    func channels(_ mask: DeliveryMask) -> [Channel] {
        deliveries.indices.filter { mask & (1 << $0) != 0 }.map { deliveries[$0].channel }
    }
}
