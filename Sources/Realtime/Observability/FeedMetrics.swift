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
    /// Subscribers by how they are held: `socket` (an event stream written by its connection's event loop, no task of
    /// its own) or `task` (a mailbox an in-process task reads). Read from the hub at each scrape.
    let subscribersAtSocket: Gauge
    let subscribersReadByTask: Gauge
    let relayLagBytes: Gauge
    let slotRetainedWALBytes: Gauge
    private let delays: [String: ValueHistogram]
    private let disconnects: [String: Counter]
    /// The service level over the last 10 minutes (`GET /realtime/v1/slo`), also exported as gauges at each scrape.
    public let slo: SLOMonitor
    private let sloDelay: [Double: Gauge]
    private let sloClientDelay: [Double: Gauge]
    private let sloDisconnectRate: Gauge
    private let sloBreached: [String: Gauge]
    static let sloQuantiles: [Double] = [0.5, 0.95, 0.99]
    /// The ends of a stream that count against the disconnect objective.
    static let abnormalDisconnects: Set<String> = ["slow_consumer", "shutdown"]

    /// Milliseconds from commit to fan-out; the upper bounds of the histogram's buckets.
    static let delayBuckets: [Double] = [1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000]
    /// Why streams end: the hub's reasons, and the client going away.
    static let disconnectReasons = ["revoked", "token_expired", "slow_consumer", "shutdown", "client_closed"]

    public init(objectives: SLOMonitor.Objectives = .init()) {
        slo = SLOMonitor(objectives: objectives)
        eventsIn = registry.makeCounter(name: "realtime_events_in_total", help: "Events read from the event log by this node.")
        framesOut = registry.makeCounter(name: "realtime_frames_out_total", help: "Change frames written to streams.")
        openStreams = registry.makeGauge(name: "realtime_open_streams", help: "Server-Sent Events streams open on this node.")
        subscribersAtSocket = registry.makeGauge(
            name: "realtime_subscribers",
            labels: [("held", "socket")],
            help: "Subscribers by how they are held: at their socket by the event loop, or read by a task of their own."
        )
        subscribersReadByTask = registry.makeGauge(
            name: "realtime_subscribers",
            labels: [("held", "task")],
            help: "Subscribers by how they are held: at their socket by the event loop, or read by a task of their own."
        )
        relayLagBytes = registry.makeGauge(
            name: "realtime_relay_lag_bytes",
            help: "WAL bytes between the server's current position and what the relay has confirmed (read at each scrape)."
        )
        slotRetainedWALBytes = registry.makeGauge(
            name: "realtime_slot_retained_wal_bytes",
            help: "WAL bytes the replication slot keeps on the server's disk (from its restart position; read at each scrape)."
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
        var sloDelay: [Double: Gauge] = [:]
        var sloClientDelay: [Double: Gauge] = [:]
        for quantile in Self.sloQuantiles {
            sloDelay[quantile] = registry.makeGauge(
                name: "realtime_slo_delay_ms",
                labels: [("quantile", "\(quantile)")],
                help: "Commit-to-frame-written delay over the last 10 minutes (NaN without samples)."
            )
            sloClientDelay[quantile] = registry.makeGauge(
                name: "realtime_slo_client_delay_ms",
                labels: [("quantile", "\(quantile)")],
                help: "Receive delay reported by clients over the last 10 minutes (NaN without samples)."
            )
        }
        self.sloDelay = sloDelay
        self.sloClientDelay = sloClientDelay
        sloDisconnectRate = registry.makeGauge(
            name: "realtime_slo_disconnect_ratio",
            help: "Abnormal stream ends over streams open in the last 10 minutes (NaN without streams)."
        )
        var sloBreached: [String: Gauge] = [:]
        for objective in ["delay_p95", "client_delay_p95", "disconnect_rate"] {
            sloBreached[objective] = registry.makeGauge(
                name: "realtime_slo_breached",
                labels: [("objective", objective)],
                help: "1 when the objective is breached over the last 10 minutes, else 0."
            )
        }
        self.sloBreached = sloBreached
    }

    /// Records events as they reach the fan-out.
    func recordFanOut(of events: [ChangeEvent], at now: Date = Date()) {
        eventsIn.increment(by: Int64(events.count))
        for event in events {
            delays[event.table]?.record(max(0, now.timeIntervalSince(event.commitTime) * 1000))
        }
    }

    func streamOpened() {
        openStreams.increment()
        slo.streamOpened()
    }

    /// A stream ended: `reason` is an `EndReason` label or `client_closed`.
    func streamClosed(_ reason: String) {
        openStreams.decrement()
        disconnects[reason]?.increment()
        slo.streamEnded(abnormally: Self.abnormalDisconnects.contains(reason))
    }

    /// Frames were written to a stream; `commitTimes` are those of its live change frames, for the delay objective.
    func framesWritten(_ count: Int, commitTimes: [Double] = []) {
        framesOut.increment(by: Int64(count))
        slo.recordWritten(commitTimes: commitTimes)
    }

    /// The text exposition of every metric, with the service-level gauges brought up to date first.
    public func exposition() -> [UInt8] {
        let report = slo.report()
        for quantile in Self.sloQuantiles {
            sloDelay[quantile]?.set(to: report.delay.value(at: quantile) ?? .nan)
            sloClientDelay[quantile]?.set(to: report.clientDelay.value(at: quantile) ?? .nan)
        }
        sloDisconnectRate.set(to: report.disconnects.rate ?? .nan)
        sloBreached["delay_p95"]?.set(to: report.delay.status == .breached ? 1 : 0)
        sloBreached["client_delay_p95"]?.set(to: report.clientDelay.status == .breached ? 1 : 0)
        sloBreached["disconnect_rate"]?.set(to: report.disconnects.status == .breached ? 1 : 0)
        return registry.emitToBuffer()
    }
}

extension EndReason {
    /// The `reason` label of a stream that ended this way.
    var metricLabel: String {
        switch self {
        case .revoked: "revoked"
        case .tokenExpired: "token_expired"
        case .slowConsumer: "slow_consumer"
        case .shutdown: "shutdown"
        case .reset: "reset"
        }
    }
}
