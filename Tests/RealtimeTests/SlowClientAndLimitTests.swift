import Foundation
import HTTPTypes
import Hummingbird
import HummingbirdTesting
import Logging
import PostgresNIO
import Testing

@testable import Realtime

/// Clients that hold connections without using them, and too many connections at once: each is cut off or refused by an
/// explicit limit, and the server goes on serving everyone else.
@Suite(.timeLimit(.minutes(2)))
struct SlowClientAndLimitTests {
    static let request = "GET /healthz HTTP/1.1\r\nHost: test\r\n\r\n"

    /// A slowloris client: its request's head arrives a byte at a time and never ends. It is closed once the idle timeout
    /// (here 1 s) passes without a complete head, while another client is served meanwhile.
    @Test func aClientSendingItsHeadersAByteAtATimeIsCutOffWhileOthersAreServed() async throws {
        let server = try await TestServer.make { $0.idleTimeoutSeconds = 1 }
        try await server.testLive { client in
            let port = client.client.port ?? 0
            let slow = try RawSocket(port: port)
            defer { slow.close() }
            try slow.send("GET /healthz HTTP/1.1\r\nHost: test\r\n")
            let started = ContinuousClock.now
            var sent = 0
            // Drip a header for up to 15 s, a byte every 100 ms: far longer than the timeout.
            while !slow.sawEndOfStream, ContinuousClock.now - started < .seconds(15) {
                do {
                    try slow.send(sent % 40 == 39 ? "\r\n" : "x")
                } catch {
                    break  // the server closed: writing fails
                }
                sent += 1
                _ = try await slow.read(until: .milliseconds(100)) { _ in false }
                if sent == 5 {
                    // Meanwhile, another client is served.
                    let other = try RawSocket(port: port)
                    defer { other.close() }
                    try other.send(Self.request)
                    let reply = try await other.read(until: .seconds(10)) { RawSocket.decodeHTTP($0).status != nil }
                    #expect(RawSocket.decodeHTTP(reply).status == 200)
                }
            }
            let elapsed = ContinuousClock.now - started
            #expect(elapsed < .seconds(10), "the dripping client should be cut off after the 1 s timeout, not after \(elapsed)")
            #expect(sent < 100)
        }
    }

    /// A connection that never sends anything is closed after the idle timeout.
    @Test func anIdleConnectionIsClosed() async throws {
        let server = try await TestServer.make { $0.idleTimeoutSeconds = 1 }
        try await server.testLive { client in
            let idle = try RawSocket(port: client.client.port ?? 0)
            defer { idle.close() }
            let bytes = try await idle.read(until: .seconds(10)) { _ in false }
            #expect(bytes.isEmpty)
            #expect(idle.sawEndOfStream, "the server should close a connection that sends nothing")
        }
    }

    /// A stream is a request in progress, not an idle connection: it outlives the idle timeout and still delivers. (The
    /// stream is on a second node with a 2 s timeout; the setup goes through the first, whose test client would not
    /// survive the server closing its idle keep-alive connection.)
    @Test func aStreamOutlivesTheIdleTimeout() async throws {
        let server = try await TestServer.make(changeFeed: true)
        try await server.testLive { client in
            try await ChangeFeedFaultTests.waitForRelay(server)
            let team = try await Team.make(client)
            let plan = try await team.makePlan(client)
            let node = try await TestNode.start(server) { $0.idleTimeoutSeconds = 2 }
            do {
                let stream = try await ChangeFeedTests.open(node.client, "/realtime/v1/plan/\(plan)?table=task", as: .user(team.viewer))
                try await Task.sleep(for: .seconds(5))
                #expect(!stream.isFinished)
                let id = UUID()
                try await server.withOwnerConnection { connection in
                    _ = try await connection.query(
                        ChangeFeedFaultTests.insertTask(id, team: team, plan: plan, title: "late"), logger: server.logger)
                }
                try await stream.waitFor("the task written after 5 s") { ChangeFeedFaultTests.taskInserts($0) == [id.uuidString.lowercased()] }
                stream.close()
                try await node.stop()
            } catch {
                await node.stopAfterFailure()
                throw error
            }
        }
    }

