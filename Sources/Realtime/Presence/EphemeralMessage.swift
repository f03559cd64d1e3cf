import Foundation

/// What nodes tell each other about presence and broadcasts, as the payload of a PostgreSQL NOTIFY.
///
/// Ephemeral traffic never touches a table or the WAL: NOTIFY payloads live only in PostgreSQL's notification queue.
public struct EphemeralMessage: Sendable, Hashable, Codable {
    public enum Kind: String, Sendable, Hashable, Codable {
        /// A user is present (again) on a plan, held by the sending node.
        case heartbeat
        /// A user left a plan.
        case leave
        /// A broadcast to a plan's streams.
        case broadcast
        /// A node (re)connected: the others announce the entries they hold, so that it learns who is present.
        case hello
    }

    public var kind: Kind
    /// The sending node.
    public var node: String
    public var plan: UUID?
    public var user: UUID?
    public var state: PresenceState?
    public var onlineSince: Date?
    public var lastSeen: Date?
    public var event: String?
    /// A broadcast's payload as JSON text (text, so that nodes of other versions read it alike).
    public var payload: String?

    enum CodingKeys: String, CodingKey {
        case kind, node, plan, user, state, event, payload
        case onlineSince = "online_since"
        case lastSeen = "last_seen"
    }

    public static func hello(from node: String) -> EphemeralMessage { EphemeralMessage(kind: .hello, node: node) }

    public static func heartbeat(_ entry: PresenceEntry) -> EphemeralMessage {
        EphemeralMessage(
            kind: .heartbeat,
            node: entry.node,
            plan: entry.planID,
            user: entry.userID,
            state: entry.state,
            onlineSince: entry.onlineSince,
            lastSeen: entry.lastSeen
        )
    }

    public static func leave(plan: UUID, user: UUID, from node: String) -> EphemeralMessage {
        EphemeralMessage(kind: .leave, node: node, plan: plan, user: user)
    }

    public static func broadcast(_ message: BroadcastMessage, from node: String) -> EphemeralMessage {
        EphemeralMessage(
            kind: .broadcast, node: node, plan: message.planID, user: message.userID, event: message.event,
            payload: JSONValue.text(of: message.payload))
    }

    /// The presence entry of a heartbeat, heard now.
    func entry(heardAt: ContinuousClock.Instant = .now) -> PresenceEntry? {
        guard kind == .heartbeat, let plan, let user, let state, let onlineSince, let lastSeen else { return nil }
        return PresenceEntry(planID: plan, userID: user, state: state, onlineSince: onlineSince, lastSeen: lastSeen, node: node, heardAt: heardAt)
    }

    /// The broadcast it carries; nil when it carries none, or a payload that is not a JSON object.
    var broadcastMessage: BroadcastMessage? {
        guard kind == .broadcast, let plan, let user, let event, let payload,
            let object = try? JSONDecoder().decode([String: JSONValue].self, from: Data(payload.utf8))
        else { return nil }
        return BroadcastMessage(planID: plan, userID: user, event: event, payload: object)
    }

    static let encoder: JSONEncoder = {
        let encoder = JSONEncoder()
        encoder.dateEncodingStrategy = .millisecondsSince1970
        encoder.outputFormatting = [.withoutEscapingSlashes]
        return encoder
    }()

    static let decoder: JSONDecoder = {
        let decoder = JSONDecoder()
        decoder.dateDecodingStrategy = .millisecondsSince1970
        return decoder
    }()

    /// The NOTIFY payload.
    func encoded() throws -> String { String(decoding: try Self.encoder.encode(self), as: UTF8.self) }

    /// Reads a NOTIFY payload; nil for anything else.
    static func decode(_ text: String) -> EphemeralMessage? { try? decoder.decode(EphemeralMessage.self, from: Data(text.utf8)) }
}
