import Foundation
import Synchronization

/// What `GET /readyz` knows of this node's change feed: whether its tailer follows the event log, and whether the
/// relay (on whichever node holds it) keeps confirming the replication slot.
///
/// The feed is not ready before the tailer has loaded what the fan-out needs, when the tailer has not read the log for
/// ``maximumLag``, when no relay has streamed the slot for that long, or when the slot has WAL to relay and its
/// confirmed position has not moved for that long (the relay is stuck, or too far behind to keep up).
public final class FeedHealth: Sendable {
    /// How long the feed may be down or stalled before the node says it is not ready.
    public let maximumLag: Duration

    private struct State {
        var startedAt: ContinuousClock.Instant = .now
        var bootstrapped = false
        var lastRead: ContinuousClock.Instant?
        var slotLastActive: ContinuousClock.Instant?
        var confirmed: String?
        var confirmedMovedAt: ContinuousClock.Instant?
    }

    private let state = Mutex(State())

    public init(maximumLag: Duration) { self.maximumLag = maximumLag }

    /// The tailer loaded the fan-out's caches and follows the log from now on.
    func bootstrapped(now: ContinuousClock.Instant = .now) {
        state.withLock {
            $0.bootstrapped = true
            $0.lastRead = now
        }
    }

    /// The tailer read the log (whether or not it found anything).
    func tailerRead(now: ContinuousClock.Instant = .now) { state.withLock { $0.lastRead = now } }

    /// What the replication slot looks like now: whether a relay streams it, how many WAL bytes it has not confirmed,
    /// and its confirmed position. Returns why the feed is not ready, or nil.
    func problem(
        slotActive: Bool?,
        unconfirmedBytes: Double?,
        confirmedLSN: String?,
        now: ContinuousClock.Instant = .now
    ) -> String? {
        state.withLock { state in
            if slotActive == true { state.slotLastActive = now }
            if confirmedLSN != state.confirmed || (unconfirmedBytes ?? 0) <= 0 {
                state.confirmed = confirmedLSN
                state.confirmedMovedAt = now
            }
            guard state.bootstrapped else { return "the change feed is starting" }
            if let lastRead = state.lastRead, now - lastRead > maximumLag {
                return "this node has not read the event log for \(Self.seconds(now - lastRead)) s"
            }
            let activeSince = state.slotLastActive ?? state.startedAt
            if now - activeSince > maximumLag {
                return "no relay has streamed the replication slot for \(Self.seconds(now - activeSince)) s"
            }
            if let moved = state.confirmedMovedAt, now - moved > maximumLag {
                return "the relay has not confirmed the WAL waiting for it for \(Self.seconds(now - moved)) s"
            }
            return nil
        }
    }

    private static func seconds(_ duration: Duration) -> Int64 { duration.components.seconds }
}
