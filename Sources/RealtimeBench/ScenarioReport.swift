import Foundation

/// Everything one scenario measured, as written to the JSON file and shown as a table.
struct ScenarioReport: Codable, Sendable {
    /// `realtime`, `nchan` or `floor`.
    var mode: String
    var name: String
    var settings: Settings
    var connect: Connect?
    var memory: Memory?
    var cpu: CPU
    var writes: Writes
    var feed: Feed?
    var delivery: DeliveryCheck?
    /// Realtime: commit timestamp → receipt. nchan: publish sent → receipt. Floor: NOTIFY statement → LISTEN receipt.
    var originToReceipt: LatencySummary
    /// Write (or publish) acknowledged → receipt.
    var acknowledgementToReceipt: LatencySummary?
    var receivedBeforeAcknowledgement: Int?
    var deliveriesPerSecond: Double?
    var startedAt: String
    var notes: [String]

    struct Settings: Codable, Sendable {
        var subscribers: Int
        var channels: Int
        var branches: Int
        var writesPerSecond: Double
        var durationSeconds: Double
        var negativeControlShare: Double
        var mix: WriteMix?
        var payloadBytes: Int?
        var toolThreads: Int

        enum CodingKeys: String, CodingKey {
            case subscribers, channels, branches, mix
            case writesPerSecond = "writes_per_second", durationSeconds = "duration_s"
            case negativeControlShare = "negative_control_share", payloadBytes = "payload_bytes", toolThreads = "tool_threads"
        }
    }

    struct Connect: Codable, Sendable {
        var seconds: Double
        var perSecond: Double
        enum CodingKeys: String, CodingKey { case seconds, perSecond = "per_second" }
    }

    struct Memory: Codable, Sendable {
        var serverRSSBeforeBytes: Int?
        var serverRSSAfterBytes: Int?
        var perIdleSubscriberBytes: Double?
        var serverRSSEndBytes: Int?
        var toolRSSBytes: Int?
        enum CodingKeys: String, CodingKey {
            case serverRSSBeforeBytes = "server_rss_before_bytes", serverRSSAfterBytes = "server_rss_after_bytes"
            case perIdleSubscriberBytes = "per_idle_subscriber_bytes", serverRSSEndBytes = "server_rss_end_bytes"
            case toolRSSBytes = "tool_rss_bytes"
        }
    }

    struct CPU: Codable, Sendable {
        /// Seconds of the measured window: from the first write to the end of the drain.
        var windowSeconds: Double
        var serverSeconds: Double?
        var toolSeconds: Double?
        var databaseSeconds: Double?
        var serverMicrosecondsPerDelivery: Double?
        var serverIdleSecondsWhileConnected: Double?
        enum CodingKeys: String, CodingKey {
            case windowSeconds = "window_s", serverSeconds = "server_s", toolSeconds = "tool_s", databaseSeconds = "database_s"
            case serverMicrosecondsPerDelivery = "server_us_per_delivery", serverIdleSecondsWhileConnected = "server_idle_s_while_connected"
        }
    }

    struct Writes: Codable, Sendable {
        var attempted: Int
        var acknowledged: Int
        var failed: Int
        var perSecond: Double
        var failureStatuses: [String: Int]
        enum CodingKeys: String, CodingKey {
            case attempted, acknowledged, failed, perSecond = "per_second", failureStatuses = "failure_statuses"
        }
    }

    struct Feed: Codable, Sendable {
        var events: Int
        var writesInFeed: Int
        var writesMissingFromFeed: Int
        var unmatchedEvents: Int
        var eventsPerWriteKind: [String: Int]
        enum CodingKeys: String, CodingKey {
            case events, writesInFeed = "writes_in_feed", writesMissingFromFeed = "writes_missing_from_feed"
            case unmatchedEvents = "unmatched_events", eventsPerWriteKind = "events_per_write_kind"
        }
    }

    enum CodingKeys: String, CodingKey {
        case mode, name, settings, connect, memory, cpu, writes, feed, delivery, notes
        case originToReceipt = "origin_to_receipt", acknowledgementToReceipt = "ack_to_receipt"
        case receivedBeforeAcknowledgement = "received_before_ack", deliveriesPerSecond = "deliveries_per_second"
        case startedAt = "started_at"
    }

