import Foundation
import HTTPTypes
import NIOCore
import Synchronization
import Testing

@testable import Realtime

@Suite struct SSEFrameTests {
    @Test func encodesAChangeExactly() {
        let event = Fixture.event(
            42,
            "task",
            .update,
            branch: Fixture.branchA,
            plan: Fixture.planA,
            record: #"{"id":1,"title":"a\nb"}"#,
            oldRecord: #"{"title":"x"}"#
        )
        let text = String(buffer: SSEFrame.change(event, channels: [.plan(Fixture.planA), .branch(Fixture.branchA)]))
        let expected =
            "id: 42\nevent: postgres_changes\ndata: "
            + #"{"type":"postgres_changes","schema":"public","table":"task","event":"UPDATE","#
            + #""commit_timestamp":"2024-05-01T10:00:00.123456+00:00","#
            + #""channels":["plan:\#(Fixture.planA.lowercased)","branch:\#(Fixture.branchA.lowercased)"],"#
            + #""record":{"id":1,"title":"a\nb"},"old_record":{"title":"x"}}"# + "\n\n"
        #expect(text == expected)
    }

    @Test func replacesRawLineBreaksInSplicedJSON() {
        let event = Fixture.event(1, "task", .insert, branch: Fixture.branchA, record: "{\"a\":\n1,\r\n\"b\":2}", oldRecord: "")
        let text = String(buffer: SSEFrame.change(event, channels: []))
        #expect(text.hasSuffix(#""channels":[],"record":{"a": 1,  "b":2},"old_record":{}}"# + "\n\n"))
        #expect(text.filter { $0 == "\n" }.count == 4)
    }

    @Test func coalescesFramesInOrderWithinTheLimit() {
        let frames = Self.numberedFrames()
        let whole = frames.map { String(buffer: $0) }.joined()
        let joined = SSEFrame.coalesced(frames, limit: 200)
        #expect(joined.map { String(buffer: $0) }.joined() == whole)
        #expect(joined.count > 1 && joined.count < frames.count)
        #expect(joined.allSatisfy { $0.readableBytes <= 200 })
        #expect(SSEFrame.coalesced(frames).count == 1)
        // A frame larger than the limit goes out whole, on its own.
        var large = ByteBufferAllocator().buffer(capacity: 0)
        large.writeString(String(repeating: "y", count: 500))
        let withLarge = SSEFrame.coalesced([frames[0], large, frames[1]], limit: 200)
        #expect(withLarge.map(\.readableBytes) == [frames[0].readableBytes, 500, frames[1].readableBytes])
        #expect(SSEFrame.coalesced([frames[0]]) == [frames[0]])
        // The shared frames themselves are untouched.
        #expect(frames.map { String(buffer: $0) }.joined() == whole)
    }

    /// Ten frames of growing size, `id: 1` to `id: 10`.
    static func numberedFrames() -> [ByteBuffer] {
        (1...10).map { index in
            var buffer = ByteBufferAllocator().buffer(capacity: 0)
            buffer.writeString("id: \(index)\ndata: " + String(repeating: "x", count: index * 10) + "\n\n")
            return buffer
        }
    }

