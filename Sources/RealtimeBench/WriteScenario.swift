import ArgumentParser
import Foundation
import NIOHTTP1
import NIOPosix

/// `realtime-bench writes` (scenario W): the write path alone. No subscribers; `--writers` editors' loops on keep-alive
/// connections, each sending its next task write when the last one is answered (closed loop), for `--duration`.
/// Reports writes/s, send → answer delays, and server, PostgreSQL and tool CPU per acknowledged write, over the window
/// from the first write until the feed has carried the last one (so the relay's and tailer's work is in it).
struct WriteScenario: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "writes",
        abstract: "Scenario W: task writes through REST as editors, closed loop, no subscribers; writes/s, delay and CPU per write."
    )

    @OptionGroup var options: LoadOptions
    @OptionGroup var writing: WriteOptions

    @Option(help: "Concurrent writers (each one request in flight, on its own keep-alive connection).")
    var writers = 16

    @Option(help: "Branches the plans (--channels) are spread over.")
    var branches = 4

    @Option(help: "Event-loop threads of the setup's HTTP client; the writes run on one of them.")
    var writerThreads = 2

    func run() async throws {
        let (host, port) = try options.loopbackEndpoint()
        let mix = try WriteMix(parsing: writing.mix)
        let minter = try TokenMinter.load(secretFile: writing.jwtSecretFile)
        let group = MultiThreadedEventLoopGroup(numberOfThreads: max(1, writerThreads))
        let http = RestClient.makeHTTPClient(group: group, connections: 32)  // the setup's requests; the writes have their own
        let lifetime = Int(options.duration) + 3600
        let service = RestClient(
            http: http, baseURL: options.url, bearerToken: minter.token(subject: "service", role: .serviceRole, lifetime: lifetime))
        let started = timestampNow()
        try await ScenarioReport.publish(to: options.jsonOut, closing: http, [group]) {
            try await measure(host: host, port: port, mix: mix, minter: minter, service: service, group: group, started: started)
        }
    }

    private func measure(
        host: String,
        port: Int,
        mix: WriteMix,
        minter: TokenMinter,
        service: RestClient,
        group: MultiThreadedEventLoopGroup,
        started: String
    ) async throws -> ScenarioReport {
        let log = options.log
        let ids = TaskIDs()
        let shape = Fixture.Shape(
            branches: branches, plans: options.channels, members: [],
            editorsPerBranch: writing.editorsPerBranch(rate: 5 * 64 * Double(branches), branches: branches), tasksPerPlan: writing.tasksPerPlan,
            concurrency: 32)
        let fixture = try await Fixture.create(shape, ids: ids, rest: service, log: log)
        let lifetime = Int(options.duration) + 3600
        let editorTokens = fixture.editors.map { $0.map { minter.token(subject: $0.lowercased, role: .authenticated, lifetime: lifetime) } }
        let counters = LiveCounters()
        let driver = WriteDriver(
            loop: group.next(), host: host, port: port, plans: fixture.plans, ids: ids, editorTokens: editorTokens,
            book: TaskBook(seeded: fixture.seededTasks), mix: mix, counters: counters, titlePadding: "")
        let probes = ResourceProbes(options: options, serverHasChildren: false)
        let tool = ToolCPU(receivers: nil)
        let window = await MeasurementWindow.open(probes, tool: tool, counters: counters)
        let duration = Duration.milliseconds(Int64(options.duration * 1000))
        let writeStart = ContinuousClock.now
        let writes = try await ProgressLine(counters: counters, label: "writes", log: log).run(total: duration) { [writers] in
            try await driver.runClosedLoop(writers: writers, duration: duration)
        }
        let writeSeconds = (ContinuousClock.now - writeStart).seconds
        let feedEnd = try await fixture.awaitFeed(rest: service, timeout: .milliseconds(Int64(options.drainSeconds * 1000)))
        let catchUp = (ContinuousClock.now - writeStart).seconds - writeSeconds
        let end = await WindowEnd(window, probes: probes, tool: tool, counters: counters)
        let summary = ScenarioReport.Writes.summary(
            of: writes, seconds: writeSeconds,
            writtenAs: "editors (\(writing.editorsPerBranch(rate: 5 * 64 * Double(branches), branches: branches)) per branch)")
        return ScenarioReport(
            mode: "writes",
            name: options.name,
            settings: .init(
                subscribers: 0, channels: options.channels, branches: branches, writesPerSecond: 0, durationSeconds: options.duration,
                negativeControlShare: 0, mix: mix, payloadBytes: nil, toolThreads: writerThreads,
                editorsPerBranch: writing.editorsPerBranch(rate: 5 * 64 * Double(branches), branches: branches),
                writers: writers),
            connect: nil,
            memory: end.memory(nil),
            cpu: end.cpu(nil, delivered: 0, writes: summary.acknowledged),
            writes: summary,
            feed: nil,
            delivery: nil,
            originToReceipt: summary.latency ?? LatencySummary(LatencyRecorder().histogram),
            acknowledgementToReceipt: nil,
            receivedBeforeAcknowledgement: nil,
            deliveriesPerSecond: nil,
            startedAt: started,
            notes: [
                feedEnd == nil
                    ? "the feed had not carried the last write \(options.drainSeconds) s after writing ended"
                    : String(format: "the feed carried the last write %.1f s after writing ended (inside the CPU window)", catchUp)
            ]
        )
    }
}
