import AsyncHTTPClient
import Foundation
import NIOCore
import NIOHTTP1
import Synchronization

/// A real Server-Sent Events client for tests: it opens a stream over a socket, parses frames as a browser's
/// EventSource would, and keeps them for the test to wait on and inspect.
final class SSEClient: Sendable {
    /// One parsed frame.
    struct Frame: Sendable, Equatable {
        var id: String?
        var event: String
        var data: String

        var json: [String: Any] { (try? JSONSerialization.jsonObject(with: Data(data.utf8))) as? [String: Any] ?? [:] }
        var record: [String: Any] { json["record"] as? [String: Any] ?? [:] }
        var oldRecord: [String: Any] { json["old_record"] as? [String: Any] ?? [:] }
        var table: String? { json["table"] as? String }
        var operation: String? { json["event"] as? String }
        var channels: [String] { json["channels"] as? [String] ?? [] }
    }

    private struct State {
        var frames: [Frame] = []
        var status: Int?
        var headers: [(String, String)] = []
        var errorBody = ""
        var finished = false
        var retries: [Int] = []
    }

    /// The client streams go through: unlike `HTTPClient.shared` (8 connections per host, then requests queue), a test
    /// may hold as many streams open as it likes.
    static let httpClient = HTTPClient(
        eventLoopGroupProvider: .singleton,
        configuration: HTTPClient.Configuration(
            connectionPool: .init(idleTimeout: .seconds(60), concurrentHTTP1ConnectionsPerHostSoftLimit: 10_000)
        )
    )

    private let state = Mutex(State())
    private let task: Mutex<Task<Void, Never>?> = Mutex(nil)

    /// Opens `url` with the given headers; returns once the response head arrived.
    static func open(_ url: String, headers: [(String, String)] = []) async throws -> SSEClient {
        let client = SSEClient()
        let (opened, openedContinuation) = AsyncStream.makeStream(of: Void.self)
        let task = Task {
            defer {
                client.state.withLock { $0.finished = true }
                openedContinuation.finish()
            }
            var request = HTTPClientRequest(url: url)
            request.headers.add(name: "Accept", value: "text/event-stream")
            for (name, value) in headers { request.headers.add(name: name, value: value) }
            do {
                let response = try await SSEClient.httpClient.execute(request, deadline: .now() + .minutes(10))
                client.state.withLock { state in
                    state.status = Int(response.status.code)
                    state.headers = response.headers.map { ($0.name, $0.value) }
                }
                openedContinuation.yield()
                var parser = FrameParser()
                for try await buffer in response.body {
                    let text = String(buffer: buffer)
                    if response.status.code != 200 {
                        client.state.withLock { $0.errorBody += text }
                        continue
                    }
                    let frames = parser.feed(text)
                    let retries = parser.retries
                    client.state.withLock { state in
                        state.frames += frames
                        state.retries = retries
                    }
                }
            } catch {
                // No answer (or the body broke off): keep the error, so that a test that expected an answer says why.
                client.state.withLock { $0.errorBody += "\(error)" }
                openedContinuation.yield()
            }
        }
        client.task.withLock { $0 = task }
        for await _ in opened { break }
        return client
    }

    var status: Int? { state.withLock { $0.status } }
    var errorBody: String { state.withLock { $0.errorBody } }
    var frames: [Frame] { state.withLock { $0.frames } }
    var isFinished: Bool { state.withLock { $0.finished } }
    /// The `retry:` hints received, in milliseconds, in order.
    var retryHints: [Int] { state.withLock { $0.retries } }
    func header(_ name: String) -> String? { state.withLock { $0.headers.first { $0.0.lowercased() == name.lowercased() }?.1 } }

    /// The change frames (`event: postgres_changes`).
    var changes: [Frame] { frames.filter { $0.event == "postgres_changes" } }

    /// Waits until `condition` holds for the frames received, or fails after `timeout`.
    @discardableResult
    func waitFor(
        _ what: String,
        timeout: Duration = .seconds(30),
        _ condition: ([Frame]) -> Bool
    ) async throws -> [Frame] {
        let deadline = ContinuousClock.now + timeout
        while true {
            let frames = self.frames
            if condition(frames) { return frames }
            if ContinuousClock.now > deadline { throw SSETimeout(what: what, frames: frames) }
            try await Task.sleep(for: .milliseconds(20))
        }
    }

    /// Waits until at least `count` change frames arrived.
    @discardableResult
    func waitForChanges(_ count: Int, timeout: Duration = .seconds(30)) async throws -> [Frame] {
        try await waitFor("\(count) change frames", timeout: timeout) { frames in
            frames.filter { $0.event == "postgres_changes" }.count >= count
        }.filter { $0.event == "postgres_changes" }
    }

    /// Waits until the server ends the stream.
    func waitUntilFinished(timeout: Duration = .seconds(30)) async throws {
        let deadline = ContinuousClock.now + timeout
        while !isFinished {
            if ContinuousClock.now > deadline { throw SSETimeout(what: "the stream to end", frames: frames) }
            try await Task.sleep(for: .milliseconds(20))
        }
    }

    /// Closes the connection, as a browser tab that goes away.
    func close() {
        task.withLock { $0?.cancel() }
    }

    deinit { task.withLock { $0?.cancel() } }
}

/// A wait on an SSE stream that ran out of time.
struct SSETimeout: Error, CustomStringConvertible {
    var what: String
    var frames: [SSEClient.Frame]
    var description: String {
        "timed out waiting for \(what); received \(frames.count) frames: \(frames.map { "\($0.event) \($0.data.prefix(120))" })"
    }
}

/// Parses the `text/event-stream` format incrementally.
struct FrameParser {
    private var pending = ""
    private var id: String?
    private var event = ""
    private var data: [String] = []
    /// Every `retry:` hint seen, in milliseconds.
    private(set) var retries: [Int] = []

    mutating func feed(_ text: String) -> [SSEClient.Frame] {
        pending += text
        var frames: [SSEClient.Frame] = []
        while let newline = pending.firstIndex(of: "\n") {
            let line = String(pending[..<newline])
            pending.removeSubrange(...newline)
            if line.isEmpty {
                if !data.isEmpty || !event.isEmpty {
                    frames.append(.init(id: id, event: event.isEmpty ? "message" : event, data: data.joined(separator: "\n")))
                }
                id = nil
                event = ""
                data = []
                continue
            }
            if line.hasPrefix(":") { continue }
            let parts = line.split(separator: ":", maxSplits: 1, omittingEmptySubsequences: false)
            let field = String(parts[0])
            var value = parts.count > 1 ? String(parts[1]) : ""
            if value.hasPrefix(" ") { value.removeFirst() }
            switch field {
            case "id": id = value
            case "event": event = value
            case "data": data.append(value)
            case "retry": if let milliseconds = Int(value) { retries.append(milliseconds) }
            default: break
            }
        }
        return frames
    }
}
