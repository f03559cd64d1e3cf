import Foundation
import HTTPTypes
import Hummingbird
import Testing

@testable import Realtime

@Suite struct DelayHistogramTests {
    @Test func percentilesAreWithinOneBucketOfTheTruth() {
        var histogram = DelayHistogram()
        for value in 1...1000 { histogram.record(Double(value)) }
        #expect(histogram.count == 1000)
        #expect(histogram.maximum == 1000)
        // 1 ms buckets below 100 ms, 10 ms buckets below 1 s: the reported value is the bucket's upper bound.
        #expect((500...510).contains(histogram.percentile(0.5) ?? 0))
        #expect((950...960).contains(histogram.percentile(0.95) ?? 0))
        #expect((990...1000).contains(histogram.percentile(0.99) ?? 0))
        #expect(histogram.percentile(0.01) == 11, "10 ms lies in the bucket [10, 11)")
    }

    @Test func anEmptyHistogramHasNoPercentileAndHugeDelaysKeepTheirMaximum() {
        var histogram = DelayHistogram()
        #expect(histogram.percentile(0.95) == nil)
        histogram.record(300_000)  // five minutes: past the last bounded bucket
        histogram.record(-3)  // a clock step: counted as 0
        histogram.record(.nan)
        #expect(histogram.count == 3)
        #expect(histogram.percentile(0.5) == 1)
        #expect(histogram.percentile(1) == 300_000.0)
    }

    @Test func bucketsJoinWithoutGapsOrOverlaps() {
        var previousUpper = 0.0
        for bucket in 0..<(DelayHistogram.bucketCount - 1) {
            let upper = DelayHistogram.upperBound(of: bucket)
            #expect(upper > previousUpper)
            #expect(DelayHistogram.bucket(of: previousUpper) == bucket, "lower edge of bucket \(bucket)")
            #expect(DelayHistogram.bucket(of: upper.nextDown) == bucket, "upper edge of bucket \(bucket)")
            previousUpper = upper
        }
        #expect(DelayHistogram.bucket(of: previousUpper) == DelayHistogram.bucketCount - 1)
    }
}

@Suite struct SLOMonitorTests {
    let start = Date(timeIntervalSince1970: 1_800_000_000)

    @Test func theWindowForgetsWhatIsOlderThanTenMinutes() {
        let monitor = SLOMonitor()
        let commit = start.timeIntervalSince1970
        monitor.recordWritten(commitTimes: [commit - 2.0], at: start)  // 2000 ms: slow
        // 9.5 ms: the middle of a 1 ms bucket, so that rounding of the times cannot move it to the next.
        monitor.recordWritten(commitTimes: Array(repeating: commit + 59.9905, count: 99), at: start.addingTimeInterval(60))
        let now = monitor.report(at: start.addingTimeInterval(61))
        #expect(now.delay.samples == 100)
        #expect(now.delay.max == 2000)
        #expect(now.delay.p50 == 10)
        #expect(now.delay.status == .ok)
        let later = monitor.report(at: start.addingTimeInterval(Double(SLOMonitor.windowSeconds) + 15))
        #expect(later.delay.samples == 99, "the first sample left the window")
        #expect(abs((later.delay.max ?? 0) - 9.5) < 0.01)
        let muchLater = monitor.report(at: start.addingTimeInterval(3600))
        #expect(muchLater.delay.samples == 0)
        #expect(muchLater.delay.p95 == nil)
        #expect(muchLater.delay.status == .noData)
        #expect(muchLater.status == .ok)
    }

    @Test func aSlowP95BreachesTheDelayObjective() {
        let monitor = SLOMonitor(objectives: .init(delayP95Milliseconds: 500, disconnectRate: 0.01))
        let commit = start.timeIntervalSince1970
        monitor.recordWritten(commitTimes: Array(repeating: commit - 0.105, count: 90), at: start)
        monitor.recordWritten(commitTimes: Array(repeating: commit - 0.805, count: 10), at: start)
        let report = monitor.report(at: start)
        #expect((800...810).contains(report.delay.p95 ?? 0))
        #expect((100...110).contains(report.delay.p50 ?? 0))
        #expect(report.delay.status == .breached)
        #expect(report.status == .breached)
    }

