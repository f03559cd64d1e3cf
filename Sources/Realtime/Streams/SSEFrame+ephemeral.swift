import Foundation
import NIOCore

/// Frames of ephemeral traffic: presence and broadcast. They carry no `id:`, so a browser's `Last-Event-ID` stays the
/// cursor of the last change, and they are never replayed.
extension SSEFrame {
    /// The SSE event name of presence frames.
    public static let presenceEventName = "presence"
    /// The SSE event name of broadcast frames.
    public static let broadcastEventName = "broadcast"

    /// The first presence frame of a stream: everyone present on the plan.
    ///
    /// `{"type":"presence","event":"sync","channel":"presence:plan:<id>","presences":[{user_id,state,online_since,last_seen}…]}`
    static func presenceSync(plan: UUID, entries: [PresenceEntry]) -> ByteBuffer {
        let sync = PresenceSyncFrame(channel: Channel.presence(plan: plan).description, presences: entries.map { $0.view() })
        return event(presenceEventName, data: JSONText.encode(sync))
    }

    /// A join, update or leave: `{"type":"presence","event":"join","channel":…,"user_id":…,"state":{…},"online_since":…,"last_seen":…}`.
    static func presence(_ change: PresenceChange) -> ByteBuffer {
        let frame = PresenceChangeFrame(
            event: change.name, channel: Channel.presence(plan: change.entry.planID).description, entry: change.entry.view())
        return event(presenceEventName, data: JSONText.encode(frame))
    }

    /// A broadcast: `{"type":"broadcast","channel":"plan:<id>","event":"<name>","user_id":…,"payload":{…}}`.
    static func broadcast(_ message: BroadcastMessage) -> ByteBuffer {
        let frame = BroadcastFrame(
            channel: Channel.plan(message.planID).description, event: message.event, userID: message.userID.uuidString.lowercased(),
            payload: message.payload)
        return event(broadcastEventName, data: JSONText.encode(frame))
    }

    /// `event: <name>\ndata: <one line of JSON>\n\n`.
    private static func event(_ name: String, data: String) -> ByteBuffer {
        var buffer = ByteBufferAllocator().buffer(capacity: data.utf8.count + name.utf8.count + 16)
        buffer.writeString("event: \(name)\ndata: ")
        buffer.writeString(data)
        buffer.writeString("\n\n")
        return buffer
    }
}

/// `{"type":"presence","event":"sync","channel":…,"presences":[…]}`.
private struct PresenceSyncFrame: Encodable {
    var type = "presence"
    var event = "sync"
    var channel: String
    var presences: [PresenceView]
}

/// A join, update or leave: the entry's fields beside the frame's own.
private struct PresenceChangeFrame: Encodable {
    var event: String
    var channel: String
    var entry: PresenceView

    enum CodingKeys: String, CodingKey {
        case type, event, channel
    }

    func encode(to encoder: any Encoder) throws {
        try entry.encode(to: encoder)
        var container = encoder.container(keyedBy: CodingKeys.self)
        try container.encode("presence", forKey: .type)
        try container.encode(event, forKey: .event)
        try container.encode(channel, forKey: .channel)
    }
}

/// `{"type":"broadcast","channel":"plan:<id>","event":…,"user_id":…,"payload":{…}}`.
private struct BroadcastFrame: Encodable {
    var type = "broadcast"
    var channel: String
    var event: String
    var userID: String
    var payload: [String: JSONValue]

    enum CodingKeys: String, CodingKey {
        case type, channel, event
        case userID = "user_id"
        case payload
    }
}