    /// Writes the report as pretty JSON.
    func write(to path: String) throws {
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.prettyPrinted, .sortedKeys]
        try encoder.encode(self).write(to: URL(fileURLWithPath: path))
    }

    /// The report as a table for the screen.
    var table: String {
        var rows: [(String, String)] = []
        func add(_ label: String, _ value: String) { rows.append((label, value)) }
        func ms(_ summary: LatencySummary) -> String {
            String(
                format: "p50 %.1f  p95 %.1f  p99 %.1f  max %.1f ms  (n=%d)", summary.p50Ms, summary.p95Ms, summary.p99Ms, summary.maxMs, summary.count
            )
        }
        func mib(_ bytes: Int?) -> String { bytes.map { String(format: "%.1f MiB", Double($0) / 1_048_576) } ?? "-" }
        func seconds(_ value: Double?) -> String { value.map { String(format: "%.2f s", $0) } ?? "-" }
        add("scenario", "\(name) (\(mode))")
        add(
            "settings",
            "\(settings.subscribers) subscribers, \(settings.channels) channels, \(settings.writesPerSecond)/s for \(settings.durationSeconds) s"
        )
        if let connect { add("connect", String(format: "%.1f s (%.0f/s)", connect.seconds, connect.perSecond)) }
        add(
            "writes",
            String(format: "%d sent, %d acknowledged, %d failed, %.1f/s", writes.attempted, writes.acknowledged, writes.failed, writes.perSecond))
        if let feed {
            add(
                "feed",
                "\(feed.events) events; writes in feed \(feed.writesInFeed), missing \(feed.writesMissingFromFeed); unmatched \(feed.unmatchedEvents)"
            )
        }
        if let delivery {
            add(
                "deliveries",
                "expected \(delivery.expected), delivered \(delivery.delivered), missing \(delivery.missing), "
                    + "duplicated \(delivery.duplicated), misdelivered \(delivery.misdelivered), out of order \(delivery.outOfOrder)"
            )
            add(
                "streams",
                "open \(delivery.subscribersOpen), refused \(delivery.subscribersRefused), failed \(delivery.subscribersFailed), "
                    + "disconnects \(delivery.disconnects)"
            )
            if delivery.negativeControls > 0 {
                add(
                    "negative controls",
                    "\(delivery.negativeControlsRefused)/\(delivery.negativeControls) refused, \(delivery.negativeControlsLeaked) leaked")
            }
        }
        add(mode == "realtime" ? "commit → receipt" : mode == "nchan" ? "publish → receipt" : "notify → listen", ms(originToReceipt))
        if let acknowledgementToReceipt { add("ack → receipt", ms(acknowledgementToReceipt)) }
        if let deliveriesPerSecond { add("deliveries/s", String(format: "%.0f", deliveriesPerSecond)) }
        if let memory {
            add(
                "server RSS",
                "\(mib(memory.serverRSSBeforeBytes)) → \(mib(memory.serverRSSAfterBytes)) connected → \(mib(memory.serverRSSEndBytes)) at end"
            )
            add("per idle subscriber", memory.perIdleSubscriberBytes.map { String(format: "%.1f KiB", $0 / 1024) } ?? "-")
            add("tool RSS", mib(memory.toolRSSBytes))
        }
        add(
            "CPU in window",
            String(format: "%.1f s: ", cpu.windowSeconds) + "server \(seconds(cpu.serverSeconds)), database \(seconds(cpu.databaseSeconds)), "
                + "tool \(seconds(cpu.toolSeconds))"
        )
        if let perDelivery = cpu.serverMicrosecondsPerDelivery { add("server CPU/delivery", String(format: "%.1f µs", perDelivery)) }
        for note in notes { add("note", note) }
        let width = rows.map(\.0.count).max() ?? 0
        return rows.map { $0.0.padding(toLength: width, withPad: " ", startingAt: 0) + "  " + $0.1 }.joined(separator: "\n")
    }
}
