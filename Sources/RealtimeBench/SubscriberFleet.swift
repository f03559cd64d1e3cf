import Foundation
import NIOCore
import Synchronization

/// Many subscriber connections, opened together, watched while open, and closed together.
final class SubscriberFleet: Sendable {
    let connector: SubscriberConnector
    let counters: LiveCounters
    let sink: OutcomeSink
    private let channels = Mutex<[any Channel]>([])
    private let failures = Mutex<[String: Int]>([:])

    init(connector: SubscriberConnector) {
        self.connector = connector
        self.counters = connector.counters
        self.sink = connector.sink
    }

    /// Connection attempts that failed before any answer, by error.
    var failedToConnect: Int { failures.withLock { $0.values.reduce(0, +) } }
    var failureReasons: [String: Int] { failures.withLock { $0 } }

    /// Opens every target, `concurrency` at a time; returns the seconds it took.
    func open(_ targets: [SubscriberTarget], concurrency: Int, log: @escaping @Sendable (String) -> Void) async throws -> Double {
        let started = ContinuousClock.now
        let answered = Counter()
        let reporter = Task {
            while !Task.isCancelled {
                try await Task.sleep(for: .seconds(2))
                log("connecting: \(answered.value)/\(targets.count) answered, \(counters.openStreams.load(ordering: .relaxed)) open")
            }
        }
        defer { reporter.cancel() }
        try await forEachConcurrently(targets, limit: concurrency) { target in
            do {
                let (channel, _) = try await self.connector.open(target)
                self.channels.withLock { $0.append(channel) }
            } catch {
                self.failures.withLock { $0["\(error)", default: 0] += 1 }
            }
            answered.add()
        }
        let elapsed = ContinuousClock.now - started
        return Double(elapsed.components.seconds) + Double(elapsed.components.attoseconds) / 1e18
    }

    /// Waits until no change frame has arrived for `quiet`, or `limit` has passed.
    func waitForQuiet(quiet: Duration = .seconds(2), limit: Duration) async {
        let clock = ContinuousClock()
        let deadline = clock.now + limit
        var last = counters.frames.load(ordering: .relaxed)
        var lastChange = clock.now
        while clock.now < deadline {
            try? await Task.sleep(for: .milliseconds(200))
            let now = counters.frames.load(ordering: .relaxed)
            if now != last {
                last = now
                lastChange = clock.now
            } else if clock.now - lastChange >= quiet {
                return
            }
        }
    }

    /// Waits until `frames` change frames have arrived in all (what the writes owe the subscribers), then until none has
    /// arrived for `quiet` (a duplicate or misdelivered frame would come then); or until `limit` has passed.
    func waitForFrames(_ frames: Int, quiet: Duration = .seconds(2), limit: Duration) async {
        let deadline = ContinuousClock.now + limit
        while ContinuousClock.now < deadline, counters.frames.load(ordering: .relaxed) < frames {
            try? await Task.sleep(for: .milliseconds(100))
        }
        await waitForQuiet(quiet: quiet, limit: max(deadline - ContinuousClock.now, quiet))
    }

    /// Closes every connection (closes from now on are not disconnects) and returns what each subscriber saw.
    func closeAll() async -> [SubscriberOutcome] {
        counters.finishing.store(true, ordering: .relaxed)
        let all = channels.withLock { $0 }
        for channel in all { channel.close(promise: nil) }
        for channel in all { try? await channel.closeFuture.get() }
        // channelInactive hands the outcome over during the close; give the event loops a moment to finish.
        try? await Task.sleep(for: .milliseconds(200))
        return sink.drain()
    }
}

/// Prints a progress line every few seconds while a phase runs.
struct ProgressLine: Sendable {
    let counters: LiveCounters
    let label: String
    let log: @Sendable (String) -> Void

    /// Runs `body` with a progress line every 2 s: elapsed time, acknowledged writes and frames with their rates.
    func run<T: Sendable>(total: Duration, _ body: @Sendable () async throws -> T) async rethrows -> T {
        let reporter = Task { [counters, label, log] in
            let clock = ContinuousClock()
            let start = clock.now
            var lastWrites = counters.writesAcknowledged.load(ordering: .relaxed)
            var lastFrames = counters.frames.load(ordering: .relaxed)
            var lastTime = start
            while !Task.isCancelled {
                try await Task.sleep(for: .seconds(2))
                let now = clock.now
                let span = (now - lastTime) / .milliseconds(1) / 1000
                let writes = counters.writesAcknowledged.load(ordering: .relaxed)
                let frames = counters.frames.load(ordering: .relaxed)
                log(
                    label
                        + String(
                            format: " %3.0f/%.0f s  acknowledged %d (%.0f/s)  failed %d  frames %d (%.0f/s)  open %d  disconnects %d",
                            (now - start) / .milliseconds(1) / 1000, total / .milliseconds(1) / 1000, writes,
                            Double(writes - lastWrites) / span, counters.writesFailed.load(ordering: .relaxed), frames,
                            Double(frames - lastFrames) / span, counters.openStreams.load(ordering: .relaxed),
                            counters.disconnects.load(ordering: .relaxed)
                        )
                )
                lastWrites = writes
                lastFrames = frames
                lastTime = now
            }
        }
        defer { reporter.cancel() }
        return try await body()
    }
}
