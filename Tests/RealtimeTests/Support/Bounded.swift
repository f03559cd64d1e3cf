import Synchronization

/// A wait that took too long.
struct TimeoutError: Error, CustomStringConvertible {
    var what: String
    var seconds: Double
    var description: String { "timed out after \(seconds) s waiting until \(what)" }
}

/// Runs `operation`, failing after `seconds` even if it never returns (it is then left running).
@discardableResult
func bounded<Value: Sendable>(
    _ what: String,
    seconds: Double = 10,
    _ operation: @escaping @Sendable () async throws -> Value
) async throws -> Value {
    let outcome = OnceContinuation<Value>()
    return try await withCheckedThrowingContinuation { continuation in
        outcome.set(continuation)
        Task {
            do {
                outcome.resume(with: .success(try await operation()))
            } catch {
                outcome.resume(with: .failure(error))
            }
        }
        Task {
            try? await Task.sleep(for: .milliseconds(Int(seconds * 1000)))
            outcome.resume(with: .failure(TimeoutError(what: what, seconds: seconds)))
        }
    }
}

/// A continuation resumed by whichever of several tasks finishes first.
final class OnceContinuation<Value: Sendable>: Sendable {
    private let continuation = Mutex<CheckedContinuation<Value, any Error>?>(nil)

    func set(_ continuation: CheckedContinuation<Value, any Error>) {
        self.continuation.withLock { $0 = continuation }
    }

    func resume(with result: Result<Value, any Error>) {
        let continuation = self.continuation.withLock { value in
            defer { value = nil }
            return value
        }
        continuation?.resume(with: result)
    }
}
