import ArgumentParser
import Foundation
import Logging
import NIOPosix
import PostgresNIO

/// `realtime-bench floor`: the bare PostgreSQL commit-to-LISTEN delay, the least any database-fed feed can do here.
///
/// One connection LISTENs; another commits `SELECT pg_notify(…)` statements at the given rate, each carrying
/// `clock_timestamp()` in microseconds. The delay is from that stamp (inside the committing statement) to the
/// notification's arrival at the listener: commit, WAL flush and NOTIFY delivery.
struct FloorScenario: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "floor",
        abstract: "Measure the bare PostgreSQL commit-to-LISTEN delay in the same run."
    )

    @Option(help: "A name for the report.")
    var name = "floor"

    @Option(help: "PostgreSQL host (loopback only).")
    var host = "127.0.0.1"

    @Option(help: "PostgreSQL port.")
    var port = 5432

    @Option(help: "User.")
    var user = "postgres"

    @Option(help: "File holding the password (the embedded server's <data-dir>/postgres-password).")
    var passwordFile: String?

    @Option(help: "Database.")
    var database = "realtime"

    @Option(help: "Notifications per second.")
    var rate: Double = 500

    @Option(help: "Seconds of notifying.")
    var duration: Double = 10

    @Option(help: "Pid of PostgreSQL's postmaster, for its CPU.")
    var databasePid: Int32?

    @Option(help: "Where to write the JSON report.")
    var jsonOut: String?

    func run() async throws {
        guard host == "localhost" || host.hasPrefix("127.") || host == "::1" else {
            throw BenchError("The load tool sends traffic to loopback only; \(host) is not a loopback address.")
        }
        let password = try passwordFile.map { try String(contentsOfFile: $0, encoding: .utf8).trimmingCharacters(in: .whitespacesAndNewlines) }
        let configuration = PostgresConnection.Configuration(
            host: host,
            port: port,
            username: user,
            password: password,
            database: database,
            tls: .disable
        )
        var quietLogger = Logger(label: "realtime-bench.floor")
        quietLogger.logLevel = .warning
        let logger = quietLogger
        let started = timestampNow()
        let listener = try await PostgresConnection.connect(configuration: configuration, id: 1, logger: logger)
        let notifier = try await PostgresConnection.connect(configuration: configuration, id: 2, logger: logger)
        let latencies = Shared(LatencyRecorder())
        let received = Counter()
        let sent = Counter()
        let notifyRate = rate
        let notifyDuration = duration
        let ready = AsyncStream<Void>.makeStream()
        let expectedTotal = Int(rate * duration)
        let databaseWindow = ResourceWindow(databasePid.map { ProcessProbe(pid: $0, includesChildren: true) })
        let windowStart = ContinuousClock.now
        try await withThrowingTaskGroup(of: Void.self) { group in
            group.addTask {
                try await listener.listen(on: "realtime_bench_floor") { notifications in
                    ready.continuation.yield()
                    for try await notification in notifications {
                        let now = WallClock.microseconds()
                        if let stamp = Int64(notification.payload) { latencies.withLock { $0.record(microseconds: now - stamp) } }
                        if received.add() >= expectedTotal { return }
                    }
                }
            }
            for await _ in ready.stream { break }
            group.addTask {
                await PacedLoop(rate: notifyRate, duration: .milliseconds(Int64(notifyDuration * 1000)), maxInFlight: 16).run { _ in
                    _ = try? await notifier.query(
                        "SELECT pg_notify('realtime_bench_floor', (extract(epoch FROM clock_timestamp()) * 1000000)::bigint::text)",
                        logger: logger
                    )
                    sent.add()
                }
                // Whatever was not received within a few seconds after the last statement is not coming.
                try await Task.sleep(for: .seconds(3))
                throw CancellationError()
            }
            do {
                _ = try await group.next()
                group.cancelAll()
            } catch is CancellationError {
                group.cancelAll()
            }
        }
        try await listener.close()
        try await notifier.close()
        let windowSeconds = (ContinuousClock.now - windowStart).seconds
        let summary = LatencySummary(latencies.value.histogram)
        let report = ScenarioReport(
            mode: "floor",
            name: name,
            settings: .init(
                subscribers: 1,
                channels: 1,
                branches: 0,
                writesPerSecond: rate,
                durationSeconds: duration,
                negativeControlShare: 0,
                mix: nil,
                payloadBytes: nil,
                toolThreads: 1
            ),
            connect: nil,
            memory: nil,
            cpu: .init(windowSeconds: windowSeconds, serverSeconds: nil, toolSeconds: nil, databaseSeconds: databaseWindow.cpuSeconds()),
            writes: .init(
                attempted: sent.value,
                acknowledged: sent.value,
                failed: 0,
                perSecond: Double(sent.value) / duration,
                failureStatuses: [:]
            ),
            feed: nil,
            delivery: nil,
            originToReceipt: summary,
            acknowledgementToReceipt: nil,
            receivedBeforeAcknowledgement: nil,
            deliveriesPerSecond: Double(received.value) / duration,
            startedAt: started,
            notes: ["\(received.value) of \(sent.value) notifications received"]
        )
        print(report.table)
        if let jsonOut { try report.write(to: jsonOut) }
    }
}
