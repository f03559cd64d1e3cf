import AsyncHTTPClient
import NIOCore
import NIOPosix

extension ScenarioReport {
    /// Runs a scenario's measurement, prints its table and writes its JSON (when asked), and shuts down the scenario's
    /// HTTP client and event loops whether it succeeded or not.
    static func publish(
        to jsonPath: String?,
        closing http: HTTPClient?,
        _ groups: [MultiThreadedEventLoopGroup],
        measure: () async throws -> ScenarioReport
    ) async throws {
        do {
            let report = try await measure()
            print(report.table)
            if let jsonPath { try report.write(to: jsonPath) }
        } catch {
            try? await http?.shutdown()
            for group in groups { try? await group.shutdownGracefully() }
            throw error
        }
        try await http?.shutdown()
        for group in groups { try await group.shutdownGracefully() }
    }
}

extension ScenarioReport.Writes {
    /// The writes' counts, rate and send → answer delays.
    static func summary(of writes: [WriteRecord], seconds: Double, writtenAs: String) -> Self {
        var failureStatuses: [String: Int] = [:]
        var latency = LatencyRecorder()
        var acknowledged = 0
        for write in writes {
            if write.succeeded {
                acknowledged += 1
                latency.record(microseconds: write.acknowledgedMicroseconds - write.sentMicroseconds)
            } else {
                failureStatuses[write.status.map(String.init) ?? "no answer", default: 0] += 1
            }
        }
        return .init(
            attempted: writes.count, acknowledged: acknowledged, failed: writes.count - acknowledged, perSecond: Double(acknowledged) / seconds,
            failureStatuses: failureStatuses, latency: LatencySummary(latency.histogram), writtenAs: writtenAs)
    }
}