    @Test func clientDelaysAreJudgedOnTheirOwn() {
        let monitor = SLOMonitor()
        monitor.recordClientDelays([20, 30, 5000], at: start)
        let report = monitor.report(at: start)
        #expect(report.clientDelay.samples == 3)
        #expect(report.clientDelay.p95 == 5000)
        #expect(report.clientDelay.status == .breached)
        #expect(report.delay.status == .noData)
        #expect(report.status == .breached)
    }

    @Test func abnormalEndsCountOverEveryStreamOfTheWindow() {
        let monitor = SLOMonitor()
        for _ in 0..<200 { monitor.streamOpened() }
        for _ in 0..<49 { monitor.streamEnded(abnormally: false, at: start) }
        monitor.streamEnded(abnormally: true, at: start)
        let oneOf200 = monitor.report(at: start)
        #expect(oneOf200.disconnects.streams == 200)
        #expect(oneOf200.disconnects.abnormal == 1)
        #expect(oneOf200.disconnects.rate == 0.005)
        #expect(oneOf200.disconnects.status == .ok)
        monitor.streamEnded(abnormally: true, at: start)
        monitor.streamEnded(abnormally: true, at: start)
        let threeOf200 = monitor.report(at: start)
        #expect(threeOf200.disconnects.rate == 0.015)
        #expect(threeOf200.disconnects.status == .breached)
        // Ten minutes on, only the 148 streams still open count, and none of them ended.
        let later = monitor.report(at: start.addingTimeInterval(Double(SLOMonitor.windowSeconds) + 10))
        #expect(later.disconnects.streams == 148)
        #expect(later.disconnects.abnormal == 0)
        #expect(later.disconnects.status == .ok)
    }

    @Test func theReportIsTheDocumentedJSON() throws {
        let monitor = SLOMonitor()
        let text = String(decoding: try JSONEncoder().encode(monitor.report(at: start)), as: UTF8.self)
        let object = try #require(try JSONSerialization.jsonObject(with: Data(text.utf8)) as? [String: Any])
        #expect(object["window_seconds"] as? Int == 600)
        #expect(object["status"] as? String == "ok")
        let delay = try #require(object["delay_ms"] as? [String: Any])
        #expect(delay["p95"] is NSNull, "a percentile without samples is null, not missing: \(text)")
        #expect(delay["objective_p95"] as? Double == 1000)
        #expect(delay["status"] as? String == "no_data")
        let disconnects = try #require(object["disconnects"] as? [String: Any])
        #expect(disconnects["rate"] is NSNull)
        #expect(disconnects["objective"] as? Double == 0.01)
    }
}

/// The live objectives of a running server: measured on real streams, reported at `/realtime/v1/slo` and on `/metrics`.
@Suite struct SLOEndpointTests {
    @Test func framesWrittenToAStreamAreMeasuredAndReported() async throws {
        let server = try await TestServer.make(changeFeed: true)
        try await server.testLive { client in
            let team = try await Team.make(client)
            let plan = try await team.makePlan(client)
            let stream = try await ChangeFeedTests.open(client, "/realtime/v1/plan/\(plan)?table=task", as: .user(team.viewer))
            for index in 0..<5 { _ = try await team.makeTask(client, plan: plan, title: "task \(index)") }
            let frames = try await stream.waitForChanges(5)
            #expect(frames.count == 5)

            let reply = try await client.send(.get, "/realtime/v1/slo", as: .user(team.viewer))
            #expect(reply.status == .ok, "\(reply.text)")
            let delay = try #require(reply.object["delay_ms"] as? [String: Any])
            #expect(delay["samples"] as? Int == 5, "one sample per frame written: \(reply.text)")
            let p95 = try #require(delay["p95"] as? Double)
            let maximum = try #require(delay["max"] as? Double)
            #expect(p95 >= 0 && p95 <= maximum)
            #expect(delay["status"] as? String == (p95 >= 1000 ? "breached" : "ok"))
            let disconnects = try #require(reply.object["disconnects"] as? [String: Any])
            #expect(disconnects["streams"] as? Int == 1)
            #expect(disconnects["abnormal"] as? Int == 0)
            #expect(reply.object["node"] as? String == server.configuration.nodeID)

            let metrics = try await client.send(.get, "/metrics", as: nil)
            // The same figure, printed by two formatters (the exposition format and JSON may differ in the last digit).
            let exported = try #require(ChangeFeedTests.value(of: #"realtime_slo_delay_ms{quantile="0.95"}"#, in: metrics.text), "\(metrics.text)")
            #expect(abs(exported - p95) <= 1e-9 * max(1, p95), "\(exported) on /metrics, \(p95) on /realtime/v1/slo")
            #expect(ChangeFeedTests.value(of: #"realtime_slo_disconnect_ratio"#, in: metrics.text) == 0)
            #expect(ChangeFeedTests.value(of: #"realtime_slo_breached{objective="disconnect_rate"}"#, in: metrics.text) == 0)
            stream.close()
        }
    }

