import Foundation
import HTTPTypes
import Hummingbird
import Logging
import PostgresNIO
import Testing

@testable import EmbeddedCluster
@testable import Realtime

#if canImport(Glibc)
    import Glibc
#elseif canImport(Musl)
    import Musl
#elseif canImport(Darwin)
    import Darwin
#endif

/// Faults of whole processes: PostgreSQL restarted under a running server, the server killed with SIGKILL and started
/// again, and a thousand clients dropping and resuming at once. In each, every change committed reaches every
/// subscriber exactly once and in commit order.
@Suite(.timeLimit(.minutes(5)))
struct ProcessFaultTests {
    /// PostgreSQL restarts (a fast shutdown, or a crash: `pg_ctl -m immediate`, then start) while a writer writes through
    /// REST and a subscriber streams. The server's pool, relay, walsender and listeners all lose their sessions; the
    /// writer meets `503 database_unavailable` and retries with the same `Idempotency-Key`; every acknowledged write
    /// arrives once, in order — after a crash too, where the relay's batches must have been committed durably before it
    /// confirmed the slot.
    @Test(arguments: ["fast", "immediate"])
    func aPostgreSQLRestartLosesAndRepeatsNothing(mode: String) async throws {
        // A cluster of its own: restarting the shared one would cut every other test off.
        let cluster = EmbeddedPostgres(directory: TestCluster.makeScratchDirectory(), logger: TestCluster.logger)
        _ = try await cluster.start()
        defer { cluster.stopImmediatelyBlocking() }
        let database = try await cluster.createDatabase(named: "restart")
        let server = try await TestServer.make(on: database, changeFeed: true)
        try await server.testLive { client in
            try await ChangeFeedFaultTests.waitForRelay(server)
            let team = try await Team.make(client)
            let plan = try await team.makePlan(client)
            let stream = try await ChangeFeedTests.open(client, "/realtime/v1/plan/\(plan)?table=task", as: .user(team.viewer))

            let acknowledged = Locked<[String]>([])
            let refusals = Locked(0)
            let stop = Flag()
            let writer = Task {
                var index = 0
                while !stop.isSet {
                    let id = UUID()
                    let body =
                        #"{"id":"\#(id)","plan_id":"\#(plan)","title":"t\#(index)","starts_at":"2026-11-30T09:00:00Z","ends_at":"2026-11-30T10:00:00Z"}"#
                    let reply = try await Self.retrying(refusals) {
                        try await DeliveryCheckerTests.write(client, .post, "/rest/v1/tasks", as: .user(team.editor), json: body)
                    }
                    #expect(reply.status == .created, "\(reply.text)")
                    acknowledged.update { $0.append(id.uuidString.lowercased()) }
                    index += 1
                }
            }
            try await ChangeFeedFaultTests.waitUntil("10 writes before the restart", timeout: .seconds(60)) { acknowledged.value.count >= 10 }
            let startedBefore = try await Self.postmasterStart(server)
            try await cluster.restart(mode: mode)
            #expect(try await Self.postmasterStart(server) > startedBefore, "PostgreSQL restarted")
            let afterRestart = acknowledged.value.count
            try await ChangeFeedFaultTests.waitUntil("10 writes after the restart", timeout: .seconds(90)) {
                acknowledged.value.count >= afterRestart + 10
            }
            stop.set()
            try await writer.value
            let expected = acknowledged.value

            try await stream.waitFor("all \(expected.count) tasks on the stream", timeout: .seconds(90)) {
                ChangeFeedFaultTests.taskInserts($0).count >= expected.count
            }
            try await Task.sleep(for: .seconds(1))  // room for a late duplicate
            #expect(ChangeFeedFaultTests.taskInserts(stream.frames) == expected)
            ChangeFeedFaultTests.expectIncreasingIDs(stream.changes)
            #expect(!stream.isFinished, "the stream stays open through the restart: only the server's database sessions end")
            stream.close()
        }
    }

