/// How long a relay waits before it tries to lead again, as a state machine without I/O (`RelayBackoffTests`).
///
/// Failures in a row back off, doubling from ``initial`` up to ``maximum``; a relay that was working when it failed
/// (it wrote a batch, or relayed for longer than the longest wait) starts again from ``initial``, and so does one that
/// ended without a failure.
struct RelayBackoff {
    static let initial: Duration = .milliseconds(200)
    let maximum: Duration
    /// The wait before the next attempt, should the current one fail.
    private(set) var next: Duration = Self.initial

    init(maximum: Duration) {
        self.maximum = maximum
    }

    /// The attempt ended without a failure: the next failure waits the shortest time again.
    mutating func attemptEnded() {
        next = Self.initial
    }

    /// The attempt failed; returns how long to wait before the next one.
    mutating func attemptFailed(wasWorking: Bool) -> Duration {
        if wasWorking { next = Self.initial }
        let delay = next
        next = min(next * 2, maximum)
        return delay
    }
}
