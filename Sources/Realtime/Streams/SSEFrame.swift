import Foundation
import NIOCore

/// A control event that tells the browser why the stream ends or what to do next.
public enum ControlEvent: String, Sendable, CaseIterable {
    /// The subscriber lost access to a branch of its channels.
    case revoked
    /// The token expired; reconnect with a fresh one.
    case tokenExpired = "token_expired"
    /// The cursor is too old to resume from: reload, then subscribe afresh.
    case reset
    /// Anything else, e.g. the server is too far ahead of a slow reader or is shutting down.
    case error
}

/// Encodes Server-Sent Events frames.
///
/// A change is `id: <seq>\nevent: postgres_changes\ndata: <json>\n\n`, with the JSON
/// `{"type":"postgres_changes","schema":"public","table":…,"event":…,"commit_timestamp":…,"channels":[…],"record":{…},"old_record":{…}}`.
/// `record` and `old_record` are spliced in as the JSON text PostgreSQL produced, not re-encoded. A `data:` line must not
/// hold a raw line break, which would end it early: such text has none when it is valid JSON from PostgreSQL, and any CR
/// or LF found is written as a space (valid JSON has them only as whitespace between tokens).
public enum SSEFrame {
    /// The SSE event name of a change.
    public static let changeEventName = "postgres_changes"

    /// `: keepalive\n\n`, to write while idle so that proxies keep the connection open.
    public static let keepalive = comment("keepalive")

    /// The frame of a change as delivered on `channels` (pass the event already rewritten with
    /// ``ChangeEvent/placed(as:)``).
    public static func change(_ event: ChangeEvent, channels: [Channel]) -> ByteBuffer {
        var buffer = ByteBufferAllocator().buffer(capacity: 256 + event.record.utf8.count + event.oldRecord.utf8.count + channels.count * 48)
        buffer.writeString("id: \(event.sequence)\nevent: \(changeEventName)\ndata: ")
        writeChangeJSON(event, channels: channels, id: nil, to: &buffer)
        buffer.writeString("\n\n")
        return buffer
    }

    /// Frames joined into as few buffers as possible, each at most `limit` bytes unless one frame alone is larger, so
    /// that a burst goes out as one chunk of the response and one write, not one per frame. A frame on its own is
    /// returned as is.
    static func coalesced(_ frames: [ByteBuffer], limit: Int = 64 * 1024) -> [ByteBuffer] {
        guard frames.count > 1 else { return frames }
        var joined: [ByteBuffer] = []
        forEachRun(of: frames, limit: limit) { run, size in
            guard run.count > 1, let first = run.first else {
                joined.append(contentsOf: run)
                return
            }
            var buffer = ByteBufferAllocator().buffer(capacity: size)
            buffer.writeImmutableBuffer(first)
            for frame in run.dropFirst() { buffer.writeImmutableBuffer(frame) }
            joined.append(buffer)
        }
        return joined
    }

    /// The frames as HTTP/1.1 chunks, ready to write below the response encoder: joined like ``coalesced(_:limit:)``,
    /// each buffer framed as one chunk, `<size in hex>\r\n<bytes>\r\n`. No chunk is empty, since an empty chunk would
    /// end the response. Every chunk is a buffer of its own (the frames are copied into it), so that a delivery is one
    /// write and one entry of the socket's `writev`, not three.
    static func chunked(_ frames: [ByteBuffer], limit: Int = 64 * 1024, allocator: ByteBufferAllocator = ByteBufferAllocator()) -> [ByteBuffer] {
        var chunks: [ByteBuffer] = []
        forEachRun(of: frames, limit: limit) { run, size in
            let header = String(size, radix: 16)
            var chunk = allocator.buffer(capacity: header.utf8.count + size + 4)
            chunk.writeString(header)
            chunk.writeStaticString("\r\n")
            for frame in run { chunk.writeImmutableBuffer(frame) }
            chunk.writeStaticString("\r\n")
            chunks.append(chunk)
        }
        return chunks
    }

    /// Calls `body` with consecutive runs of `frames` of at most `limit` bytes (a frame larger than that is a run of its
    /// own) and each run's size; a run is never empty of bytes (empty frames ride along with their neighbours, or are
    /// left out when nothing else is there).
    private static func forEachRun(of frames: [ByteBuffer], limit: Int, _ body: (ArraySlice<ByteBuffer>, Int) -> Void) {
        var start = 0
        var size = 0
        for (index, frame) in frames.enumerated() {
            if size > 0, size + frame.readableBytes > limit {
                body(frames[start..<index], size)
                (start, size) = (index, 0)
            }
            size += frame.readableBytes
        }
        if size > 0 { body(frames[start...], size) }
    }

