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
        let channel = Channel.presence(plan: plan)
        var data = #"{"type":"presence","event":"sync","channel":""# + channel.description + #"","presences":["#
        data += entries.map { $0.json() }.joined(separator: ",")
        data += "]}"
        return event(presenceEventName, data: data)
    }

    /// A join, update or leave: `{"type":"presence","event":"join","channel":…,"user_id":…,"state":{…},"online_since":…,"last_seen":…}`.
    static func presence(_ change: PresenceChange) -> ByteBuffer {
        let entry = change.entry
        let channel = Channel.presence(plan: entry.planID)
        var data = #"{"type":"presence","event":""# + change.name + #"","channel":""# + channel.description + "\","
        data += entry.json().dropFirst()
        return event(presenceEventName, data: data)
    }

    /// A broadcast: `{"type":"broadcast","channel":"plan:<id>","event":"<name>","user_id":…,"payload":{…}}`.
    static func broadcast(_ message: BroadcastMessage) -> ByteBuffer {
        var data = #"{"type":"broadcast","channel":""# + Channel.plan(message.planID).description + #"","event":"#
        data += JSONText.quote(message.event) + #","user_id":""# + message.userID.uuidString.lowercased() + #"","payload":"#
        data += message.payloadJSON + "}"
        return event(broadcastEventName, data: data)
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
