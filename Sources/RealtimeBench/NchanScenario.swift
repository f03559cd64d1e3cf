import ArgumentParser
import AsyncHTTPClient
import Foundation
import NIOCore
import NIOHTTP1
import NIOPosix
import Synchronization

/// `realtime-bench nchan`: the same subscribers and publish rate against nginx + nchan, the peer for raw fan-out.
///
/// Subscribers use nchan's EventSource location (`/sub/<channel>`); the publisher POSTs to `/pub/<channel>` a payload
/// of the chosen size that starts with `{"seq":<n>`, by which the client tells messages apart.
struct NchanScenario: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "nchan",
        abstract: "Load nginx + nchan with the same subscriber and publisher pattern, measured by the same client code."
    )

    @OptionGroup var options: LoadOptions

    @Option(help: "Bytes of each published message (use the realtime run's average frame size for a like-for-like peer).")
    var payloadBytes = 600

    func run() async throws {
        let (host, port) = try options.loopbackEndpoint()
        let log = options.log
        let group = options.makeGroup()
        // The publishes go out like the realtime scenario's writes: from one event loop of their own.
        let publishers = MultiThreadedEventLoopGroup(numberOfThreads: 1)
        let started = timestampNow()
        try await ScenarioReport.publish(to: options.jsonOut, closing: nil, [group, publishers]) {
            try await measure(host: host, port: port, publishers: publishers, group: group, started: started, log: log)
        }
    }

    private func measure(
        host: String,
        port: Int,
        publishers: MultiThreadedEventLoopGroup,
        group: MultiThreadedEventLoopGroup,
        started: String,
        log: @escaping @Sendable (String) -> Void
    ) async throws -> ScenarioReport {
        let run = String(UUID().uuidString.prefix(8)).lowercased()
        let channelNames = (0..<options.channels).map { "b\(run)c\($0)" }
        let targets = (0..<options.subscribers).map { index in
            SubscriberTarget(
                index: index, channel: index % channelNames.count, path: "/sub/\(channelNames[index % channelNames.count])", bearerToken: nil)
        }
        let probes = ResourceProbes(options: options, serverHasChildren: true)
        let counters = LiveCounters()
        let fleet = SubscriberFleet(
            connector: SubscriberConnector(group: group, host: host, port: port, source: .dataPrefix, counters: counters, sink: OutcomeSink())
        )
        let connect = try await ConnectPhase.run(
            fleet, targets, counters: counters, probes: probes, concurrency: options.connectConcurrency, log: log)

        let tool = ToolCPU(receivers: group)
        let window = await MeasurementWindow.open(probes, tool: tool, counters: counters)
        let published = Shared<[ExpectedEvent]>([])
        let failureStatuses = Shared<[String: Int]>([:])
        let attempted = Counter()
        let rate = options.rate
        let maxInFlight = options.maxInFlight
        let duration = Duration.milliseconds(Int64(options.duration * 1000))
        let padding = String(repeating: "x", count: max(0, payloadBytes - 40))
        let publishStart = ContinuousClock.now
        let publishes = LoopRequestRun(
            loop: publishers.next(), host: host, port: port, pace: .rate(rate, maxInFlight: maxInFlight), duration: duration,
            warm: min(32, maxInFlight))
        try await ProgressLine(counters: counters, label: "publish", log: log).run(total: duration) {
            try await publishes.run { number in
                attempted.add()
                let channel = number % channelNames.count
                let sequence = Int64(number + 1)
                let sent = WallClock.microseconds()
                let body = #"{"seq":\#(sequence),"sent_us":\#(sent),"pad":"\#(padding)"}"#
                let request = LoopRequest(method: .POST, path: "/pub/\(channelNames[channel])", json: body)
                return (
                    request,
                    { status in
                        let acknowledged = WallClock.microseconds()
                        if let status, (200..<300).contains(status) {
                            counters.writesAcknowledged.add(1, ordering: .relaxed)
                            let event = ExpectedEvent(
                                sequence: sequence, channel: channel, originMicroseconds: sent, acknowledgedMicroseconds: acknowledged)
                            published.withLock { $0.append(event) }
                        } else {
                            counters.writesFailed.add(1, ordering: .relaxed)
                            failureStatuses.withLock { $0[status.map(String.init) ?? "no answer", default: 0] += 1 }
                        }
                    }
                )
            }
        }
        let publishSeconds = (ContinuousClock.now - publishStart).seconds
        log("publishing done; waiting for the last frames")
        await fleet.waitForQuiet(quiet: .seconds(3), limit: .milliseconds(Int64(options.drainSeconds * 1000)))
        let end = await WindowEnd(window, probes: probes, tool: tool, counters: counters)
        let outcomes = await fleet.closeAll()

        let expected = published.value
        let result = Verifier(expected: expected, startSequence: 0, failedToConnect: fleet.failedToConnect).verify(outcomes)
        var notes: [String] = []
        if fleet.failedToConnect > 0 { notes.append("connect failures: \(fleet.failureReasons)") }
        let attempts = attempted.value
        return ScenarioReport(
            mode: "nchan",
            name: options.name,
            settings: .init(
                subscribers: options.subscribers,
                channels: options.channels,
                branches: 0,
                writesPerSecond: options.rate,
                durationSeconds: options.duration,
                negativeControlShare: 0,
                mix: nil,
                payloadBytes: payloadBytes,
                toolThreads: options.threads
            ),
            connect: connect.report,
            memory: end.memory(connect),
            cpu: end.cpu(connect, delivered: result.check.delivered, writes: expected.count),
            writes: .init(
                attempted: attempts,
                acknowledged: expected.count,
                failed: attempts - expected.count,
                perSecond: Double(expected.count) / publishSeconds,
                failureStatuses: failureStatuses.value,
                writtenAs: "publisher"
            ),
            feed: nil,
            delivery: result.check,
            originToReceipt: result.originToReceipt,
            acknowledgementToReceipt: result.acknowledgementToReceipt,
            receivedBeforeAcknowledgement: result.receivedBeforeAcknowledgement,
            deliveriesPerSecond: result.check.deliveriesPerSecond,
            startedAt: started,
            notes: notes
        )
    }
}
