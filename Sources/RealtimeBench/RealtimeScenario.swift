import ArgumentParser
import AsyncHTTPClient
import Foundation
import NIOCore
import NIOHTTP1
import NIOPosix
import Synchronization

/// `realtime-bench realtime`: subscribers of every role on plans and branches of the realtime server, task writes
/// through REST as editors, and every frame checked against what the acknowledged writes must have caused.
struct RealtimeScenario: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "realtime",
        abstract: "Load the realtime server: SSE subscribers on plans and branches, task writes through REST as editors, every frame checked."
    )

    @OptionGroup var options: LoadOptions
    @OptionGroup var writing: WriteOptions

    @Option(help: "Branches the plans are spread over (at least 2 for the negative controls).")
    var branches = 10

    @Option(help: "Share of subscribers that also ask for a branch they may not see (must be refused with 404).")
    var negativeShare = 0.05

    @Option(help: "Share of subscribers that watch their plan's whole branch instead of the plan.")
    var branchShare = 0.01

    @Option(help: "Share of subscribers that are members of a branch with no writes only, and watch it (they must receive nothing).")
    var outsiderShare = 0.02

    @Option(help: "Roles of the subscribing users in percent, e.g. viewer=80,editor=15,admin=5.")
    var roles = "viewer=80,editor=15,admin=5"

    @Option(help: "Concurrent REST requests while creating branches, users, plans and tasks.")
    var setupConcurrency = 32

    @Option(help: "Event-loop threads of the setup's HTTP client; the writes run on one of them (the subscribers have --threads of their own).")
    var writerThreads = 1

    func run() async throws {
        let (host, port) = try options.loopbackEndpoint()
        let mix = try WriteMix(parsing: writing.mix)
        let roles = try RoleMix(parsing: roles)
        guard branches >= 2 || negativeShare == 0 else { throw BenchError("Negative controls need at least 2 branches.") }
        let minter = try TokenMinter.load(secretFile: writing.jwtSecretFile)
        let receivers = options.makeGroup()
        let writers = MultiThreadedEventLoopGroup(numberOfThreads: max(1, writerThreads))
        let http = RestClient.makeHTTPClient(group: writers, connections: setupConcurrency)
        let service = RestClient(
            http: http, baseURL: options.url,
            bearerToken: minter.token(subject: "service", role: .serviceRole, lifetime: Int(options.duration) + 3600))
        let started = timestampNow()
        try await ScenarioReport.publish(to: options.jsonOut, closing: http, [receivers, writers]) {
            try await measure(
                host: host, port: port, mix: mix, roles: roles, minter: minter, service: service, receivers: receivers, writers: writers,
                started: started)
        }
    }

    private func measure(
        host: String,
        port: Int,
        mix: WriteMix,
        roles: RoleMix,
        minter: TokenMinter,
        service: RestClient,
        receivers: MultiThreadedEventLoopGroup,
        writers: MultiThreadedEventLoopGroup,
        started: String
    ) async throws -> ScenarioReport {
        let log = options.log
        let ids = TaskIDs()
        let subscribers = SubscriberMix(
            plans: options.channels, branches: branches, roles: roles, branchShare: branchShare, outsiderShare: outsiderShare,
            negativeShare: negativeShare
        ).subscribers(options.subscribers)
        let shape = Fixture.Shape(
            branches: branches,
            plans: options.channels,
            members: subscribers.map(\.member),
            editorsPerBranch: writing.editorsPerBranch(rate: options.rate, branches: branches),
            tasksPerPlan: writing.tasksPerPlan,
            concurrency: setupConcurrency
        )
        let fixture = try await Fixture.create(shape, ids: ids, rest: service, log: log)
        log("setup done; the measurement starts after event \(fixture.startCursor)")
        let targets = Self.targets(subscribers, fixture: fixture, minter: minter, lifetime: Int(options.duration) + 3600)

        let probes = ResourceProbes(options: options, serverHasChildren: false)
        let counters = LiveCounters()
        let connector = SubscriberConnector(
            group: receivers, host: host, port: port, source: .eventID, factsReader: ChangeFactsReader(taskPrefix: ids.prefix),
            counters: counters, sink: OutcomeSink())
        let fleet = SubscriberFleet(connector: connector)
        try await Task.sleep(for: .seconds(1))  // the setup's requests settle before the memory is read
        let connect = try await ConnectPhase.run(
            fleet, targets, counters: counters, probes: probes, concurrency: options.connectConcurrency, log: log)

        let tool = ToolCPU(receivers: receivers)
        let window = await MeasurementWindow.open(probes, tool: tool, counters: counters)
        let editorTokens = fixture.editors.map { editors in
            editors.map { minter.token(subject: $0.lowercased, role: .authenticated, lifetime: Int(options.duration) + 3600) }
        }
        let driver = WriteDriver(
            loop: writers.next(), host: host, port: port, plans: fixture.plans, ids: ids, editorTokens: editorTokens,
            book: TaskBook(seeded: fixture.seededTasks), mix: mix,
            counters: counters, titlePadding: "")
        let duration = Duration.milliseconds(Int64(options.duration * 1000))
        let (rate, maxInFlight) = (options.rate, options.maxInFlight)
        let writeStart = ContinuousClock.now
        let writes = try await ProgressLine(counters: counters, label: "writes", log: log).run(total: duration) {
            try await driver.run(rate: rate, duration: duration, maxInFlight: maxInFlight, warm: setupConcurrency)
        }
        let writeSeconds = (ContinuousClock.now - writeStart).seconds
        let ledger = WriteLedger(attempts: writes, seeded: fixture.seededTasks, plans: fixture.plans.count, branches: branches)
        log("writes done: \(ledger.writes.count) acknowledged, \(ledger.total) events expected on their channels; waiting for the feed")
        let feedEnd = try await fixture.awaitFeed(rest: service, timeout: .milliseconds(Int64(options.drainSeconds * 1000)))
        let catchUpSeconds = (ContinuousClock.now - writeStart).seconds - writeSeconds
        log(
            feedEnd == nil
                ? "the feed did not catch up within \(options.drainSeconds) s"
                : String(format: "the feed caught up %.1f s after the last write", catchUpSeconds))
        let owed = targets.filter { !$0.isNegativeControl }.reduce(0) { $0 + ($1.scope.map(ledger.expectedCount) ?? 0) }
        await fleet.waitForFrames(window.frames + owed, limit: .seconds(30))
        let serverLevel = await Self.serverServiceLevel(service)
        let end = await WindowEnd(window, probes: probes, tool: tool, counters: counters)
        let outcomes = await fleet.closeAll()

        log("checking every frame against the acknowledged writes; reading the feed back as a cross-check")
        let result = DeliveryMatcher(ledger: ledger, startSequence: fixture.startCursor, failedToConnect: fleet.failedToConnect).verify(outcomes)
        let events = try await FeedReader(rest: service).events(
            channels: fixture.branches.map { "branch:\($0.lowercased)" }, after: fixture.startCursor, tables: "task,status_history")
        let attribution = FeedAttribution(events: events, writes: writes)

        var notes: [String] = []
        if feedEnd == nil {
            notes.append("the feed had not carried every acknowledged write \(options.drainSeconds) s after the last one")
        } else {
            notes.append(String(format: "the feed carried the last write %.1f s after writing ended", catchUpSeconds))
        }
        if fleet.failedToConnect > 0 { notes.append("connect failures: \(fleet.failureReasons)") }
        if let serverLevel { notes.append(serverLevel) }
        return ScenarioReport(
            mode: "realtime",
            name: options.name,
            settings: .init(
                subscribers: options.subscribers, channels: options.channels, branches: branches, writesPerSecond: options.rate,
                durationSeconds: options.duration, negativeControlShare: negativeShare, mix: mix, payloadBytes: nil, toolThreads: options.threads,
                roles: roles, editorsPerBranch: writing.editorsPerBranch(rate: options.rate, branches: branches)),
            connect: connect.report,
            memory: end.memory(connect),
            cpu: end.cpu(connect, delivered: result.check.delivered, writes: ledger.writes.count),
            writes: .summary(
                of: writes, seconds: writeSeconds,
                writtenAs: "editors (\(writing.editorsPerBranch(rate: options.rate, branches: branches)) per branch)"),
            feed: .init(
                events: events.count, writesInFeed: attribution.writesInFeed, writesMissingFromFeed: attribution.writesMissingFromFeed,
                unmatchedEvents: attribution.unmatchedEvents, eventsPerWriteKind: attribution.eventsPerWriteKind),
            delivery: result.check,
            originToReceipt: result.commitToReceipt,
            sendToReceipt: result.sendToReceipt,
            acknowledgementToReceipt: result.acknowledgementToReceipt,
            receivedBeforeAcknowledgement: result.receivedBeforeAcknowledgement,
            deliveriesPerSecond: result.check.deliveriesPerSecond,
            startedAt: started,
            notes: notes
        )
    }

    /// The streams to open: each subscriber's channel as its own user, and its negative control.
    private static func targets(_ subscribers: [SubscriberMix.Subscriber], fixture: Fixture, minter: TokenMinter, lifetime: Int) -> [SubscriberTarget]
    {
        var targets: [SubscriberTarget] = []
        for (index, subscriber) in subscribers.enumerated() {
            let token = minter.token(subject: fixture.users[index].lowercased, role: .authenticated, lifetime: lifetime)
            let path: String
            switch subscriber.scope {
            case .plan(let plan): path = "/realtime/v1/plan/\(fixture.plans[plan].lowercased)"
            case .branch(let branch):
                path = "/realtime/v1/branch/\((branch < fixture.branches.count ? fixture.branches[branch] : fixture.quietBranch).lowercased)"
            }
            targets.append(
                SubscriberTarget(index: index, channel: -1, scope: subscriber.scope, kind: subscriber.kind, path: path, bearerToken: token))
            guard subscriber.hasNegativeControl else { continue }
            let foreign = fixture.branches[(subscriber.member.branch + 1) % fixture.branches.count]
            targets.append(
                SubscriberTarget(
                    index: index, channel: -1, path: "/realtime/v1/branch/\(foreign.lowercased)", isNegativeControl: true, bearerToken: token))
        }
        return targets
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