    @Test func clientReportsCountAndBadReportsAreRefused() async throws {
        let server = try await TestServer.make()
        try await server.testLive { client in
            let team = try await Team.make(client)
            let user = Principal.user(team.viewer)
            let accepted = try await client.send(.post, "/realtime/v1/slo/client-delay", as: user, json: #"{"samples_ms":[12, 30.5, 2500]}"#)
            #expect(accepted.status == .accepted, "\(accepted.text)")
            #expect(accepted.object["accepted"] as? Int == 3)
            let report = try await client.send(.get, "/realtime/v1/slo", as: Team.service)
            let clientDelay = try #require(report.object["client_delay_ms"] as? [String: Any])
            #expect(clientDelay["samples"] as? Int == 3)
            #expect(clientDelay["max"] as? Double == 2500)
            #expect(clientDelay["status"] as? String == "breached")
            #expect(report.object["status"] as? String == "breached")

            let tooMany = "[" + Array(repeating: "1", count: SLOController.maxSamples + 1).joined(separator: ",") + "]"
            let refused: [(String, HTTPResponse.Status, String)] = [
                (#"{"samples_ms":[]}"#, .unprocessableContent, "invalid_value"),
                (#"{"samples_ms":\#(tooMany)}"#, .unprocessableContent, "invalid_value"),
                (#"{"samples_ms":[-1]}"#, .unprocessableContent, "invalid_value"),
                (#"{"samples_ms":[3600001]}"#, .unprocessableContent, "invalid_value"),
                (#"{"samples_ms":["12"]}"#, .unprocessableContent, "invalid_value"),
                (#"{"samples_ms":12}"#, .unprocessableContent, "invalid_value"),
                (#"{"samples":[12]}"#, .unprocessableContent, "unknown_field"),
                (#"{}"#, .unprocessableContent, "missing_field"),
                (#"[12]"#, .badRequest, "invalid_json"),
                (#"{"samples_ms":[12"#, .badRequest, "invalid_json"),
            ]
            for (body, status, code) in refused {
                let reply = try await client.send(.post, "/realtime/v1/slo/client-delay", as: .user(team.editor), json: body)
                #expect(reply.status == status, "\(body): \(reply.text)")
                #expect(reply.errorCode == code, "\(body): \(reply.text)")
            }
            let anonymous = try await client.send(.post, "/realtime/v1/slo/client-delay", as: nil, json: #"{"samples_ms":[1]}"#)
            #expect(anonymous.status == .unauthorized)
            let anonymousReport = try await client.send(.get, "/realtime/v1/slo", as: nil)
            #expect(anonymousReport.status == .unauthorized)

            // The burst is spent: the next report of the same user waits.
            var limited: TestServer.Client.Reply?
            for _ in 0..<(SLOController.reportBurst + 1) {
                let reply = try await client.send(.post, "/realtime/v1/slo/client-delay", as: .user(team.admin), json: #"{"samples_ms":[1]}"#)
                if reply.status == .tooManyRequests { limited = reply }
            }
            let refusal = try #require(limited, "a report beyond the burst should be refused")
            #expect(refusal.errorCode == "rate_limited")
            #expect(Int(refusal.headers[.retryAfter] ?? "") ?? 0 >= 1)
            let after = try await client.send(.get, "/realtime/v1/slo", as: Team.service)
            #expect((after.object["client_delay_ms"] as? [String: Any])?["samples"] as? Int == 3 + SLOController.reportBurst)
        }
    }
}
