import Foundation
import Synchronization

/// Opening the subscribers, then letting them sit idle for 3 s: how long connecting took and what the idle streams cost
/// the server in memory and CPU. The realtime and nchan scenarios measure this the same way.
struct ConnectPhase {
    var seconds: Double
    var opened: Int
    var targets: Int
    var serverRSSBefore: Int?
    var serverRSSAfter: Int?
    var serverIdleCPU: Double?

    static func run(
        _ fleet: SubscriberFleet,
        _ targets: [SubscriberTarget],
        counters: LiveCounters,
        probes: ResourceProbes,
        concurrency: Int,
        log: @escaping @Sendable (String) -> Void
    ) async throws -> ConnectPhase {
        let rssBefore = probes.server?.residentBytes()
        let seconds = try await fleet.open(targets, concurrency: concurrency, log: log)
        let opened = counters.openStreams.load(ordering: .relaxed)
        log(String(format: "%d streams open in %.1f s (%d failed to connect)", opened, seconds, fleet.failedToConnect))
        let idleWindow = ResourceWindow(probes.server)
        try await Task.sleep(for: .seconds(3))
        return ConnectPhase(
            seconds: seconds,
            opened: opened,
            targets: targets.count,
            serverRSSBefore: rssBefore,
            serverRSSAfter: probes.server?.residentBytes(),
            serverIdleCPU: idleWindow.cpuSeconds()
        )
    }

    var report: ScenarioReport.Connect { .init(seconds: seconds, perSecond: Double(targets) / max(seconds, 0.001)) }

    /// The server's memory growth per open stream while idle.
    var perIdleSubscriberBytes: Double? {
        serverRSSBefore.flatMap { before in serverRSSAfter.map { Double($0 - before) / Double(max(opened, 1)) } }
    }
}

/// The measured window's start: CPU of the server, database and tool, and the frames received so far.
struct MeasurementWindow: Sendable {
    var server: ResourceWindow
    var database: ResourceWindow
    var tool: ToolCPU.Reading
    var frames: Int
    var started: ContinuousClock.Instant

    static func open(_ probes: ResourceProbes, tool: ToolCPU, counters: LiveCounters) async -> MeasurementWindow {
        let reading = await tool.read()
        return MeasurementWindow(
            server: ResourceWindow(probes.server),
            database: ResourceWindow(probes.database),
            tool: reading,
            frames: counters.frames.load(ordering: .relaxed),
            started: ContinuousClock.now
        )
    }
}

/// The measured window's end: CPU of the server, database and tool since the window opened, the frames the tool
/// received in it, and the memory held then.
struct WindowEnd {
    var seconds: Double
    var serverCPU: Double?
    var databaseCPU: Double?
    var toolCPU: Double
    var toolReceiveCPU: Double
    var framesReceived: Int
    var serverRSS: Int?
    var toolRSS: Int?

    init(_ window: MeasurementWindow, probes: ResourceProbes, tool: ToolCPU, counters: LiveCounters) async {
        let reading = await tool.read()
        seconds = (ContinuousClock.now - window.started).seconds
        serverCPU = window.server.cpuSeconds()
        databaseCPU = window.database.cpuSeconds()
        toolCPU = reading.process - window.tool.process
        toolReceiveCPU = reading.receivers - window.tool.receivers
        framesReceived = counters.frames.load(ordering: .relaxed) - window.frames
        serverRSS = probes.server?.residentBytes()
        toolRSS = probes.tool.residentBytes()
    }

    func memory(_ connect: ConnectPhase?) -> ScenarioReport.Memory {
        .init(
            serverRSSBeforeBytes: connect?.serverRSSBefore,
            serverRSSAfterBytes: connect?.serverRSSAfter,
            perIdleSubscriberBytes: connect?.perIdleSubscriberBytes,
            serverRSSEndBytes: serverRSS,
            toolRSSBytes: toolRSS
        )
    }

    /// The window's CPU split, per delivery (frames the subscribers should have got and did) and per acknowledged write.
    func cpu(_ connect: ConnectPhase?, delivered: Int, writes: Int) -> ScenarioReport.CPU {
        func per(_ seconds: Double?, _ count: Int) -> Double? { count > 0 ? seconds.map { $0 * 1e6 / Double(count) } : nil }
        return .init(
            windowSeconds: seconds,
            serverSeconds: serverCPU,
            toolSeconds: toolCPU,
            databaseSeconds: databaseCPU,
            serverMicrosecondsPerDelivery: per(serverCPU, delivered),
            serverIdleSecondsWhileConnected: connect?.serverIdleCPU,
            toolReceiveSeconds: framesReceived > 0 ? toolReceiveCPU : nil,
            framesReceived: framesReceived,
            toolMicrosecondsPerFrame: per(toolCPU, framesReceived),
            toolReceiveMicrosecondsPerFrame: per(toolReceiveCPU, framesReceived),
            serverMicrosecondsPerWrite: per(serverCPU, writes),
            databaseMicrosecondsPerWrite: per(databaseCPU, writes),
            toolMicrosecondsPerWrite: per(toolCPU, writes)
        )
    }
}

extension DeliveryCheck {
    /// Deliveries per second between the first and the last receipt.
    var deliveriesPerSecond: Double? {
        guard let first = firstReceiptMicroseconds, let last = lastReceiptMicroseconds, last > first else { return nil }
        return Double(delivered) / (Double(last - first) / 1e6)
    }
}