    /// The server process is killed with SIGKILL — no shutdown at all — while changes are committed, and more are committed
    /// while it is down. Started again, it relays what it had not confirmed; the subscriber resumes with its
    /// `Last-Event-ID` and has every change once, in commit order.
    @Test func aServerKilledWithSIGKILLAndStartedAgainLosesNothing() async throws {
        // The in-process server only sets up the team and mints tokens; the relay is the real binary's.
        let server = try await TestServer.make(changeFeed: true) { $0.runsRelay = false }
        let port = try FreePort.pick()
        let process = Locked(try Self.startBinary(server, port: port))
        defer { if process.value.isRunning { kill(process.value.processIdentifier, SIGKILL) } }
        try await server.test { client in
            // The binary creates the slot before it serves, and only changes after that reach the log: set up after.
            let base = "http://127.0.0.1:\(port)"
            try await NodeLifecycleTests.waitUntilServing(base)
            try await ChangeFeedFaultTests.waitForRelay(server)
            let team = try await Team.make(client)
            let plan = try await team.makePlan(client)
            let token = try await client.token(for: .user(team.viewer))
            let first = try await SSEClient.open("\(base)/realtime/v1/plan/\(plan)?table=task", headers: [("Authorization", "Bearer \(token)")])
            try #require(first.status == 200)

            let written = try await server.withOwnerConnection { connection in
                var written: [String] = []
                for index in 0..<30 {
                    if index == 10 {
                        try await first.waitFor("the first 10 tasks", timeout: .seconds(30)) { ChangeFeedFaultTests.taskInserts($0).count >= 10 }
                        kill(process.value.processIdentifier, SIGKILL)
                        process.value.waitUntilExit()
                        #expect(process.value.terminationReason == .uncaughtSignal && process.value.terminationStatus == SIGKILL)
                    }
                    if index == 20 {
                        let restarted = try Self.startBinary(server, port: port)
                        process.update { $0 = restarted }
                        try await NodeLifecycleTests.waitUntilServing(base)
                    }
                    let id = UUID()
                    try await connection.query(ChangeFeedFaultTests.insertTask(id, team: team, plan: plan, title: "t\(index)"), logger: server.logger)
                    written.append(id.uuidString.lowercased())
                }
                return written
            }
            try await first.waitUntilFinished(timeout: .seconds(10))
            let before = first.changes
            let cursor = try #require(before.last?.id)
            let resumed = try await SSEClient.open(
                "\(base)/realtime/v1/plan/\(plan)?table=task",
                headers: [("Authorization", "Bearer \(token)"), ("Last-Event-ID", cursor)]
            )
            try #require(resumed.status == 200)
            try await resumed.waitFor("the rest of the 30 tasks", timeout: .seconds(60)) {
                ChangeFeedFaultTests.taskInserts(before + $0).count >= written.count
            }
            try await Task.sleep(for: .seconds(1))
            let all = before + resumed.changes
            #expect(ChangeFeedFaultTests.taskInserts(all) == written)
            ChangeFeedFaultTests.expectIncreasingIDs(all)
            try await ChangeFeedFaultTests.expectLogMatchesTables(server, taskInserts: written.count)
            resumed.close()
        }
    }

