import Foundation
import Synchronization

/// What one attempt to lead achieved: whether it relayed for a while or wrote to the log before it failed.
final class LeadAttempt: Sendable {
    private struct State {
        var relayingSince: ContinuousClock.Instant?
        var wroteBatch = false
    }

    private let state = Mutex(State())

    func startedRelaying() { state.withLock { $0.relayingSince = .now } }
    func wroteBatch() { state.withLock { $0.wroteBatch = true } }

    /// Whether it wrote a batch, or relayed for longer than `duration`.
    func wasWorking(longerThan duration: Duration) -> Bool {
        state.withLock { state in
            state.wroteBatch || state.relayingSince.map { ContinuousClock.now - $0 > duration } ?? false
        }
    }
}
