import Synchronization

/// A value shared between tasks behind a lock, as a class so that escaping closures can hold it.
final class Shared<Value: Sendable>: Sendable {
    private let mutex: Mutex<Value>

    init(_ value: Value) {
        mutex = Mutex(value)
    }

    func withLock<Result: Sendable>(_ body: (inout Value) -> Result) -> Result {
        mutex.withLock { value in body(&value) }
    }

    /// A copy of the value.
    var value: Value { mutex.withLock { $0 } }
}

/// A counter shared between tasks, without a lock.
final class Counter: Sendable {
    private let atomic = Atomic<Int>(0)

    init() {}

    /// Adds `amount` and returns the new value.
    @discardableResult
    func add(_ amount: Int = 1) -> Int {
        atomic.add(amount, ordering: .relaxed).newValue
    }

    var value: Int { atomic.load(ordering: .relaxed) }
}