    /// Caps of 2 connections per address and 4 in all: the third from one address gets `429 too_many_connections`, a
    /// connection over the total `503 server_busy`, both with `Retry-After` and a JSON error; a closed connection frees
    /// its place.
    @Test func connectionsBeyondTheCapsAreRefusedWithRetryAfter() async throws {
        let server = try await TestServer.make {
            $0.maxConnectionsPerAddress = 2
            $0.maxConnections = 4
        }
        try await server.testLive { client in
            let port = client.client.port ?? 0
            // The test framework's own client holds one connection from 127.0.0.1, made at a moment of its choosing:
            // make it now, so that it is surely one of the 4. The sockets below come from other loopback addresses.
            let health = try await client.send(.get, "/healthz", as: nil)
            try #require(health.status == .ok)
            // Each accepted connection is counted on its own event loop: one served request proves it counted (a
            // connection only connected may not be yet, and the one after it would then slip under the cap).
            let first = try RawSocket(port: port, from: "127.0.0.4")
            try await Self.expectServed(first)
            let second = try RawSocket(port: port, from: "127.0.0.4")
            defer { second.close() }
            try await Self.expectServed(second)

            let third = try RawSocket(port: port, from: "127.0.0.4")
            defer { third.close() }
            try await Self.expectRefused(third, status: 429, code: "too_many_connections")

            let elsewhere = try RawSocket(port: port, from: "127.0.0.2")
            defer { elsewhere.close() }
            try await Self.expectServed(elsewhere)  // the fourth connection in all

            let overTotal = try RawSocket(port: port, from: "127.0.0.3")
            defer { overTotal.close() }
            try await Self.expectRefused(overTotal, status: 503, code: "server_busy")

            // A connection that closes frees its place, once the server has seen it close: until then a new one is
            // still refused, so try again until one is served (with a deadline).
            first.close()
            let deadline = ContinuousClock.now + .seconds(10)
            while true {
                let again = try RawSocket(port: port, from: "127.0.0.3")
                defer { again.close() }
                try again.send(Self.request)
                let reply = try await again.read(until: .seconds(10)) { RawSocket.decodeHTTP($0).status != nil }
                let status = RawSocket.decodeHTTP(reply).status
                if status == 200 { break }
                #expect(status == 503, "\(String(decoding: reply, as: UTF8.self))")
                try #require(ContinuousClock.now < deadline, "the closed connection's place was not freed within 10 s")
                try await Task.sleep(for: .milliseconds(50))
            }
        }
    }

    static func expectServed(_ socket: RawSocket, sourceLocation: SourceLocation = #_sourceLocation) async throws {
        try socket.send(request)
        let reply = try await socket.read(until: .seconds(10)) { RawSocket.decodeHTTP($0).status != nil }
        #expect(RawSocket.decodeHTTP(reply).status == 200, "\(String(decoding: reply, as: UTF8.self))", sourceLocation: sourceLocation)
    }

    static func expectRefused(_ socket: RawSocket, status: Int, code: String, sourceLocation: SourceLocation = #_sourceLocation) async throws {
        try socket.send(request)
        let reply = try await socket.read(until: .seconds(10)) { bytes in
            let text = String(decoding: bytes, as: UTF8.self)
            return text.contains("\r\n\r\n") && text.hasSuffix("}}")
        }
        let text = String(decoding: reply, as: UTF8.self)
        #expect(RawSocket.decodeHTTP(reply).status == status, "\(text)", sourceLocation: sourceLocation)
        #expect(text.lowercased().contains("retry-after: 5"), "\(text)", sourceLocation: sourceLocation)
        #expect(text.contains(#""code":"\#(code)""#), "\(text)", sourceLocation: sourceLocation)
        _ = try await socket.read(until: .seconds(5)) { _ in false }
        #expect(socket.sawEndOfStream, "a refused connection is closed", sourceLocation: sourceLocation)
    }
}
