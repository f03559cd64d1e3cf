import Foundation

/// A stream a browser subscribes to: every change of one branch, every change of one plan and its rows (and the
/// plan's broadcasts), or who is present on a plan.
///
/// Written `branch:<uuid>`, `plan:<uuid>` or `presence:plan:<uuid>` in URLs and in the `channels` of an event.
public enum Channel: Hashable, Sendable, CustomStringConvertible {
    case branch(UUID)
    case plan(UUID)
    /// Presence on a plan: who is looking at or editing which slot. Ephemeral, never stored.
    case presence(plan: UUID)

    /// The most channels one subscription may name.
    public static let maxPerSubscription = 100

    /// Parses `branch:<uuid>`, `plan:<uuid>` or `presence:plan:<uuid>`.
    ///
    /// - Throws: `APIError` 400 `invalid_parameter` naming the bad text.
    public init(parsing text: String) throws(APIError) {
        if text.hasPrefix("branch:"), let id = UUID(uuidString: String(text.dropFirst("branch:".count))) {
            self = .branch(id)
        } else if text.hasPrefix("plan:"), let id = UUID(uuidString: String(text.dropFirst("plan:".count))) {
            self = .plan(id)
        } else if text.hasPrefix("presence:plan:"), let id = UUID(uuidString: String(text.dropFirst("presence:plan:".count))) {
            self = .presence(plan: id)
        } else {
            throw .invalidParameter("'\(text)' is not a channel: use branch:<uuid>, plan:<uuid> or presence:plan:<uuid>.")
        }
    }

    /// Parses channels given as repeated and/or comma-separated values, e.g. `["branch:…,plan:…"]`.
    ///
    /// - Throws: `APIError` 400 `invalid_parameter` for a bad channel, none at all, or more than ``maxPerSubscription``.
    public static func parseList(_ values: [String]) throws(APIError) -> Set<Channel> {
        var channels = Set<Channel>()
        for value in values {
            for item in value.split(separator: ",", omittingEmptySubsequences: true) {
                channels.insert(try Channel(parsing: item.trimmingCharacters(in: .whitespaces)))
            }
        }
        guard !channels.isEmpty else { throw .invalidParameter("Name at least one channel, e.g. channel=branch:<uuid>.") }
        guard channels.count <= maxPerSubscription else {
            throw .invalidParameter("A subscription takes at most \(maxPerSubscription) channels.")
        }
        return channels
    }

    /// `branch:<uuid>`, `plan:<uuid>` or `presence:plan:<uuid>`, with the uuid in lower case as PostgreSQL prints it.
    public var description: String {
        switch self {
        case .branch(let id): "branch:\(id.uuidString.lowercased())"
        case .plan(let id): "plan:\(id.uuidString.lowercased())"
        case .presence(let plan): "presence:plan:\(plan.uuidString.lowercased())"
        }
    }

    /// The plan a plan or presence channel is about.
    var planID: UUID? {
        switch self {
        case .branch: nil
        case .plan(let id), .presence(plan: let id): id
        }
    }

    /// Tables whose rows also stream on the channel of their plan (from the registry); the others only on their branch's.
    static let planScopedTables = TableSchema.planScopedTables

    /// The channels a row of `table` at `place` belongs to: its plan's first (for a plan-scoped table), then its
    /// branch's.
    static func channels(of table: String, at place: RowPlace) -> [Channel] {
        var channels: [Channel] = []
        if let plan = place.plan, planScopedTables.contains(table) { channels.append(.plan(plan)) }
        if let branch = place.branch { channels.append(.branch(branch)) }
        return channels
    }

    /// On which channels an event is delivered, and as what.
    ///
    /// An INSERT or DELETE goes to the channels of the row's place (for a DELETE, where it was). An UPDATE that moved the
    /// row (``ChangeEvent/previousPlace`` set) goes as a DELETE to the channels it left, as an INSERT to the channels it
    /// entered, and as the UPDATE to the channels it stayed in. Plan channels come before branch channels; on each side
    /// the new place before the old one.
    public static func placements(of event: ChangeEvent) -> [ChannelPlacement] {
        let current = channels(of: event.table, at: event.place)
        guard event.operation == .update, let previousPlace = event.previousPlace else {
            return current.map { ChannelPlacement(channel: $0, operation: event.operation, branchID: event.place.branch) }
        }
        let previous = channels(of: event.table, at: previousPlace)
        var placements: [ChannelPlacement] = []
        placements.reserveCapacity(current.count + previous.count)
        for channel in current {
            let stayed = previous.contains(channel)
            placements.append(ChannelPlacement(channel: channel, operation: stayed ? .update : .insert, branchID: event.place.branch))
        }
        for channel in previous where !current.contains(channel) {
            placements.append(ChannelPlacement(channel: channel, operation: .delete, branchID: previousPlace.branch))
        }
        return placements.filter(\.channel.isPlan) + placements.filter { !$0.channel.isPlan }
    }

    /// Whether rows of the table stream on this channel: a branch's carries every table, a plan's the plan-scoped ones,
    /// a presence channel none (``ChangeEvent/everyTable`` stands for all of them).
    func carries(table: String) -> Bool {
        switch self {
        case .branch: true
        case .plan: table == ChangeEvent.everyTable || Self.planScopedTables.contains(table)
        case .presence: false
        }
    }

    var isPlan: Bool {
        if case .plan = self { return true }
        return false
    }
}

/// One channel an event is delivered on, with the operation it shows there.
public struct ChannelPlacement: Sendable, Hashable {
    public var channel: Channel
    /// The event's own operation, or for a move the DELETE (channel left) or INSERT (channel entered) it becomes.
    public var operation: ChangeEvent.Operation
    /// The branch whose read access this delivery needs: where the row was for a DELETE, where it is otherwise.
    public var branchID: UUID?

    public init(channel: Channel, operation: ChangeEvent.Operation, branchID: UUID?) {
        self.channel = channel
        self.operation = operation
        self.branchID = branchID
    }
}
