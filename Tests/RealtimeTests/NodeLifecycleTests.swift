import AsyncHTTPClient
import Foundation
import HummingbirdTesting
import NIOCore
import NIOHTTP1
import NIOSSL
import PostgresNIO
import Testing

@testable import Realtime

#if canImport(Glibc)
    import Glibc
#elseif canImport(Musl)
    import Musl
#endif

/// How a node meets the world and leaves it: HTTPS with HTTP/2 carrying many streams on one connection, a restart
/// under a steady write load that loses nothing for its subscribers, and SIGTERM on a real server process.
@Suite(.timeLimit(.minutes(4)))
struct NodeLifecycleTests {
    // MARK: - TLS and HTTP/2

    @Test func oneHTTP2ConnectionCarriesTwentyStreamsAndTheWritesWhoseEventsArriveOnThem() async throws {
        let certificate = try SelfSignedCertificate.make()
        let server = try await TestServer.make(changeFeed: true)
        // A plain node to set up users and the plan with the test helpers, and the node under test with a certificate.
        let plain = try await TestNode.start(server)
        let node = try await TestNode.start(server) { configuration in
            configuration.tlsCertificatePath = certificate.certificatePath
            configuration.tlsKeyPath = certificate.keyPath
            configuration.runsRelay = false
        }
        var tls = TLSConfiguration.makeClientConfiguration()
        tls.certificateVerification = .none
        var configuration = HTTPClient.Configuration(tlsConfiguration: tls)
        configuration.httpVersion = .automatic
        let https = HTTPClient(eventLoopGroupProvider: .singleton, configuration: configuration)
        do {
            let port = try #require(node.client.client.port)
            let base = "https://127.0.0.1:\(port)"
            let team = try await Team.make(plain.client)
            let plan = try await team.makePlan(plain.client)
            let viewer = try await node.client.token(for: .user(team.viewer))
            let editor = try await node.client.token(for: .user(team.editor))

            // The test framework's own client may hold a connection to the node: count from here.
            let before = Self.establishedConnections(toPort: port)
            // One request first, so that the client has its connection (and knows it is HTTP/2) before the streams.
            var ready = HTTPClientRequest(url: "\(base)/healthz")
            ready.headers.add(name: "Authorization", value: "Bearer \(viewer)")
            let first = try await https.execute(ready, timeout: .seconds(10))
            #expect(first.status == .ok && first.version == .http2, "HTTPS with ALPN must pick HTTP/2, got \(first.version)")

            // Twenty streams at once, each on its own HTTP/2 stream.
            let streams = try await withThrowingTaskGroup(of: H2Stream.self) { group in
                for _ in 0..<20 {
                    group.addTask { try await H2Stream.open(https, "\(base)/realtime/v1/plan/\(plan)?table=task", token: viewer) }
                }
                return try await group.reduce(into: []) { $0.append($1) }
            }
            #expect(streams.count == 20)
            #expect(streams.allSatisfy { $0.version == .http2 }, "every stream must be served over HTTP/2")

            // Writes over the same connection; their events arrive on every stream.
            var tasks: [String] = []
            for index in 0..<5 {
                let id = UUID().uuidString.lowercased()
                var request = HTTPClientRequest(url: "\(base)/rest/v1/tasks")
                request.method = .POST
                request.headers.add(name: "Authorization", value: "Bearer \(editor)")
                request.headers.add(name: "Content-Type", value: "application/json")
                request.body = .bytes(
                    ByteBuffer(
                        string:
                            #"{"id":"\#(id)","plan_id":"\#(plan)","title":"h2 \#(index)","starts_at":"2026-11-30T09:00:00Z","ends_at":"2026-11-30T11:00:00Z"}"#
                    ))
                let response = try await https.execute(request, timeout: .seconds(10))
                #expect(response.status == .created && response.version == .http2)
                tasks.append(id)
            }
            for stream in streams {
                let received = try await stream.waitForTasks(tasks)
                #expect(received == tasks, "a stream received \(received)")
            }
            #expect(Self.establishedConnections(toPort: port) - before == 1, "all of it on one TCP connection")

            // A stream the client closes (its HTTP/2 stream reset, the connection kept) is over on the server too.
            for stream in streams { stream.close() }
            try await ChangeFeedFaultTests.waitUntil("the closed HTTP/2 streams freed", timeout: .seconds(60)) {
                var metrics = HTTPClientRequest(url: "\(base)/metrics")
                metrics.headers.add(name: "Authorization", value: "Bearer \(viewer)")
                guard let response = try? await https.execute(metrics, timeout: .seconds(10)),
                    let body = try? await response.body.collect(upTo: 1 << 20)
                else { return false }
                return ChangeFeedTests.value(of: "realtime_open_streams", in: String(buffer: body)) == 0
            }
        } catch {
            try? await https.shutdown()
            await node.stopAfterFailure()
            await plain.stopAfterFailure()
            throw error
        }
        try await https.shutdown()
        try await node.stop()
        try await plain.stop()
    }

