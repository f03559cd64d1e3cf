import Foundation
import Synchronization

/// Transactions decoded but not yet written, handed from the decoding task to the writing task in whole batches.
final class PendingTransactions: Sendable {
    private struct State {
        var queue: [WALTransaction] = []
        var waiter: CheckedContinuation<[WALTransaction]?, Never>?
        var finished = false
    }

    private let state = Mutex(State())

    func append(_ transaction: WALTransaction) {
        let resume: (CheckedContinuation<[WALTransaction]?, Never>, [WALTransaction])? = state.withLock { state in
            if let waiter = state.waiter {
                state.waiter = nil
                return (waiter, [transaction])
            }
            state.queue.append(transaction)
            return nil
        }
        if let (waiter, batch) = resume { waiter.resume(returning: batch) }
    }

    func finish() {
        let waiter = state.withLock { state in
            state.finished = true
            defer { state.waiter = nil }
            return state.waiter
        }
        waiter?.resume(returning: nil)
    }

    /// What is queued, up to `maxChanges` changes (at least one transaction or piece), waiting for one; nil once
    /// finished and drained.
    func next(maxChanges: Int = .max) async -> [WALTransaction]? {
        await withCheckedContinuation { continuation in
            let ready: (batch: [WALTransaction]?, now: Bool) = state.withLock { state in
                if !state.queue.isEmpty {
                    var count = 1
                    var changes = state.queue[0].changes.count
                    while count < state.queue.count, changes + state.queue[count].changes.count <= maxChanges {
                        changes += state.queue[count].changes.count
                        count += 1
                    }
                    defer { state.queue.removeFirst(count) }
                    return (Array(state.queue.prefix(count)), true)
                }
                if state.finished { return (nil, true) }
                state.waiter = continuation
                return (nil, false)
            }
            if ready.now { continuation.resume(returning: ready.batch) }
        }
    }
}
