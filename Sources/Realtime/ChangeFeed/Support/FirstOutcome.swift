import Foundation
import Synchronization

/// The first of several racing outcomes, handed once to one waiter.
final class FirstOutcome<Value: Sendable>: Sendable {
    private struct State {
        var outcome: Result<Value, any Error>?
        var waiter: CheckedContinuation<Value, any Error>?
    }

    private let state = Mutex(State())

    /// Resumes `waiter` with the first outcome, now or when it is offered.
    func wait(_ waiter: CheckedContinuation<Value, any Error>) {
        let ready: Result<Value, any Error>? = state.withLock { state in
            if let outcome = state.outcome { return outcome }
            state.waiter = waiter
            return nil
        }
        if let ready { waiter.resume(with: ready) }
    }

    /// Offers an outcome; ignored if one was offered before.
    func offer(_ outcome: Result<Value, any Error>) {
        let waiter: CheckedContinuation<Value, any Error>? = state.withLock { state in
            guard state.outcome == nil else { return nil }
            state.outcome = outcome
            defer { state.waiter = nil }
            return state.waiter
        }
        waiter?.resume(with: outcome)
    }
}
