import Foundation
import Prometheus

/// The change feed's measurements, exported at `GET /metrics` in Prometheus' text format.
///
/// One registry per application (not the process-wide swift-metrics bootstrap), so that several servers in one
/// process — as in the tests — keep their figures apart.
public final class FeedMetrics: Sendable {
    public let registry = PrometheusCollectorRegistry()
    let eventsIn: Counter
    let framesOut: Counter
    let openStreams: Gauge
    let relayLagBytes: Gauge
    private let delays: [String: ValueHistogram]
    private let disconnects: [String: Counter]

    /// Milliseconds from commit to fan-out; the upper bounds of the histogram's buckets.
    static let delayBuckets: [Double] = [1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000]
    /// Why streams end: the hub's reasons, and the client going away.
    static let disconnectReasons = ["revoked", "token_expired", "slow_consumer", "shutdown", "client_closed"]

    public init() {
        eventsIn = registry.makeCounter(name: "realtime_events_in_total", help: "Events read from the event log by this node.")
        framesOut = registry.makeCounter(name: "realtime_frames_out_total", help: "Change frames written to streams.")
        openStreams = registry.makeGauge(name: "realtime_open_streams", help: "Server-Sent Events streams open on this node.")
        relayLagBytes = registry.makeGauge(
            name: "realtime_relay_lag_bytes",
            help: "WAL bytes between the server's current position and what the relay has confirmed (read at each scrape)."
        )
        var delays: [String: ValueHistogram] = [:]
        for table in EventLog.tables.keys {
            delays[table] = registry.makeValueHistogram(
                name: "realtime_delay_ms",
                labels: [("table", table)],
                buckets: Self.delayBuckets,
                help: "Milliseconds from a change's commit to its fan-out to the streams (frames are written right after)."
            )
        }
        self.delays = delays
        var disconnects: [String: Counter] = [:]
        for reason in Self.disconnectReasons {
            disconnects[reason] = registry.makeCounter(
                name: "realtime_disconnects_total",
                labels: [("reason", reason)],
                help: "Streams ended, by reason."
            )
        }
        self.disconnects = disconnects
    }

    /// Records events as they reach the fan-out.
    func recordFanOut(of events: [ChangeEvent], at now: Date = Date()) {
        eventsIn.increment(by: Int64(events.count))
        for event in events {
            delays[event.table]?.record(max(0, now.timeIntervalSince(event.commitTime) * 1000))
        }
    }

    func streamOpened() { openStreams.increment() }

    /// A stream ended: `reason` is an `EndReason` label or `client_closed`.
    func streamClosed(_ reason: String) {
        openStreams.decrement()
        disconnects[reason]?.increment()
    }

    func framesWritten(_ count: Int) { framesOut.increment(by: Int64(count)) }

    /// The text exposition of every metric.
    public func exposition() -> [UInt8] { registry.emitToBuffer() }
}

extension EndReason {
    /// The `reason` label of a stream that ended this way.
    var metricLabel: String {
        switch self {
        case .revoked: "revoked"
        case .tokenExpired: "token_expired"
        case .slowConsumer: "slow_consumer"
        case .shutdown: "shutdown"
        }
    }
}
