import AsyncHTTPClient
import Foundation
import NIOCore
import NIOHTTP1

/// JSON over HTTP to one server, with one bearer token (or none), on AsyncHTTPClient's connection pool.
struct RestClient: Sendable {
    let http: HTTPClient
    let baseURL: String
    let bearerToken: String?

    /// An answer: status and body.
    struct Answer: Sendable {
        var status: Int
        var body: ByteBuffer

        var isSuccess: Bool { (200..<300).contains(status) }
        var text: String { String(buffer: body) }
    }

    /// Sends a request with the client's bearer token; `json` goes as the body with `Content-Type: application/json`.
    func send(
        _ method: HTTPMethod,
        _ path: String,
        json: String? = nil
    ) async throws -> Answer {
        var request = HTTPClientRequest(url: baseURL + path)
        request.method = method
        if let bearer = bearerToken { request.headers.add(name: "Authorization", value: "Bearer \(bearer)") }
        if let json {
            request.headers.add(name: "Content-Type", value: "application/json")
            request.body = .bytes(ByteBuffer(string: json))
        }
        let response = try await http.execute(request, timeout: .seconds(60))
        let body = try await response.body.collect(upTo: 64 * 1024 * 1024)
        return Answer(status: Int(response.status.code), body: body)
    }

    /// Sends a request and requires a 2xx answer.
    @discardableResult
    func expectSuccess(_ method: HTTPMethod, _ path: String, json: String? = nil) async throws -> Answer {
        let answer = try await send(method, path, json: json)
        guard answer.isSuccess else {
            throw BenchError("\(method) \(path) answered \(answer.status): \(answer.text.prefix(300))")
        }
        return answer
    }

    /// A client with a pool of up to `connections` keep-alive HTTP/1.1 connections per host.
    static func makeHTTPClient(group: any EventLoopGroup, connections: Int) -> HTTPClient {
        var configuration = HTTPClient.Configuration()
        configuration.connectionPool = .init(idleTimeout: .seconds(120), concurrentHTTP1ConnectionsPerHostSoftLimit: connections)
        configuration.httpVersion = .http1Only
        configuration.timeout = .init(connect: .seconds(10), read: .seconds(60))
        return HTTPClient(eventLoopGroup: group, configuration: configuration)
    }
}

/// Runs `body` for every element with at most `limit` running at once.
func forEachConcurrently<Element: Sendable>(
    _ elements: [Element],
    limit: Int,
    _ body: @escaping @Sendable (Element) async throws -> Void
) async throws {
    try await withThrowingTaskGroup(of: Void.self) { group in
        var running = 0
        for element in elements {
            if running >= limit {
                try await group.next()
                running -= 1
            }
            group.addTask { try await body(element) }
            running += 1
        }
        try await group.waitForAll()
    }
}
