import Synchronization

/// Opens once the database is ready (migrations applied): services that need the schema wait on it.
public final class StartupGate: Sendable {
    private let isOpen = Atomic<Bool>(false)

    public init() {}

    /// Lets every waiter through, now and later.
    public func open() { isOpen.store(true, ordering: .releasing) }

    /// Returns once the gate is open; throws `CancellationError` when the waiting task is cancelled (e.g. the start
    /// failed), so that nothing hangs on a gate that never opens. It only polls during start-up.
    public func wait() async throws {
        while !isOpen.load(ordering: .acquiring) {
            try await Task.sleep(for: .milliseconds(20))
        }
    }
}