    /// ESTABLISHED TCP connections whose local port is `port` (the server's side), from /proc/net/tcp and tcp6.
    static func establishedConnections(toPort port: Int) -> Int {
        var count = 0
        for file in ["/proc/net/tcp", "/proc/net/tcp6"] {
            // /proc files report a size of 0: read them to the end rather than by their size.
            guard let data = FileHandle(forReadingAtPath: file)?.readDataToEndOfFile() else { continue }
            let text = String(decoding: data, as: UTF8.self)
            for line in text.split(separator: "\n").dropFirst() {
                let fields = line.split(separator: " ", omittingEmptySubsequences: true)
                guard fields.count > 3, let localPort = fields[1].split(separator: ":").last.flatMap({ Int($0, radix: 16) }) else { continue }
                if localPort == port && fields[3] == "01" { count += 1 }
            }
        }
        return count
    }

    // MARK: - Restarting a node

    @Test func aNodeRestartedUnderSteadyWritesLosesNoEventForItsSubscribers() async throws {
        let server = try await TestServer.make(changeFeed: true)
        let relayNode = try await TestNode.start(server)
        var streamNode = try await TestNode.start(server) { $0.runsRelay = false }
        let team = try await Team.make(relayNode.client)
        let plan = try await team.makePlan(relayNode.client)
        let first = try await ChangeFeedTests.open(streamNode.client, "/realtime/v1/plan/\(plan)?table=task", as: .user(team.viewer))

        // A writer around the servers, with SQL, one task every 20 ms until told to stop.
        let written = Locked<[String]>([])
        let stop = Flag()
        let writer = Task {
            try await server.withOwnerConnection { connection in
                var index = 0
                while !stop.isSet {
                    let id = UUID()
                    try await connection.query(
                        """
                        INSERT INTO task (id, branch_id, plan_id, title, starts_at, ends_at)
                        VALUES (\(id), \(team.branch), \(plan), \("steady \(index)"), now(), now() + interval '1 hour')
                        """,
                        logger: server.logger
                    )
                    written.update { $0.append(id.uuidString.lowercased()) }
                    index += 1
                    try await Task.sleep(for: .milliseconds(20))
                }
            }
        }
        do {
            try await first.waitForChanges(10, timeout: .seconds(30))
            try await streamNode.stop()
            try await first.waitUntilFinished()
            let end = try #require(first.frames.last)
            #expect(end.event == "error" && (end.json["reason"] as? String ?? "").hasPrefix("shutdown"), "\(end)")
            let hint = try #require(first.retryHints.last)
            #expect((500...5000).contains(hint), "the shutdown retry hint \(hint) ms must be spread over a few seconds")

            // The node comes back; the subscriber resumes there from its last cursor while the writes go on.
            streamNode = try await TestNode.start(server) { $0.runsRelay = false }
            let lastID = try #require(first.changes.last?.id)
            let resumed = try await ChangeFeedTests.open(
                streamNode.client, "/realtime/v1/plan/\(plan)?table=task", as: .user(team.viewer), lastEventID: lastID)
            try await Task.sleep(for: .milliseconds(500))
            stop.set()
            try await writer.value
            let all = written.value
            try await resumed.waitFor("every task written", timeout: .seconds(30)) { frames in
                Set(first.changes.compactMap { $0.record["id"] as? String } + frames.compactMap { $0.record["id"] as? String })
                    .isSuperset(of: all)
            }
            let received = (first.changes + resumed.changes).compactMap { $0.record["id"] as? String }
            #expect(received == all, "received \(received.count) of \(all.count), in order and once each")
            resumed.close()
        } catch {
            stop.set()
            _ = try? await writer.value
            await streamNode.stopAfterFailure()
            await relayNode.stopAfterFailure()
            throw error
        }
        try await streamNode.stop()
        try await relayNode.stop()
    }

    // MARK: - SIGTERM on a real process

    @Test func sigtermEndsStreamsWithASpreadRetryHintAndExitsInTime() async throws {
        let server = try await TestServer.make(changeFeed: true)
        let port = try FreePort.pick()
        let process = try ProcessFaultTests.startBinary(server, port: port, arguments: ["--shutdown-seconds", "6"])
        defer { if process.isRunning { kill(process.processIdentifier, SIGKILL) } }

        try await server.test { client in
            let team = try await Team.make(client)
            let plan = try await team.makePlan(client)
            let base = "http://127.0.0.1:\(port)"
            try await Self.waitUntilServing(base)
            let token = try await client.token(for: .user(team.viewer))
            let stream = try await SSEClient.open("\(base)/realtime/v1/plan/\(plan)", headers: [("Authorization", "Bearer \(token)")])
            #expect(stream.status == 200)
            try await stream.waitFor("the first retry hint") { _ in !stream.retryHints.isEmpty }

            let signalled = ContinuousClock.now
            kill(process.processIdentifier, SIGTERM)
            try await stream.waitUntilFinished(timeout: .seconds(10))
            let end = try #require(stream.frames.last)
            #expect(end.event == "error" && (end.json["reason"] as? String ?? "").hasPrefix("shutdown"), "\(end)")
            let hint = try #require(stream.retryHints.last)
            #expect(stream.retryHints.count == 2 && (300...3000).contains(hint), "hints \(stream.retryHints)")
            while process.isRunning && ContinuousClock.now - signalled < .seconds(8) { try await Task.sleep(for: .milliseconds(50)) }
            #expect(!process.isRunning, "the process must exit within its shutdown bound")
            #expect(process.terminationReason == .exit && process.terminationStatus == 0)
        }
    }

