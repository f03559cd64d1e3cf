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
    /// Realtime: write request sent → receipt. (nchan's origin is already the send.)
    var sendToReceipt: LatencySummary? = nil
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
        /// Realtime: the subscribers' role mix, and the editors writing to each branch; W: the writers.
        var roles: RoleMix? = nil
        var editorsPerBranch: Int? = nil
        var writers: Int? = nil

        enum CodingKeys: String, CodingKey {
            case subscribers, channels, branches, mix
            case writesPerSecond = "writes_per_second", durationSeconds = "duration_s"
            case negativeControlShare = "negative_control_share", payloadBytes = "payload_bytes", toolThreads = "tool_threads"
            case roles, editorsPerBranch = "editors_per_branch", writers
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
        var serverMicrosecondsPerDelivery: Double? = nil
        var serverIdleSecondsWhileConnected: Double? = nil
        /// The tool's event loops that receive the frames, alone.
        var toolReceiveSeconds: Double? = nil
        var framesReceived: Int? = nil
        /// The whole tool's CPU (getrusage) over the frames it received; and its receiving loops' alone.
        var toolMicrosecondsPerFrame: Double? = nil
        var toolReceiveMicrosecondsPerFrame: Double? = nil
        var serverMicrosecondsPerWrite: Double? = nil
        var databaseMicrosecondsPerWrite: Double? = nil
        var toolMicrosecondsPerWrite: Double? = nil
        enum CodingKeys: String, CodingKey {
            case windowSeconds = "window_s", serverSeconds = "server_s", toolSeconds = "tool_s", databaseSeconds = "database_s"
            case serverMicrosecondsPerDelivery = "server_us_per_delivery", serverIdleSecondsWhileConnected = "server_idle_s_while_connected"
            case toolReceiveSeconds = "tool_receive_s", framesReceived = "frames_received"
            case toolMicrosecondsPerFrame = "tool_us_per_frame", toolReceiveMicrosecondsPerFrame = "tool_receive_us_per_frame"
            case serverMicrosecondsPerWrite = "server_us_per_write", databaseMicrosecondsPerWrite = "database_us_per_write"
            case toolMicrosecondsPerWrite = "tool_us_per_write"
        }

        /// `server 1.2 s (40 %), PostgreSQL …, tool …`: who used the window's CPU.
        func split(serverName: String) -> String {
            let parts = [(serverName, serverSeconds), ("PostgreSQL", databaseSeconds), ("tool", toolSeconds)].compactMap { name, value in
                value.map { (name, $0) }
            }
            let total = parts.reduce(0) { $0 + $1.1 }
            return parts.map { String(format: "%@ %.2f s (%.0f %%)", $0.0, $0.1, total > 0 ? $0.1 * 100 / total : 0) }.joined(separator: ", ")
        }
    }

    struct Writes: Codable, Sendable {
        var attempted: Int
        var acknowledged: Int
        var failed: Int
        var perSecond: Double
        var failureStatuses: [String: Int]
        /// Send → answer of the acknowledged writes.
        var latency: LatencySummary? = nil
        /// Writes made as: `editor` (a user's token, through policy and RLS), or `publisher` for nchan.
        var writtenAs: String? = nil
        enum CodingKeys: String, CodingKey {
            case attempted, acknowledged, failed, latency, perSecond = "per_second", failureStatuses = "failure_statuses"
            case writtenAs = "written_as"
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
        case originToReceipt = "origin_to_receipt", acknowledgementToReceipt = "ack_to_receipt", sendToReceipt = "send_to_receipt"
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
        func micro(_ value: Double?) -> String { value.map { String(format: "%.1f µs", $0) } ?? "-" }
        add("scenario", "\(name) (\(mode))")
        add(
            "settings",
            settings.writers.map { "\($0) writers (closed loop), \(settings.channels) plans, for \(settings.durationSeconds) s" }
                ?? "\(settings.subscribers) subscribers, \(settings.channels) channels, \(settings.writesPerSecond)/s for \(settings.durationSeconds) s"
        )
        if let connect { add("connect", String(format: "%.1f s (%.0f/s)", connect.seconds, connect.perSecond)) }
        add(
            "writes",
            String(format: "%d sent, %d acknowledged, %d failed, %.1f/s", writes.attempted, writes.acknowledged, writes.failed, writes.perSecond)
                + (writes.writtenAs.map { " as \($0)" } ?? ""))
        if let latency = writes.latency { add("send → answer", ms(latency)) }
        if let feed {
            add(
                "feed (cross-check)",
                "\(feed.events) events; writes in feed \(feed.writesInFeed), missing \(feed.writesMissingFromFeed); unmatched \(feed.unmatchedEvents)"
            )
        }
        if let delivery { addDelivery(delivery, add) }
        if mode != "writes" {
            add(mode == "realtime" ? "commit → receipt" : mode == "nchan" ? "publish → receipt" : "notify → listen", ms(originToReceipt))
        }
        if let sendToReceipt { add("send → receipt", ms(sendToReceipt)) }
        if let acknowledgementToReceipt { add("ack → receipt", ms(acknowledgementToReceipt)) }
        if let deliveriesPerSecond { add("deliveries/s", String(format: "%.0f", deliveriesPerSecond)) }
        if let memory, connect != nil {
            add(
                "server RSS",
                "\(mib(memory.serverRSSBeforeBytes)) → \(mib(memory.serverRSSAfterBytes)) connected → \(mib(memory.serverRSSEndBytes)) at end"
            )
            add("per idle subscriber", memory.perIdleSubscriberBytes.map { String(format: "%.1f KiB", $0 / 1024) } ?? "-")
            add("tool RSS", mib(memory.toolRSSBytes))
        }
        add("CPU split", String(format: "%.1f s window: ", cpu.windowSeconds) + cpu.split(serverName: mode == "nchan" ? "nchan" : "server"))
        if let perDelivery = cpu.serverMicrosecondsPerDelivery { add("server CPU/delivery", micro(perDelivery)) }
        if let frames = cpu.framesReceived, frames > 0 {
            add(
                "tool CPU/frame",
                "\(micro(cpu.toolMicrosecondsPerFrame)) (whole tool), \(micro(cpu.toolReceiveMicrosecondsPerFrame)) receiving loops alone, "
                    + "\(frames) frames")
        }
        if mode == "writes" || mode == "realtime" {
            add(
                "CPU/write",
                "server \(micro(cpu.serverMicrosecondsPerWrite)), PostgreSQL \(micro(cpu.databaseMicrosecondsPerWrite)), "
                    + "tool \(micro(cpu.toolMicrosecondsPerWrite))")
        }
        for note in notes { add("note", note) }
        let width = rows.map(\.0.count).max() ?? 0
        return rows.map { $0.0.padding(toLength: width, withPad: " ", startingAt: 0) + "  " + $0.1 }.joined(separator: "\n")
    }

    private func addDelivery(_ delivery: DeliveryCheck, _ add: (String, String) -> Void) {
        add(
            "deliveries",
            "expected \(delivery.expected), delivered \(delivery.delivered), missing \(delivery.missing), "
                + "duplicated \(delivery.duplicated), misdelivered \(delivery.misdelivered), out of order \(delivery.outOfOrder)"
        )
        if mode == "realtime" {
            add(
                "withheld",
                "\(delivery.withheldCorrectly) of \(delivery.withheld) events correctly not delivered; unmatched frames \(delivery.unmatched), "
                    + "of writes with unknown outcome \(delivery.ofUnknownWrites)")
            add("subscribers", delivery.subscribersByKind.sorted { $0.key < $1.key }.map { "\($0.key) \($0.value)" }.joined(separator: ", "))
        }
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
}
