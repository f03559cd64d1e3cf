import Foundation
import HTTPTypes
import HummingbirdTesting
import Testing

@testable import Realtime

/// Event streams are held at their sockets: once live, a stream is a subscriber entry written by its connection's event
/// loop, not a task of its own waiting on its deliveries.
@Suite(.serialized) struct StreamsAtSocketTests {
    /// 2,000 idle streams over real sockets: every one is held at its socket (none read by a task), every one still
    /// gets the next change, and closing them frees every entry.
    @Test func idleStreamsHoldNoTaskOfTheirOwnAndStillGetEveryChange() async throws {
        try await Self.withViewer { client, team, port, request in
            let streamCount = 2_000
            var sockets: [RawSocket] = []
            defer { for socket in sockets { socket.close() } }
            // Opened in rounds, each served before the next, so that a busy machine admits them at its own pace.
            for round in stride(from: 0, to: streamCount, by: 250) {
                var opened: [RawSocket] = []
                for index in round..<min(round + 250, streamCount) {
                    // Spread over loopback addresses, well within the per-address connection cap.
                    let socket = try RawSocket(port: port, receiveBuffer: 8192, from: "127.0.1.\(1 + index % 200)")
                    try socket.send(request)
                    opened.append(socket)
                }
                sockets += opened
                for socket in opened {
                    let head = try await socket.read(until: .seconds(120)) { String(decoding: $0, as: UTF8.self).contains("retry:") }
                    try #require(String(decoding: head, as: UTF8.self).contains("retry:"), "every stream should start")
                }
            }
            try await ChangeFeedFaultTests.waitUntil("\(streamCount) streams held at their sockets", timeout: .seconds(120)) {
                let metrics = try? await client.send(.get, "/metrics", as: nil).text
                return metrics.flatMap { ChangeFeedTests.value(of: #"realtime_subscribers{held="socket"}"#, in: $0) } == Double(streamCount)
            }
            let metrics = try await client.send(.get, "/metrics", as: nil).text
            #expect(ChangeFeedTests.value(of: #"realtime_subscribers{held="task"}"#, in: metrics) == 0, "no stream is read by a task")
            #expect(ChangeFeedTests.value(of: "realtime_open_streams", in: metrics) == Double(streamCount))

            // Idle is not dead: one change reaches every stream.
            let plan = try await team.makePlan(client, title: "Held at the socket")
            for (index, socket) in sockets.enumerated() {
                let received = try await socket.read(until: .seconds(60)) {
                    String(decoding: $0, as: UTF8.self).contains(plan.uuidString.lowercased())
                }
                #expect(String(decoding: received, as: UTF8.self).contains(plan.uuidString.lowercased()), "stream \(index) should get the new plan")
            }

            for socket in sockets { socket.close() }
            sockets = []
            try await ChangeFeedFaultTests.waitUntil("every stream's entry freed", timeout: .seconds(60)) {
                guard let metrics = try? await client.send(.get, "/metrics", as: nil).text else { return false }
                return ChangeFeedTests.value(of: #"realtime_subscribers{held="socket"}"#, in: metrics) == 0
                    && ChangeFeedTests.value(of: "realtime_open_streams", in: metrics) == 0
            }
        }
    }

    /// A client that closes its side of the connection (a half-close, which the server allows) has left: its stream
    /// ends and its entry is freed, although the server could still write to it. Nothing but the stream's socket
    /// handler watches the connection's inbound side.
    @Test func aClientThatClosesItsSideOfTheConnectionHasLeft() async throws {
        try await Self.withViewer { client, _, port, request in
            let socket = try RawSocket(port: port)
            defer { socket.close() }
            try socket.send(request)
            let head = try await socket.read(until: .seconds(60)) { String(decoding: $0, as: UTF8.self).contains("retry:") }
            try #require(String(decoding: head, as: UTF8.self).contains("retry:"), "the stream should start")
            try await ChangeFeedFaultTests.waitUntil("the stream held at its socket", timeout: .seconds(60)) {
                let metrics = try? await client.send(.get, "/metrics", as: nil).text
                return metrics.flatMap { ChangeFeedTests.value(of: #"realtime_subscribers{held="socket"}"#, in: $0) } == 1
            }

            socket.closeWriting()
            try await ChangeFeedFaultTests.waitUntil("the half-closed stream's entry freed", timeout: .seconds(60)) {
                guard let metrics = try? await client.send(.get, "/metrics", as: nil).text else { return false }
                return ChangeFeedTests.value(of: #"realtime_subscribers{held="socket"}"#, in: metrics) == 0
                    && ChangeFeedTests.value(of: "realtime_open_streams", in: metrics) == 0
            }
            // The response is finished (its last chunk written), not left hanging.
            let rest = try await socket.read(until: .seconds(60)) { RawSocket.decodeHTTP(head + $0).complete }
            #expect(RawSocket.decodeHTTP(head + rest).complete || socket.sawEndOfStream)
        }
    }

    /// Runs `body` on a live server with the change feed, a team, the server's port, and a viewer's request for an
    /// event stream of the team's branch (its plans only).
    private static func withViewer(_ body: @Sendable (TestServer.Client, Team, Int, String) async throws -> Void) async throws {
        let server = try await TestServer.make(changeFeed: true)
        try await server.testLive { client in
            try await ChangeFeedFaultTests.waitForRelay(server)
            let team = try await Team.make(client)
            let token = try await client.token(for: .user(team.viewer))
            let port = try #require(client.client.port)
            let request =
                "GET /realtime/v1/branch/\(team.branch)?table=plan HTTP/1.1\r\nHost: 127.0.0.1\r\nAccept: text/event-stream\r\n"
                + "Authorization: Bearer \(token)\r\n\r\n"
            try await body(client, team, port, request)
        }
    }
}
