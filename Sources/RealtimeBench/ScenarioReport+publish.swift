import AsyncHTTPClient
import NIOCore
import NIOPosix

extension ScenarioReport {
    /// Runs a scenario's measurement, prints its table and writes its JSON (when asked), and shuts down the scenario's
    /// HTTP client and event loops whether it succeeded or not.
    static func publish(
        to jsonPath: String?,
        closing http: HTTPClient,
        _ group: MultiThreadedEventLoopGroup,
        measure: () async throws -> ScenarioReport
    ) async throws {
        do {
            let report = try await measure()
            print(report.table)
            if let jsonPath { try report.write(to: jsonPath) }
        } catch {
            try? await http.shutdown()
            try? await group.shutdownGracefully()
            throw error
        }
        try await http.shutdown()
        try await group.shutdownGracefully()
    }
}