    /// The same frame with another `id:` line (a frame made by ``change(_:channels:)`` starts with its id line).
    static func replacingID(of frame: ByteBuffer, with id: String) -> ByteBuffer {
        var rest = frame
        guard let newline = rest.readableBytesView.firstIndex(of: UInt8(ascii: "\n")) else { return frame }
        rest.moveReaderIndex(to: newline + 1)
        var buffer = ByteBufferAllocator().buffer(capacity: 5 + id.utf8.count + rest.readableBytes)
        buffer.writeString("id: \(id)\n")
        buffer.writeImmutableBuffer(rest)
        return buffer
    }

    /// The JSON object of a change, as in a frame's data; with `id` (its cursor) first when given, for polls.
    static func changeJSON(_ event: ChangeEvent, channels: [Channel], id: String?) -> String {
        var buffer = ByteBufferAllocator().buffer(capacity: 256 + event.record.utf8.count + event.oldRecord.utf8.count)
        writeChangeJSON(event, channels: channels, id: id, to: &buffer)
        return String(buffer: buffer)
    }

    private static func writeChangeJSON(_ event: ChangeEvent, channels: [Channel], id: String?, to buffer: inout ByteBuffer) {
        buffer.writeString("{")
        if let id {
            buffer.writeString(#""id":"#)
            buffer.writeString(JSONText.quote(id))
            buffer.writeString(",")
        }
        buffer.writeString(#""type":"postgres_changes","schema":"public","table":"#)
        buffer.writeString(JSONText.quote(event.table))
        buffer.writeString(#","event":""#)
        buffer.writeString(event.operation.rawValue)
        buffer.writeString(#"","commit_timestamp":"#)
        buffer.writeString(JSONText.quote(event.commitTimestamp))
        buffer.writeString(#","channels":["#)
        for (index, channel) in channels.enumerated() {
            if index > 0 { buffer.writeString(",") }
            buffer.writeString("\"\(channel)\"")
        }
        buffer.writeString(#"],"record":"#)
        writeJSON(event.record, to: &buffer)
        buffer.writeString(#","old_record":"#)
        writeJSON(event.oldRecord, to: &buffer)
        buffer.writeString("}")
    }

    /// A comment line, ignored by browsers: `: <text>\n\n`.
    public static func comment(_ text: String) -> ByteBuffer {
        var buffer = ByteBuffer(string: ": ")
        writeLine(text, to: &buffer)
        buffer.writeString("\n\n")
        return buffer
    }

    /// How long the browser waits before reconnecting: `retry: <ms>\n\n`.
    public static func retry(milliseconds: Int) -> ByteBuffer {
        ByteBuffer(string: "retry: \(max(0, milliseconds))\n\n")
    }

    /// A control frame: `event: <kind>\ndata: {"type":"<kind>","reason":"<reason>"}\n\n`.
    public static func control(_ kind: ControlEvent, reason: String) -> ByteBuffer {
        var buffer = ByteBuffer(string: "event: \(kind.rawValue)\ndata: {\"type\":\"\(kind.rawValue)\",\"reason\":")
        buffer.writeString(JSONText.quote(reason))
        buffer.writeString("}\n\n")
        return buffer
    }

    /// The control frame to write when the hub ends a subscription.
    public static func end(_ reason: EndReason) -> ByteBuffer {
        switch reason {
        case .revoked:
            control(.revoked, reason: "Access to a branch of this subscription was removed.")
        case .tokenExpired:
            control(.tokenExpired, reason: "The token has expired; reconnect with a fresh token to resume.")
        case .slowConsumer:
            control(.error, reason: "slow_consumer: events arrived faster than they were read; reconnect with Last-Event-ID to resume.")
        case .shutdown:
            control(.error, reason: "shutdown: the server is restarting; reconnect with Last-Event-ID to resume.")
        case .reset:
            control(
                .reset,
                reason:
                    "What this subscription holds is stale (a table was emptied, or the change feed lost changes): load a snapshot, then subscribe from its cursor."
            )
        }
    }

    /// Writes `json`, or `{}` if empty, with any raw line break turned into a space.
    private static func writeJSON(_ json: String, to buffer: inout ByteBuffer) {
        if json.isEmpty {
            buffer.writeString("{}")
        } else {
            writeLine(json, to: &buffer)
        }
    }

    /// Writes `text` with every CR and LF turned into a space, so that it stays on one line.
    private static func writeLine(_ text: String, to buffer: inout ByteBuffer) {
        let breaks = text.utf8.contains { $0 == UInt8(ascii: "\n") || $0 == UInt8(ascii: "\r") }
        if !breaks {
            buffer.writeString(text)
            return
        }
        buffer.writeBytes(text.utf8.map { $0 == UInt8(ascii: "\n") || $0 == UInt8(ascii: "\r") ? UInt8(ascii: " ") : $0 })
    }
}