    /// A thousand streams drop at once and all resume at once with their `Last-Event-ID`, while changes keep being
    /// committed: each has every change once, in order.
    @Test func aThousandClientsDroppingAndResumingAtOnceLoseNothing() async throws {
        Self.raiseOpenFileLimit()
        let count = ProcessInfo.processInfo.environment["REALTIME_STORM_CLIENTS"].flatMap(Int.init) ?? 1000
        let server = try await TestServer.make(changeFeed: true) {
            $0.subscriberBufferLimit = 4096
            $0.maxConnectionsPerAddress = 0  // every client is on 127.0.0.1
        }
        try await server.testLive { client in
            try await ChangeFeedFaultTests.waitForRelay(server)
            let team = try await Team.make(client)
            let plan = try await team.makePlan(client)
            let token = try await client.token(for: .user(team.viewer))
            let url = "\(client.baseURL)/realtime/v1/plan/\(plan)?table=task"
            let headers = [("Authorization", "Bearer \(token)")]
            let streams = try await Self.openAll(count, url: url) { _ in headers }

            var written: [String] = []
            for index in 0..<5 { written.append(try await team.makeTask(client, plan: plan, title: "a\(index)").uuidString.lowercased()) }
            for stream in streams {
                try await stream.waitFor("the first 5 tasks", timeout: .seconds(60)) { ChangeFeedFaultTests.taskInserts($0).count >= 5 }
            }
            // All drop at once; writes go on while they come back, all at once.
            for stream in streams { stream.close() }
            let cursors = try streams.map { try #require($0.changes.last?.id) }
            let writer = Task {
                var ids: [String] = []
                for index in 0..<5 { ids.append(try await team.makeTask(client, plan: plan, title: "b\(index)").uuidString.lowercased()) }
                return ids
            }
            let resumed = try await Self.openAll(count, url: url) { index in headers + [("Last-Event-ID", cursors[index])] }
            written += try await writer.value
            for index in 0..<5 { written.append(try await team.makeTask(client, plan: plan, title: "c\(index)").uuidString.lowercased()) }
            for (index, stream) in resumed.enumerated() {
                try await stream.waitFor("all 15 tasks", timeout: .seconds(60)) {
                    ChangeFeedFaultTests.taskInserts(streams[index].changes + $0).count >= written.count
                }
            }
            try await Task.sleep(for: .seconds(1))
            var wrong = 0
            for (index, stream) in resumed.enumerated() {
                let all = streams[index].changes + stream.changes
                if ChangeFeedFaultTests.taskInserts(all) != written { wrong += 1 }
                ChangeFeedFaultTests.expectIncreasingIDs(all)
                stream.close()
            }
            #expect(wrong == 0, "\(wrong) of \(count) streams did not get every task once, in order")
            // Nothing of the 2,000 streams stays behind: the server holds no stream once the clients are gone.
            try await ChangeFeedFaultTests.waitUntil("every stream released", timeout: .seconds(30)) {
                let metrics = try await client.send(.get, "/metrics", as: nil)
                return ChangeFeedTests.value(of: "realtime_open_streams", in: metrics.text) == 0
            }
            let metrics = try await client.send(.get, "/metrics", as: nil)
            #expect(ChangeFeedTests.value(of: #"realtime_disconnects_total{reason="client_closed"}"#, in: metrics.text) == Double(2 * count))
        }
    }

    // MARK: - Helpers

    /// When the cluster's postmaster started, in microseconds since 2000.
    static func postmasterStart(_ server: TestServer) async throws -> Int64 {
        try await ChangeFeedFaultTests.int64s(server, "SELECT (extract(epoch FROM pg_postmaster_start_time()) * 1000000)::bigint")[0]
    }

    /// Runs `write` until it answers, retrying transport failures (the server itself stays up; only its database
    /// restarts); counts the retries.
    static func retrying(_ retries: Locked<Int>, _ write: () async throws -> TestServer.Client.Reply) async throws -> TestServer.Client.Reply {
        for attempt in 1...50 {
            do {
                return try await write()
            } catch let error as FaultTimeout {
                throw error
            } catch {
                retries.update { $0 += 1 }
                try await Task.sleep(for: .milliseconds(min(2000, 100 * attempt)))
            }
        }
        throw FaultTimeout(what: "a write to be answered", timeout: .seconds(60))
    }

    /// The real server binary on the test's database, on `port`, with more `arguments` of `serve`.
    static func startBinary(_ server: TestServer, port: Int, arguments: [String] = []) throws -> Process {
        let binary = TestServer.repositoryRoot + "/.build/debug/realtime"
        try #require(FileManager.default.isExecutableFile(atPath: binary), "build the executable first (swift build --build-tests)")
        let process = Process()
        process.executableURL = URL(fileURLWithPath: binary)
        process.arguments =
            [
                "serve", "--database-url", server.endpoint.url(includingPassword: true), "--port", "\(port)",
                "--migrations-dir", TestServer.repositoryRoot + "/Migrations", "--log-level", "warning",
            ] + arguments
        // As in `TestServer`, the per-user limits (tested on their own) are raised: these tests open many streams as one user.
        let unlimited = ["WRITE", "POLL", "STREAM"].flatMap { ["REALTIME_USER_\($0)_RATE": "10000", "REALTIME_USER_\($0)_BURST": "100000"] }
        process.environment = ProcessInfo.processInfo.environment
            .merging(["REALTIME_JWT_SECRET": TestServer.secret]) { $1 }
            .merging(unlimited) { $1 }
        process.standardOutput = FileHandle.nullDevice
        process.standardError = FileHandle.nullDevice
        try process.run()
        return process
    }

    /// Opens `count` streams at once (64 connecting at a time) and requires each to answer 200.
    static func openAll(_ count: Int, url: String, headers: @escaping @Sendable (Int) -> [(String, String)]) async throws -> [SSEClient] {
        try await withThrowingTaskGroup(of: (Int, SSEClient).self) { group in
            var streams = [SSEClient?](repeating: nil, count: count)
            var next = 0
            func add() {
                let index = next
                next += 1
                group.addTask { (index, try await SSEClient.open(url, headers: headers(index))) }
            }
            while next < min(64, count) { add() }
            while let (index, stream) = try await group.next() {
                try #require(stream.status == 200, "stream \(index): \(stream.status.map(String.init) ?? "no answer") \(stream.errorBody)")
                streams[index] = stream
                if next < count { add() }
            }
            return streams.compactMap { $0 }
        }
    }

    /// Thousands of sockets, both ends in this process: lift the soft limit on open files to the hard one.
    static func raiseOpenFileLimit() {
        var limit = rlimit()
        guard getrlimit(Int32(RLIMIT_NOFILE.rawValue), &limit) == 0, limit.rlim_cur < limit.rlim_max else { return }
        limit.rlim_cur = limit.rlim_max
        _ = setrlimit(Int32(RLIMIT_NOFILE.rawValue), &limit)
    }
}
