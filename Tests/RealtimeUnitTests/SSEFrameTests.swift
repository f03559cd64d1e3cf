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
        let frames = (1...10).map { index in
            var buffer = ByteBufferAllocator().buffer(capacity: 0)
            buffer.writeString("id: \(index)\ndata: " + String(repeating: "x", count: index * 10) + "\n\n")
            return buffer
        }
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
}
