import Foundation
import Histogram

/// An event a subscriber of `channel` must receive: its sequence number, when it began (commit, or publish) and when
/// the write or publish that caused it was acknowledged.
struct ExpectedEvent: Sendable {
    var sequence: Int64
    var channel: Int
    var originMicroseconds: Int64
    var acknowledgedMicroseconds: Int64?
}

/// p50, p95, p99 and max of a latency distribution, in milliseconds.
struct LatencySummary: Codable, Sendable {
    var count: UInt64
    var p50Ms: Double
    var p95Ms: Double
    var p99Ms: Double
    var maxMs: Double
    var meanMs: Double

    enum CodingKeys: String, CodingKey {
        case count, p50Ms = "p50_ms", p95Ms = "p95_ms", p99Ms = "p99_ms", maxMs = "max_ms", meanMs = "mean_ms"
    }

    init(_ histogram: Histogram<UInt64>) {
        count = histogram.totalCount
        let ms = { (microseconds: UInt64) in Double(microseconds) / 1000 }
        p50Ms = count == 0 ? 0 : ms(histogram.valueAtPercentile(50))
        p95Ms = count == 0 ? 0 : ms(histogram.valueAtPercentile(95))
        p99Ms = count == 0 ? 0 : ms(histogram.valueAtPercentile(99))
        maxMs = count == 0 ? 0 : ms(histogram.max)
        meanMs = count == 0 ? 0 : histogram.mean / 1000
    }
}

/// Latencies in microseconds, up to 10 minutes, with three significant digits.
struct LatencyRecorder {
    private(set) var histogram = Histogram<UInt64>(highestTrackableValue: 600_000_000, numberOfSignificantValueDigits: .three)
    /// Samples that came out negative (a frame read before its write's answer), recorded as zero.
    private(set) var negativeSamples = 0

    mutating func record(microseconds: Int64) {
        if microseconds < 0 { negativeSamples += 1 }
        _ = histogram.record(UInt64(min(max(microseconds, 0), 600_000_000)))
    }
}

/// What the subscribers received compared with what they should have.
struct DeliveryCheck: Codable, Sendable {
    var subscribersOpen = 0
    var subscribersRefused = 0
    var subscribersFailed = 0
    var expected = 0
    var delivered = 0
    var missing = 0
    var duplicated = 0
    var misdelivered = 0
    /// Realtime: frames that fit no acknowledged write of this run.
    var unmatched = 0
    /// Realtime: frames of a task whose write ended without an answer (it may have been committed), fitting no other.
    var ofUnknownWrites = 0
    /// Realtime: events of acknowledged writes that subscribers may not see (summed over open subscribers), and how
    /// many of them indeed did not arrive.
    var withheld = 0
    var withheldCorrectly = 0
    var outOfOrder = 0
    /// Frames of events from before the measurement began (the feed caught up after a stream opened); not counted.
    var beforeStart = 0
    var disconnects = 0
    var disconnectReasons: [String: Int] = [:]
    var controlEvents: [String: Int] = [:]
    /// Open subscribers by role and channel, e.g. `viewer plan`, `admin branch`, `outsider branch`.
    var subscribersByKind: [String: Int] = [:]
    var negativeControls = 0
    var negativeControlsRefused = 0
    /// Negative-control streams that were *not* refused: each is a policy leak.
    var negativeControlsLeaked = 0
    var averageFrameBytes = 0.0
    var firstReceiptMicroseconds: Int64?
    var lastReceiptMicroseconds: Int64?

    enum CodingKeys: String, CodingKey {
        case subscribersOpen = "subscribers_open", subscribersRefused = "subscribers_refused", subscribersFailed = "subscribers_failed"
        case expected, delivered, missing, duplicated, misdelivered, unmatched, withheld
        case ofUnknownWrites = "of_unknown_writes", withheldCorrectly = "withheld_correctly", subscribersByKind = "subscribers_by_kind"
        case outOfOrder = "out_of_order", beforeStart = "before_start", disconnects
        case disconnectReasons = "disconnect_reasons", controlEvents = "control_events"
        case negativeControls = "negative_controls", negativeControlsRefused = "negative_controls_refused"
        case negativeControlsLeaked = "negative_controls_leaked", averageFrameBytes = "average_frame_bytes"
        case firstReceiptMicroseconds = "first_receipt_us", lastReceiptMicroseconds = "last_receipt_us"
    }
}

