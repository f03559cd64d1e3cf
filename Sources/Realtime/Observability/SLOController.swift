import Foundation
import Hummingbird

/// `GET /realtime/v1/slo`: this node's service level over the last 10 minutes against its objectives; and
/// `POST /realtime/v1/slo/client-delay`: devices report the delays they saw, so that the device side counts too.
///
/// Both need a token (any role). Reports are rate-limited per caller and node.
struct SLOController {
    let slo: SLOMonitor
    let tokens: TokenAuthority
    let nodeID: String
    let reportLimiter = RateLimiter(rate: Self.reportsPerSecond, burst: Double(Self.reportBurst))

    /// The most samples in one report, and the largest delay a sample may claim (one hour, in milliseconds).
    static let maxSamples = 100
    static let maxSampleMilliseconds = 3_600_000.0
    static let maxBodyBytes = 8 * 1024
    /// One report every 10 s per caller on average, a few at once.
    static let reportsPerSecond = 0.1
    static let reportBurst = 3

    func addRoutes(to router: Router<AppRequestContext>) {
        router.get("realtime/v1/slo") { request, _ in
            _ = try await AuthMiddleware.authenticate(request, tokens: tokens, allowQueryToken: false)
            return try report(at: Date())
        }
        router.post("realtime/v1/slo/client-delay") { request, _ in
            let (principal, _) = try await AuthMiddleware.authenticate(request, tokens: tokens, allowQueryToken: false)
            var request = request
            let (body, _) = try await request.jsonObject(limit: Self.maxBodyBytes)
            let samples = try Self.samples(in: body)
            if let wait = reportLimiter.take(principal.key) { throw APIError.rateLimited(retryAfter: wait, what: "delay reports") }
            slo.recordClientDelays(samples)
            return Response.json(.accepted, #"{"accepted":\#(samples.count)}"#)
        }
    }

    func report(at now: Date) throws -> Response {
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.sortedKeys]
        let body = NodeReport(report: slo.report(at: now), node: nodeID, generatedAt: Timestamp.text(now))
        return .json(.ok, String(decoding: try encoder.encode(body), as: UTF8.self))
    }

    /// The report of `GET /realtime/v1/slo`: the window's figures, with the node and the time the window ends beside
    /// them in the same object.
    struct NodeReport: Encodable {
        let report: SLOReport
        let node: String
        let generatedAt: String

        private enum Keys: String, CodingKey {
            case node
            case generatedAt = "generated_at"
        }

        func encode(to encoder: any Encoder) throws {
            try report.encode(to: encoder)
            var container = encoder.container(keyedBy: Keys.self)
            try container.encode(node, forKey: .node)
            try container.encode(generatedAt, forKey: .generatedAt)
        }
    }

    /// `{"samples_ms":[12, 40.5, …]}`: 1 to 100 delays, each from 0 to one hour.
    static func samples(in body: [String: JSONValue]) throws -> [Double] {
        if let unknown = body.keys.first(where: { $0 != "samples_ms" }) {
            throw APIError.unknownField("Unknown field '\(unknown)': a report has only samples_ms.")
        }
        guard let value = body["samples_ms"] else { throw APIError.missingField("samples_ms") }
        guard case .array(let items) = value, (1...maxSamples).contains(items.count) else {
            throw APIError.invalidValue("samples_ms must be an array of 1 to \(maxSamples) numbers.")
        }
        return try items.map { item in
            let number: Double
            switch item {
            case .integer(let value): number = Double(value)
            case .number(let value): number = value
            default: throw APIError.invalidValue("samples_ms holds numbers (milliseconds), not \(item.typeName).")
            }
            guard number.isFinite, (0...maxSampleMilliseconds).contains(number) else {
                throw APIError.invalidValue("A delay sample must be from 0 to \(Int(maxSampleMilliseconds)) ms; got \(number).")
            }
            return number
        }
    }
}
