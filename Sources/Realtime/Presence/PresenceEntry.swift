import Foundation

/// One user present on one plan, as every node keeps it.
public struct PresenceEntry: Sendable, Hashable {
    public var planID: UUID
    public var userID: UUID
    public var state: PresenceState
    /// When the user joined (kept across updates and across nodes).
    public var onlineSince: Date
    /// The holder's time of the latest heartbeat.
    public var lastSeen: Date
    /// The node that received the latest heartbeat: the one that holds the entry.
    public var node: String
    /// When this node last heard of the entry, by its own monotonic clock: expiry counts from here, so that clocks of
    /// other machines do not matter.
    public var heardAt: ContinuousClock.Instant

    public init(
        planID: UUID,
        userID: UUID,
        state: PresenceState,
        onlineSince: Date,
        lastSeen: Date,
        node: String,
        heardAt: ContinuousClock.Instant = .now
    ) {
        self.planID = planID
        self.userID = userID
        self.state = state
        self.onlineSince = onlineSince
        self.lastSeen = lastSeen
        self.node = node
        self.heardAt = heardAt
    }

    /// The entry as the API shows it: `{"user_id":…,"state":{…},"online_since":…,"last_seen":…}`, plus `"node"` when
    /// asked.
    func view(includingNode: Bool = false) -> PresenceView {
        PresenceView(
            userID: userID.uuidString.lowercased(), state: state, onlineSince: onlineSince, lastSeen: lastSeen,
            node: includingNode ? node : nil)
    }
}

/// One presence entry in an API body or a presence frame. Its fields are encoded into the enclosing object, so that
/// a heartbeat's answer and a join frame carry them beside their own.
struct PresenceView: Encodable, Sendable {
    var userID: String
    var state: PresenceState
    var onlineSince: Date
    var lastSeen: Date
    var node: String?

    enum CodingKeys: String, CodingKey {
        case userID = "user_id"
        case state
        case onlineSince = "online_since"
        case lastSeen = "last_seen"
        case node
    }
}

/// What a heartbeat, a leave or an expiry changed, as the `event` of a presence frame.
public enum PresenceChange: Sendable, Hashable {
    case join(PresenceEntry)
    case update(PresenceEntry)
    case leave(PresenceEntry)

    public var entry: PresenceEntry {
        switch self {
        case .join(let entry), .update(let entry), .leave(let entry): entry
        }
    }

    public var name: String {
        switch self {
        case .join: "join"
        case .update: "update"
        case .leave: "leave"
        }
    }
}

/// Timestamps in responses and frames: ISO 8601 in UTC with milliseconds.
enum Timestamp {
    static func text(_ date: Date) -> String {
        date.formatted(Date.ISO8601FormatStyle(includingFractionalSeconds: true))
    }
}
