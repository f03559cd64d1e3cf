import Testing

@testable import Realtime

/// The relay's wait between attempts to lead, without I/O.
@Suite struct RelayBackoffTests {
    @Test func failuresInARowDoubleTheWaitUpToTheMaximum() {
        var backoff = RelayBackoff(maximum: .seconds(5))
        let waits = (0..<8).map { _ in backoff.attemptFailed(wasWorking: false) }
        #expect(
            waits == [
                .milliseconds(200), .milliseconds(400), .milliseconds(800), .milliseconds(1600), .milliseconds(3200), .seconds(5), .seconds(5),
                .seconds(5),
            ])
    }

    @Test func aRelayThatWasWorkingOrEndedCleanlyStartsFromTheShortestWait() {
        var backoff = RelayBackoff(maximum: .seconds(5))
        _ = backoff.attemptFailed(wasWorking: false)
        _ = backoff.attemptFailed(wasWorking: false)
        #expect(backoff.attemptFailed(wasWorking: true) == .milliseconds(200), "it wrote a batch before it failed")
        #expect(backoff.attemptFailed(wasWorking: false) == .milliseconds(400))
        backoff.attemptEnded()
        #expect(backoff.attemptFailed(wasWorking: false) == .milliseconds(200))
    }
}