extension DeliveryCheck {
    /// Counts a stream's answer: a negative control refused or leaked, a subscriber refused or failed, or one open
    /// (with its disconnect and control events). True when its frames are to be checked.
    mutating func admit(_ outcome: SubscriberOutcome) -> Bool {
        if outcome.target.isNegativeControl {
            negativeControls += 1
            if outcome.status == 404 {
                negativeControlsRefused += 1
            } else if outcome.status == 200 {
                negativeControlsLeaked += 1
                misdelivered += outcome.receipts.count
            }
            return false
        }
        guard outcome.status == 200 else {
            if outcome.status == nil || outcome.status == -1 { subscribersFailed += 1 } else { subscribersRefused += 1 }
            return false
        }
        subscribersOpen += 1
        if outcome.disconnected {
            disconnects += 1
            disconnectReasons[outcome.endReason ?? "unknown", default: 0] += 1
        }
        for name in outcome.controlEvents { controlEvents[name, default: 0] += 1 }
        return true
    }
}

/// Compares every subscriber's receipts with the expected events of its channel by sequence number, and measures the
/// delays: the nchan peer's check, whose messages carry the publisher's own sequence numbers.
struct Verifier {
    let expected: [ExpectedEvent]
    /// Sequences at or below this are from before the measurement.
    let startSequence: Int64
    /// Subscribers that never got an answer (connect failures), counted into the check.
    let failedToConnect: Int

    struct Result {
        var check: DeliveryCheck
        var originToReceipt: LatencySummary
        var acknowledgementToReceipt: LatencySummary
        var receivedBeforeAcknowledgement: Int
    }

    func verify(_ outcomes: [SubscriberOutcome]) -> Result {
        var bySequence: [Int64: ExpectedEvent] = [:]
        var perChannel: [Int: Int] = [:]
        for event in expected {
            bySequence[event.sequence] = event
            perChannel[event.channel, default: 0] += 1
        }
        var check = DeliveryCheck()
        check.subscribersFailed = failedToConnect
        var origin = LatencyRecorder()
        var acknowledgement = LatencyRecorder()
        var frameBytes = 0
        var frames = 0
        for outcome in outcomes {
            guard check.admit(outcome) else { continue }
            let channel = outcome.target.channel
            check.expected += perChannel[channel] ?? 0
            var seen = Set<Int64>()
            seen.reserveCapacity(outcome.receipts.count)
            var previous = Int64.min
            for receipt in outcome.receipts {
                guard receipt.sequence > startSequence else {
                    check.beforeStart += 1
                    continue
                }
                guard seen.insert(receipt.sequence).inserted else {
                    check.duplicated += 1
                    continue
                }
                if receipt.sequence < previous { check.outOfOrder += 1 }
                previous = receipt.sequence
                guard let event = bySequence[receipt.sequence], event.channel == channel else {
                    check.misdelivered += 1
                    continue
                }
                check.delivered += 1
                frames += 1
                origin.record(microseconds: receipt.microseconds - event.originMicroseconds)
                if let acknowledged = event.acknowledgedMicroseconds {
                    acknowledgement.record(microseconds: receipt.microseconds - acknowledged)
                }
                check.firstReceiptMicroseconds = min(check.firstReceiptMicroseconds ?? .max, receipt.microseconds)
                check.lastReceiptMicroseconds = max(check.lastReceiptMicroseconds ?? .min, receipt.microseconds)
            }
            frameBytes += outcome.bodyBytes
        }
        check.missing = check.expected - check.delivered
        check.averageFrameBytes = frames == 0 ? 0 : Double(frameBytes) / Double(frames)
        return Result(
            check: check,
            originToReceipt: LatencySummary(origin.histogram),
            acknowledgementToReceipt: LatencySummary(acknowledgement.histogram),
            receivedBeforeAcknowledgement: acknowledgement.negativeSamples
        )
    }
}
