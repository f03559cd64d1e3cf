import NIOCore
import Testing

@testable import Realtime

/// The life of a stream held at its socket, without I/O: what it writes, holds, drops and when it ends.
@Suite struct SocketStreamStateTests {
    private func frame(_ sequence: Int64) -> Delivery {
        .frame(ByteBuffer(string: "id: \(sequence)\n\n"), sequence: sequence, committedAt: Double(sequence))
    }

    private func bytes(_ sequence: Int64) -> ByteBuffer { ByteBuffer(string: "id: \(sequence)\n\n") }

    @Test func liveDeliveriesDuringTheCatchUpAreHeldThenWrittenExceptWhatTheCatchUpWrote() {
        var state = SocketStreamState(readThrough: 10, limit: 100)
        #expect(state.deliver([frame(11), frame(12), frame(13)]) == .none, "nothing goes out before the catch-up")
        #expect(state.catchUp([bytes(11), bytes(12)]) == .write([bytes(11), bytes(12)], commitTimes: []))
        #expect(state.caughtUp(through: 12) == .write([bytes(13)], commitTimes: [13]), "11 and 12 came with the catch-up")
        #expect(state.phase == .live)
        #expect(state.deliver([frame(12), frame(14)]) == .write([bytes(14)], commitTimes: [14]), "a sequence is written once")
    }

    @Test func ephemeralFramesHaveNoSequenceAndAlwaysGoOut() {
        var state = SocketStreamState(readThrough: 0, limit: 100)
        _ = state.caughtUp(through: 5)
        let presence = ByteBuffer(string: "event: presence\n\n")
        #expect(state.deliver([.ephemeral(presence), frame(3)]) == .write([presence], commitTimes: []))
    }

    @Test func anEndDuringTheCatchUpComesAfterTheCatchUpFramesInHand() {
        var state = SocketStreamState(readThrough: 0, limit: 100)
        #expect(state.deliver([frame(1), .end(reason: .revoked)]) == .none)
        #expect(state.catchUp([bytes(1)]) == .end(.revoked, after: [bytes(1)], commitTimes: []))
        #expect(state.phase == .ended)
        #expect(state.caughtUp(through: 1) == .none)
        #expect(state.deliver([frame(2)]) == .none, "an ended stream writes nothing more")
    }

    @Test func anEndDuringTheCatchUpWithNoMoreCatchUpEndsWhenItWouldGoLive() {
        var state = SocketStreamState(readThrough: 0, limit: 100)
        _ = state.deliver([.end(reason: .shutdown)])
        #expect(state.caughtUp(through: 0) == .end(.shutdown, after: [], commitTimes: []))
    }

    @Test func liveFramesBeforeAnEndAreWrittenWithIt() {
        var state = SocketStreamState(readThrough: 0, limit: 100)
        _ = state.caughtUp(through: 0)
        #expect(state.deliver([frame(1), .end(reason: .tokenExpired), frame(2)]) == .end(.tokenExpired, after: [bytes(1)], commitTimes: [1]))
    }

    @Test func holdingMoreThanTheLimitDuringTheCatchUpEndsTheStreamAsSlow() {
        var state = SocketStreamState(readThrough: 0, limit: 3)
        #expect(state.deliver([frame(1), frame(2), frame(3)]) == .none)
        #expect(state.deliver([frame(4)]) == .none)
        #expect(state.catchUp([]) == .end(.slowConsumer, after: [], commitTimes: []))
    }

    @Test func writingPastTheLimitWhileUnwritableEndsTheStreamAsSlowAndWritableAgainForgivesIt() {
        var state = SocketStreamState(readThrough: 0, limit: 2)
        _ = state.caughtUp(through: 0)
        state.writabilityChanged(to: false)
        #expect(state.deliver([frame(1), frame(2)]) == .write([bytes(1), bytes(2)], commitTimes: [1, 2]))
        state.writabilityChanged(to: true)
        state.writabilityChanged(to: false)
        #expect(state.deliver([frame(3), frame(4)]) == .write([bytes(3), bytes(4)], commitTimes: [3, 4]), "the count restarts once writable")
        #expect(state.deliver([frame(5)]) == .end(.slowConsumer, after: [], commitTimes: []))
    }

    @Test func aKeepaliveGoesOnlyToAStreamIdleSinceTheLastRound() {
        var state = SocketStreamState(readThrough: 0, limit: 100)
        _ = state.caughtUp(through: 0)
        #expect(state.deliver([.keepalive]) == .write([SSEFrame.keepalive], commitTimes: []))
        _ = state.deliver([frame(1)])
        #expect(state.deliver([.keepalive]) == .none, "it wrote a frame since the last round")
        #expect(state.deliver([.keepalive]) == .write([SSEFrame.keepalive], commitTimes: []))
    }

    @Test func theClientLeavingEndsTheStreamOnceWithoutAnEndFrame() {
        var state = SocketStreamState(readThrough: 0, limit: 100)
        #expect(state.clientLeft() == .end(nil, after: [], commitTimes: []))
        #expect(state.clientLeft() == .none)
        #expect(state.deliver([.end(reason: .revoked)]) == .none)
    }
}
