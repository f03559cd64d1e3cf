import Testing

@testable import Realtime

/// The relay's leadership without I/O: asking for the lock, relaying, and the wait between attempts.
@Suite struct RelayLeadershipTests {
    static let start = ContinuousClock.now

    static func leadership() -> RelayLeadership { RelayLeadership(lockRetry: .seconds(1), maximumBackoff: .seconds(5)) }

    /// Leading since ``start``, after two failed attempts (the next wait would be 800 ms).
    static func relayingAfterTwoFailures() -> RelayLeadership {
        var leadership = leadership()
        _ = leadership.start()
        _ = leadership.attemptFailed(at: start)
        _ = leadership.attemptFailed(at: start)
        _ = leadership.lockAnswered(acquired: true)
        leadership.startedRelaying(at: start)
        return leadership
    }

    @Test func aFollowerAsksForTheLockAgainUntilItHoldsItThenRelays() {
        var leadership = Self.leadership()
        #expect(leadership.start() == .connectAndAskForLock)
        #expect(leadership.lockAnswered(acquired: false) == .askAgain(after: .seconds(1)))
        #expect(leadership.state == .waitingForLock)
        #expect(leadership.lockAnswered(acquired: false) == .askAgain(after: .seconds(1)))
        #expect(leadership.lockAnswered(acquired: true) == .relay)
        leadership.startedRelaying(at: Self.start)
        #expect(leadership.state == .leading(since: Self.start, wroteBatch: false))
        #expect(leadership.shutDown() == .stop)
    }

    @Test func failuresInARowDoubleTheWaitUpToTheMaximum() {
        var leadership = Self.leadership()
        _ = leadership.start()
        let waits = (0..<8).map { _ in leadership.attemptFailed(at: Self.start) }
        #expect(
            waits
                == [
                    .milliseconds(200), .milliseconds(400), .milliseconds(800), .milliseconds(1600), .milliseconds(3200), .seconds(5), .seconds(5),
                    .seconds(5),
                ].map { RelayLeadership.Action.startOver(after: $0) })
        #expect(leadership.backoffElapsed() == .connectAndAskForLock)
    }

    @Test func aRelayThatWasWorkingOrEndedCleanlyStartsFromTheShortestWait() {
        var leadership = Self.relayingAfterTwoFailures()
        leadership.wroteBatch()
        #expect(leadership.attemptFailed(at: Self.start) == .startOver(after: .milliseconds(200)), "it wrote a batch before it failed")
        #expect(leadership.attemptFailed(at: Self.start) == .startOver(after: .milliseconds(400)))
        #expect(leadership.attemptEnded() == .connectAndAskForLock)
        #expect(leadership.attemptFailed(at: Self.start) == .startOver(after: .milliseconds(200)))
    }

    @Test func aRelayThatRelayedLongerThanTheLongestWaitStartsFromTheShortestWait() {
        var leadership = Self.relayingAfterTwoFailures()
        #expect(leadership.attemptFailed(at: Self.start + .seconds(3)) == .startOver(after: .milliseconds(800)), "3 s is not long")
        _ = leadership.lockAnswered(acquired: true)
        leadership.startedRelaying(at: Self.start)
        #expect(leadership.attemptFailed(at: Self.start + .seconds(6)) == .startOver(after: .milliseconds(200)))
    }

    @Test func waitingForTheLockIsNotWorking() {
        var leadership = Self.leadership()
        _ = leadership.start()
        _ = leadership.attemptFailed(at: Self.start)
        _ = leadership.lockAnswered(acquired: false)
        #expect(leadership.attemptFailed(at: Self.start + .seconds(60)) == .startOver(after: .milliseconds(400)))
    }
}