    @Test func framesHTTPChunksThatDecodeToTheFramesInOrder() throws {
        let frames = Self.numberedFrames()
        let whole = frames.map { String(buffer: $0) }.joined()
        let chunks = SSEFrame.chunked(frames, limit: 200)
        #expect(chunks.count > 1 && chunks.count < frames.count)
        // Each buffer is exactly one chunk: its size in hex, CRLF, that many bytes, CRLF.
        var decoded = ""
        for chunk in chunks {
            let text = String(buffer: chunk)
            let header = try #require(text.split(separator: "\r\n", maxSplits: 1).first)
            let size = try #require(Int(header, radix: 16))
            #expect(size > 0 && size <= 200, "chunk header \(header)")
            #expect(chunk.readableBytes == header.utf8.count + 2 + size + 2)
            let body = text.utf8.dropFirst(header.utf8.count + 2)
            #expect(String(decoding: body.suffix(2), as: UTF8.self) == "\r\n")
            decoded += String(decoding: body.dropLast(2), as: UTF8.self)
        }
        #expect(decoded == whole)
        // The size is the body's in hex, and a frame larger than the limit is a chunk of its own.
        var large = ByteBufferAllocator().buffer(capacity: 0)
        large.writeString(String(repeating: "y", count: 500))
        let withLarge = SSEFrame.chunked([frames[0], large, frames[1]], limit: 200).map { String(buffer: $0) }
        #expect(withLarge.count == 3)
        #expect(withLarge[1] == "1f4\r\n" + String(repeating: "y", count: 500) + "\r\n")
        // An empty frame would end the response as a zero-size chunk: it is left out.
        let empty = ByteBufferAllocator().buffer(capacity: 0)
        #expect(SSEFrame.chunked([empty]).isEmpty)
        #expect(
            SSEFrame.chunked([empty, frames[0]]).map { String(buffer: $0) } == [
                "\(String(frames[0].readableBytes, radix: 16))\r\n\(String(buffer: frames[0]))\r\n"
            ])
        // The shared frames themselves are untouched.
        #expect(frames.map { String(buffer: $0) }.joined() == whole)
    }

    @Test func encodesCommentsRetryAndControlFrames() {
        #expect(String(buffer: SSEFrame.keepalive) == ": keepalive\n\n")
        #expect(String(buffer: SSEFrame.comment("a\nb")) == ": a b\n\n")
        #expect(String(buffer: SSEFrame.retry(milliseconds: 3000)) == "retry: 3000\n\n")
        #expect(
            String(buffer: SSEFrame.control(.revoked, reason: "gone \"now\"\n"))
                == "event: revoked\ndata: {\"type\":\"revoked\",\"reason\":\"gone \\\"now\\\"\\n\"}\n\n")
        #expect(String(buffer: SSEFrame.end(.tokenExpired)).hasPrefix("event: token_expired\ndata: {\"type\":\"token_expired\",\"reason\":\""))
        #expect(String(buffer: SSEFrame.end(.slowConsumer)).hasPrefix("event: error\ndata: {\"type\":\"error\",\"reason\":\"slow_consumer"))
        #expect(String(buffer: SSEFrame.control(.reset, reason: "r")) == "event: reset\ndata: {\"type\":\"reset\",\"reason\":\"r\"}\n\n")
    }

    /// Presence and broadcast frames are encoded from types, not cut and joined text: every field once, in one object.
    @Test func encodesPresenceAndBroadcastFramesAsOneObjectEach() throws {
        let (plan, user) = (UUID(), UUID())
        let entry = PresenceEntry(
            planID: plan, userID: user, state: PresenceState(slot: "a/\"b\"", action: .editing), onlineSince: Date(timeIntervalSince1970: 0),
            lastSeen: Date(timeIntervalSince1970: 1), node: "n1")
        func data(_ frame: ByteBuffer) throws -> [String: Any] {
            let text = String(buffer: frame)
            let line = try #require(text.split(separator: "\n").first { $0.hasPrefix("data: ") })
            return try #require(try JSONSerialization.jsonObject(with: Data(line.dropFirst(6).utf8)) as? [String: Any])
        }
        let join = try data(SSEFrame.presence(.join(entry)))
        #expect(Set(join.keys) == ["type", "event", "channel", "user_id", "state", "online_since", "last_seen"])
        #expect(join["event"] as? String == "join" && join["channel"] as? String == "presence:plan:\(plan.lowercased)")
        #expect(join["state"] as? [String: String] == ["action": "editing", "slot": "a/\"b\""])
        #expect(join["online_since"] as? String == "1970-01-01T00:00:00.000Z" && join["user_id"] as? String == user.lowercased)
        let sync = try data(SSEFrame.presenceSync(plan: plan, entries: [entry]))
        #expect(sync["event"] as? String == "sync" && (sync["presences"] as? [[String: Any]])?.first?["node"] == nil)
        let message = try BroadcastMessage(
            planID: plan, userID: user, body: ["event": .string("cursor"), "payload": .object(["x": .integer(1), "y": .number(0.5)])])
        let broadcast = try data(SSEFrame.broadcast(message))
        #expect(broadcast["type"] as? String == "broadcast" && broadcast["channel"] as? String == "plan:\(plan.lowercased)")
        #expect(broadcast["payload"] as? [String: Double] == ["x": 1, "y": 0.5] && broadcast["user_id"] as? String == user.lowercased)
    }
}