    static func waitUntilServing(_ base: String) async throws {
        let deadline = ContinuousClock.now + .seconds(60)
        while ContinuousClock.now < deadline {
            if let response = try? await HTTPClient.shared.execute(HTTPClientRequest(url: base + "/readyz"), timeout: .seconds(2)),
                response.status == .ok
            {
                return
            }
            try await Task.sleep(for: .milliseconds(100))
        }
        throw FaultTimeout(what: "the server process to serve", timeout: .seconds(60))
    }
}

/// A stream read over a shared AsyncHTTPClient (HTTP/2 when the server offers it).
final class H2Stream: Sendable {
    let version: HTTPVersion
    private let frames = Locked<[SSEClient.Frame]>([])
    private let task: Locked<Task<Void, Never>?> = Locked(nil)

    private init(version: HTTPVersion) { self.version = version }

    static func open(_ client: HTTPClient, _ url: String, token: String) async throws -> H2Stream {
        var request = HTTPClientRequest(url: url)
        request.headers.add(name: "Authorization", value: "Bearer \(token)")
        request.headers.add(name: "Accept", value: "text/event-stream")
        let response = try await client.execute(request, deadline: .now() + .minutes(5))
        guard response.status == .ok else { throw FaultTimeout(what: "a 200 for \(url), got \(response.status)", timeout: .zero) }
        let stream = H2Stream(version: response.version)
        stream.task.update {
            $0 = Task {
                var parser = FrameParser()
                do {
                    for try await buffer in response.body {
                        let parsed = parser.feed(String(buffer: buffer))
                        stream.frames.update { $0 += parsed }
                    }
                } catch {}
            }
        }
        return stream
    }

    /// Waits until every one of `ids` arrived as a task INSERT; returns the task ids received, in order.
    func waitForTasks(_ ids: [String], timeout: Duration = .seconds(20)) async throws -> [String] {
        let deadline = ContinuousClock.now + timeout
        while true {
            let received = frames.value.filter { $0.event == "postgres_changes" }.compactMap { $0.record["id"] as? String }
            if Set(received).isSuperset(of: ids) || ContinuousClock.now > deadline { return received }
            try await Task.sleep(for: .milliseconds(20))
        }
    }

    func close() { task.value?.cancel() }
}

/// A self-signed certificate for 127.0.0.1 made with the openssl command, in a temporary folder.
struct SelfSignedCertificate {
    let certificatePath: String
    let keyPath: String

    static func make() throws -> SelfSignedCertificate {
        let folder = FileManager.default.temporaryDirectory.appendingPathComponent("realtime-tls-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: folder, withIntermediateDirectories: true)
        let certificate = folder.appendingPathComponent("cert.pem").path
        let key = folder.appendingPathComponent("key.pem").path
        let openssl = Process()
        openssl.executableURL = URL(fileURLWithPath: "/usr/bin/openssl")
        openssl.arguments = [
            "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", key, "-out", certificate, "-days", "1",
            "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1",
        ]
        openssl.standardOutput = FileHandle.nullDevice
        openssl.standardError = FileHandle.nullDevice
        try openssl.run()
        openssl.waitUntilExit()
        guard openssl.terminationStatus == 0 else { throw FaultTimeout(what: "openssl to make a certificate", timeout: .zero) }
        return SelfSignedCertificate(certificatePath: certificate, keyPath: key)
    }
}

/// A free TCP port on loopback, as the kernel picks one for port 0.
enum FreePort {
    static func pick() throws -> Int {
        let descriptor = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        guard descriptor >= 0 else { throw FaultTimeout(what: "a socket", timeout: .zero) }
        defer { close(descriptor) }
        var address = sockaddr_in()
        address.sin_family = sa_family_t(AF_INET)
        address.sin_addr.s_addr = inet_addr("127.0.0.1")
        address.sin_port = 0
        var length = socklen_t(MemoryLayout<sockaddr_in>.size)
        let bound = withUnsafeMutablePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(descriptor, $0, length) == 0 && getsockname(descriptor, $0, &length) == 0 }
        }
        guard bound else { throw FaultTimeout(what: "a free port", timeout: .zero) }
        return Int(UInt16(bigEndian: address.sin_port))
    }
}
