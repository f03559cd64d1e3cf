import ArgumentParser
import AsyncHTTPClient
import Foundation
import NIOCore
import NIOHTTP1
import NIOPosix
import Synchronization

/// `realtime-bench realtime`: subscribers on plans of the realtime server, writes through REST, every delivery checked.
struct RealtimeScenario: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "realtime",
        abstract: "Load the realtime server: SSE subscribers on plans, task writes through REST, every delivery checked."
    )

    @OptionGroup var options: LoadOptions

    @Option(help: "Branches the plans are spread over (at least 2 for the negative controls).")
    var branches = 10

    @Option(help: "Share of subscribers that also ask for a branch they may not see (must be refused with 404).")
    var negativeShare = 0.05

    @Option(help: "Write mix in percent, e.g. insert=30,update=30,status_change=25,delete=15.")
    var mix = "insert=30,update=30,status_change=25,delete=15"

    @Option(help: "Tasks made in every plan before the measurement.")
    var tasksPerPlan = 5

    @Option(help: "File with the server's JWT secret (the embedded server's <data-dir>/jwt-secret); REALTIME_JWT_SECRET wins.")
    var jwtSecretFile: String?

    @Option(help: "Concurrent REST requests while creating branches, users, plans and tasks.")
    var setupConcurrency = 32

    func run() async throws {
        let (host, port) = try options.loopbackEndpoint()
        let mix = try WriteMix(parsing: mix)
        guard branches >= 2 || negativeShare == 0 else { throw BenchError("Negative controls need at least 2 branches.") }
        let minter = try TokenMinter.load(secretFile: jwtSecretFile)
        let log = options.log
        let group = options.makeGroup()
        let http = RestClient.makeHTTPClient(group: group, connections: max(options.maxInFlight, setupConcurrency))
        let lifetime = Int(options.duration) + 3600
        let service = RestClient(
            http: http, baseURL: options.url, bearerToken: minter.token(subject: "service", role: .serviceRole, lifetime: lifetime))
        let started = timestampNow()
        try await ScenarioReport.publish(to: options.jsonOut, closing: http, group) {
            try await measure(host: host, port: port, mix: mix, minter: minter, service: service, group: group, started: started, log: log)
        }
    }

    private func measure(
        host: String,
        port: Int,
        mix: WriteMix,
        minter: TokenMinter,
        service: RestClient,
        group: MultiThreadedEventLoopGroup,
        started: String,
        log: @escaping @Sendable (String) -> Void
    ) async throws -> ScenarioReport {
        let shape = Fixture.Shape(
            branches: branches,
            plans: options.channels,
            users: options.subscribers,
            tasksPerPlan: tasksPerPlan,
            concurrency: setupConcurrency
        )
        let fixture = try await Fixture.create(shape, rest: service, log: log)
        log("setup done; the measurement starts after event \(fixture.startCursor)")

        let lifetime = Int(options.duration) + 3600
        var targets: [SubscriberTarget] = []
        let negativeEvery = negativeShare > 0 ? max(1, Int((1 / negativeShare).rounded())) : Int.max
        for index in 0..<options.subscribers {
            let plan = index % fixture.plans.count
            let token = minter.token(subject: fixture.users[index].lowercased, role: .authenticated, lifetime: lifetime)
            targets.append(
                SubscriberTarget(index: index, channel: plan, path: "/realtime/v1/plan/\(fixture.plans[plan].lowercased)", bearerToken: token))
            if index % negativeEvery == 0 {
                let foreign = fixture.branches[(fixture.branchIndex(ofPlan: plan) + 1) % fixture.branches.count]
                targets.append(
                    SubscriberTarget(
                        index: index,
                        channel: -1,
                        path: "/realtime/v1/branch/\(foreign.lowercased)",
                        isNegativeControl: true,
                        bearerToken: token
                    )
                )
            }
        }

        let probes = ResourceProbes(options: options, serverHasChildren: false)
        let counters = LiveCounters()
        let fleet = SubscriberFleet(
            connector: SubscriberConnector(group: group, host: host, port: port, source: .eventID, counters: counters, sink: OutcomeSink())
        )
        try await Task.sleep(for: .seconds(1))  // the setup's requests settle before the memory is read
        let connect = try await ConnectPhase.run(
            fleet, targets, counters: counters, probes: probes, concurrency: options.connectConcurrency, log: log)

        let window = probes.openWindow()
        let driver = WriteDriver(
            rest: service,
            plans: fixture.plans,
            book: TaskBook(seeded: fixture.seededTasks),
            mix: mix,
            counters: counters,
            titlePadding: ""
        )
        let duration = Duration.milliseconds(Int64(options.duration * 1000))
        let rate = options.rate
        let maxInFlight = options.maxInFlight
        let writeStart = ContinuousClock.now
        let writes = await ProgressLine(counters: counters, label: "writes", log: log).run(total: duration) {
            await driver.run(rate: rate, duration: duration, maxInFlight: maxInFlight)
        }
        let writeSeconds = (ContinuousClock.now - writeStart).seconds
        log("writes done; waiting for the feed to carry them all")
        let feedEnd = try await fixture.awaitFeed(rest: service, timeout: .milliseconds(Int64(options.drainSeconds * 1000)))
        let catchUpSeconds = (ContinuousClock.now - writeStart).seconds - writeSeconds
        log(
            feedEnd == nil
                ? "the feed did not catch up within \(options.drainSeconds) s"
                : String(format: "the feed caught up %.1f s after the last write", catchUpSeconds))
        await fleet.waitForQuiet(limit: .seconds(30))
        let serverLevel = await Self.serverServiceLevel(service)
        let end = WindowEnd(window, probes: probes)
        let outcomes = await fleet.closeAll()

        log("reading the feed as the service role to check deliveries")
        let events = try await FeedReader(rest: service).events(
            channels: fixture.branches.map { "branch:\($0.lowercased)" },
            after: fixture.startCursor,
            tables: "task,status_history"
        )
        var planIndex: [String: Int] = [:]
        for (index, plan) in fixture.plans.enumerated() { planIndex[plan.lowercased] = index }
        let attribution = FeedAttribution(events: events, planIndex: planIndex, writes: writes)
        let result = Verifier(expected: attribution.expected, startSequence: fixture.startCursor, failedToConnect: fleet.failedToConnect)
            .verify(outcomes)

        var failureStatuses: [String: Int] = [:]
        for write in writes where !write.succeeded { failureStatuses[write.status.map(String.init) ?? "no answer", default: 0] += 1 }
        let acknowledged = writes.filter(\.succeeded).count
        var notes: [String] = []
        if feedEnd == nil {
            notes.append(
                "the feed had not carried every acknowledged write \(options.drainSeconds) s after the last one: see writes missing from feed")
        } else {
            notes.append(String(format: "the feed carried the last write %.1f s after writing ended", catchUpSeconds))
        }
        if fleet.failedToConnect > 0 { notes.append("connect failures: \(fleet.failureReasons)") }
        if let serverLevel { notes.append(serverLevel) }
        return ScenarioReport(
            mode: "realtime",
            name: options.name,
            settings: .init(
                subscribers: options.subscribers,
                channels: options.channels,
                branches: branches,
                writesPerSecond: options.rate,
                durationSeconds: options.duration,
                negativeControlShare: negativeShare,
                mix: mix,
                payloadBytes: nil,
                toolThreads: options.threads
            ),
            connect: connect.report,
            memory: end.memory(connect),
            cpu: end.cpu(connect, delivered: result.check.delivered),
            writes: .init(
                attempted: writes.count,
                acknowledged: acknowledged,
                failed: writes.count - acknowledged,
                perSecond: Double(acknowledged) / writeSeconds,
                failureStatuses: failureStatuses
            ),
            feed: .init(
                events: events.count,
                writesInFeed: attribution.writesInFeed,
                writesMissingFromFeed: attribution.writesMissingFromFeed,
                unmatchedEvents: attribution.unmatchedEvents,
                eventsPerWriteKind: attribution.eventsPerWriteKind
            ),
            delivery: result.check,
            originToReceipt: result.originToReceipt,
            acknowledgementToReceipt: result.acknowledgementToReceipt,
            receivedBeforeAcknowledgement: result.receivedBeforeAcknowledgement,
            deliveriesPerSecond: result.check.deliveriesPerSecond,
            startedAt: started,
            notes: notes
        )
    }

    /// The server's own measurement (`GET /realtime/v1/slo`: commit → frame written, over its 10-minute window), as a note.
    static func serverServiceLevel(_ rest: RestClient) async -> String? {
        guard let answer = try? await rest.expectSuccess(.GET, "/realtime/v1/slo"),
            let object = try? JSONSerialization.jsonObject(with: Data(answer.text.utf8)) as? [String: Any],
            let delay = object["delay_ms"] as? [String: Any], let disconnects = object["disconnects"] as? [String: Any]
        else { return nil }
        func number(_ value: Any?) -> String { (value as? Double).map { String(format: "%.0f", $0) } ?? "–" }
        return "the server's own SLO (commit → frame written, last 10 min): p50 \(number(delay["p50"])), p95 \(number(delay["p95"])), "
            + "p99 \(number(delay["p99"])) ms over \(delay["samples"] as? Int ?? 0) frames, \(delay["status"] as? String ?? "?"); "
            + "disconnects \(disconnects["abnormal"] as? Int ?? 0) abnormal of \(disconnects["streams"] as? Int ?? 0) streams"
    }
}
