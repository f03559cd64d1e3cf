import Synchronization

/// Counters shared by every connection and the progress line, updated without locks.
final class LiveCounters: Sendable {
    /// Streams that answered 200 and are open.
    let openStreams = Atomic<Int>(0)
    /// Change frames received by all subscribers.
    let frames = Atomic<Int>(0)
    /// Streams that ended before the tool closed them.
    let disconnects = Atomic<Int>(0)
    /// Writes (or publishes) acknowledged with a 2xx answer.
    let writesAcknowledged = Atomic<Int>(0)
    /// Writes (or publishes) refused or failed.
    let writesFailed = Atomic<Int>(0)
    /// Set when the tool starts closing the streams itself: closes after it are not disconnects.
    let finishing = Atomic<Bool>(false)

    init() {}
}
