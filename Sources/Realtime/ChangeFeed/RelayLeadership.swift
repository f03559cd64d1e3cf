import Synchronization

/// A relay's leadership as a state machine without I/O (`RelayLeadershipTests`); ``Relay`` is the shell that carries
/// out what it decides.
///
/// A relay connects and asks for the advisory lock; while another node leads it asks again every ``lockRetry``; once it
/// holds the lock it relays, and checks as often that its connection (and so the lock) lives. When an attempt fails it
/// waits before starting over: failures in a row double the wait from ``initialBackoff`` up to ``maximumBackoff``; an
/// attempt that was working when it failed (it wrote a batch, or relayed for longer than the longest wait) starts
/// from the shortest wait again, and so does one that ended without a failure.
struct RelayLeadership: Sendable {
    enum State: Equatable, Sendable {
        /// Opening a connection and asking for the lock.
        case connecting
        /// Another node leads; asking again every ``lockRetry``.
        case waitingForLock
        /// Holding the lock, since it started relaying; whether it wrote a batch to the log yet.
        case leading(since: ContinuousClock.Instant?, wroteBatch: Bool)
        /// After a failure, waiting before starting over.
        case backingOff
        case stopped
    }

    /// What the relay does next between attempts.
    enum Action: Equatable, Sendable {
        /// Open a dedicated connection and ask for the lock on it.
        case connectAndAskForLock
        /// The attempt failed: its connection is closed; wait this long, then connect again.
        case startOver(after: Duration)
        /// The node shuts down.
        case stop
    }

    /// What the relay does after the lock's answer, on the same connection.
    enum LockDecision: Equatable, Sendable {
        /// The lock is this node's: start the replication stream and relay.
        case relay
        /// Another node holds it: ask again after this wait.
        case askAgain(after: Duration)
    }

    static let initialBackoff: Duration = .milliseconds(200)

    /// How often a follower asks for the lock, and how often the leader checks that its connection lives.
    let lockRetry: Duration
    /// The longest wait before starting over after failures in a row.
    let maximumBackoff: Duration
    private(set) var state: State = .stopped
    /// The wait before the next attempt, should the current one fail.
    private(set) var nextBackoff: Duration = Self.initialBackoff

    init(lockRetry: Duration, maximumBackoff: Duration) {
        self.lockRetry = lockRetry
        self.maximumBackoff = maximumBackoff
    }

    /// The relay starts (its node is ready).
    mutating func start() -> Action {
        state = .connecting
        return .connectAndAskForLock
    }

    /// The database answered whether the lock is this node's.
    mutating func lockAnswered(acquired: Bool) -> LockDecision {
        guard acquired else {
            state = .waitingForLock
            return .askAgain(after: lockRetry)
        }
        state = .leading(since: nil, wroteBatch: false)
        return .relay
    }

    /// The slot is ready and the relay reads it.
    mutating func startedRelaying(at now: ContinuousClock.Instant) {
        guard case .leading(_, let wrote) = state else { return }
        state = .leading(since: now, wroteBatch: wrote)
    }

    /// A batch reached the log.
    mutating func wroteBatch() {
        guard case .leading(let since, _) = state else { return }
        state = .leading(since: since, wroteBatch: true)
    }

    /// The attempt failed (connection lost, lock lost, the stream broke): how long to wait before the next one.
    mutating func attemptFailed(at now: ContinuousClock.Instant) -> Action {
        if case .leading(let since, let wroteBatch) = state, wroteBatch || since.map({ now - $0 > maximumBackoff }) ?? false {
            nextBackoff = Self.initialBackoff
        }
        let delay = nextBackoff
        nextBackoff = min(nextBackoff * 2, maximumBackoff)
        state = .backingOff
        return .startOver(after: delay)
    }

    /// The attempt ended without a failure: the next failure waits the shortest time again.
    mutating func attemptEnded() -> Action {
        nextBackoff = Self.initialBackoff
        state = .connecting
        return .connectAndAskForLock
    }

    /// The wait after a failure is over.
    mutating func backoffElapsed() -> Action {
        state = .connecting
        return .connectAndAskForLock
    }

    /// The node shuts down.
    mutating func shutDown() -> Action {
        state = .stopped
        return .stop
    }
}

/// The relay's leadership, shared by its loop and the tasks of one attempt (the writer notes each batch).
final class SharedLeadership: Sendable {
    private let machine: Mutex<RelayLeadership>

    init(_ leadership: RelayLeadership) {
        machine = Mutex(leadership)
    }

    /// Feeds the machine one event; returns what it decided.
    func update<Value: Sendable>(_ event: (inout RelayLeadership) -> Value) -> Value {
        machine.withLock { event(&$0) }
    }
}
