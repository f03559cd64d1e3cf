import Foundation
import Hummingbird
import HummingbirdTesting
import NIOCore
import Synchronization

@testable import Realtime

#if canImport(Glibc)
    import Glibc
#elseif canImport(Musl)
    import Musl
#elseif canImport(Darwin)
    import Darwin
#endif

// MARK: - A second server process

/// A server of its own on a test's database, on its own port, that a test starts and stops at will (as a node of a
/// cluster that comes and goes): `app.test(.live)` in a task of its own, its test body waiting for the stop.
final class TestNode: Sendable {
    let client: TestServer.Client
    private let stopper: AsyncStream<Void>.Continuation
    private let task: Task<Void, any Error>
    private let finished: Flag

    private init(client: TestServer.Client, stopper: AsyncStream<Void>.Continuation, task: Task<Void, any Error>, finished: Flag) {
        self.client = client
        self.stopper = stopper
        self.task = task
        self.finished = finished
    }

    /// Starts a node with the server's configuration (port 0: a free one) and returns once it serves requests.
    static func start(_ server: TestServer, configure: (inout Configuration) -> Void = { _ in }) async throws -> TestNode {
        var configuration = server.configuration
        configuration.nodeID = Configuration.defaultNodeID()  // each node its own, as separate processes have
        configure(&configuration)
        let (clients, clientOut) = AsyncStream.makeStream(of: TestServer.Client.self)
        let (stops, stopper) = AsyncStream.makeStream(of: Void.self)
        let finished = Flag()
        let task = Task {
            defer {
                finished.set()
                clientOut.finish()
            }
            let app = try buildApplication(
                configuration: configuration, database: server.endpoint, tokens: server.tokens, logger: server.logger)
            try await app.test(.live) { client in
                clientOut.yield(TestServer.Client(client: client, tokens: server.tokens))
                for await _ in stops {}
            }
        }
        let timer = Task {
            try? await Task.sleep(for: .seconds(90))
            clientOut.finish()
        }
        defer { timer.cancel() }
        var iterator = clients.makeAsyncIterator()
        guard let client = await iterator.next() else {
            stopper.finish()
            if finished.isSet, case .failure(let error) = await task.result { throw error }
            task.cancel()
            throw FaultTimeout(what: "a node to start", timeout: .seconds(90))
        }
        return TestNode(client: client, stopper: stopper, task: task, finished: finished)
    }

    /// Shuts the node down gracefully and waits until it has stopped; fails if that takes longer than `timeout`.
    func stop(timeout: Duration = .seconds(60)) async throws {
        stopper.finish()
        let deadline = ContinuousClock.now + timeout
        while !finished.isSet {
            if ContinuousClock.now > deadline {
                task.cancel()
                throw FaultTimeout(what: "a node to shut down", timeout: timeout)
            }
            try await Task.sleep(for: .milliseconds(50))
        }
        if case .failure(let error) = await task.result { throw error }
    }

    /// Stops the node after a test failed, recording nothing more.
    func stopAfterFailure() async {
        try? await stop(timeout: .seconds(30))
    }
}

/// A value shared between tasks.
final class Locked<Value: Sendable>: Sendable {
    private let mutex: Mutex<Value>
    init(_ value: Value) { mutex = Mutex(value) }
    var value: Value { mutex.withLock { $0 } }
    func update(_ body: (inout Value) -> Void) { mutex.withLock { body(&$0) } }
}

/// A flag set once, read from any task.
final class Flag: Sendable {
    private let value = Mutex(false)
    func set() { value.withLock { $0 = true } }
    var isSet: Bool { value.withLock { $0 } }
}

// MARK: - A raw socket

private func closeDescriptor(_ descriptor: Int32) { _ = close(descriptor) }

private func readDescriptor(_ descriptor: Int32, _ buffer: UnsafeMutableRawBufferPointer) -> Int {
    read(descriptor, buffer.baseAddress, buffer.count)
}

/// A plain TCP client socket, for a reader that sends a request and then reads only when the test says so.
final class RawSocket: Sendable {
    private let descriptor: Int32
    private let ended = Mutex(false)

    /// Connects to 127.0.0.1:`port` with a receive buffer of about `receiveBuffer` bytes, from `source` (another
    /// loopback address, e.g. 127.0.0.2, to look like another client) when given.
    init(port: Int, receiveBuffer: Int32 = 65536, from source: String? = nil) throws {
        #if canImport(Glibc) || canImport(Musl)
            let descriptor = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        #else
            let descriptor = socket(AF_INET, SOCK_STREAM, 0)
        #endif
        guard descriptor >= 0 else { throw RawSocketError("socket: \(String(cString: strerror(errno)))") }
        var size = receiveBuffer
        _ = setsockopt(descriptor, SOL_SOCKET, SO_RCVBUF, &size, socklen_t(MemoryLayout<Int32>.size))
        if let source {
            var local = sockaddr_in()
            local.sin_family = sa_family_t(AF_INET)
            local.sin_addr.s_addr = inet_addr(source)
            let bound = withUnsafePointer(to: &local) { pointer in
                pointer.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(descriptor, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) }
            }
            guard bound == 0 else {
                let message = String(cString: strerror(errno))
                closeDescriptor(descriptor)
                throw RawSocketError("bind \(source): \(message)")
            }
        }
        var address = sockaddr_in()
        address.sin_family = sa_family_t(AF_INET)
        address.sin_port = in_port_t(UInt16(port).bigEndian)
        address.sin_addr.s_addr = inet_addr("127.0.0.1")
        let connected = withUnsafePointer(to: &address) { pointer in
            pointer.withMemoryRebound(to: sockaddr.self, capacity: 1) { connect(descriptor, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) }
        }
        guard connected == 0 else {
            let message = String(cString: strerror(errno))
            closeDescriptor(descriptor)
            throw RawSocketError("connect: \(message)")
        }
        _ = fcntl(descriptor, F_SETFL, fcntl(descriptor, F_GETFL) | O_NONBLOCK)
        self.descriptor = descriptor
    }

    func send(_ text: String) throws {
        var bytes = Array(text.utf8)[...]
        let deadline = ContinuousClock.now + .seconds(10)
        while !bytes.isEmpty {
            let written = bytes.withUnsafeBytes { write(descriptor, $0.baseAddress, $0.count) }
            if written > 0 {
                bytes = bytes.dropFirst(written)
            } else if errno != EAGAIN || ContinuousClock.now > deadline {
                throw RawSocketError("write: \(String(cString: strerror(errno)))")
            }
        }
    }

    /// Whether the peer closed the connection (or reset it).
    var sawEndOfStream: Bool { ended.withLock { $0 } }

    /// Reads what arrives until `done` holds for the bytes read by this call, the peer closes, or `timeout` passes.
    func read(until timeout: Duration, _ done: ([UInt8]) -> Bool) async throws -> [UInt8] {
        var received: [UInt8] = []
        var buffer = [UInt8](repeating: 0, count: 65536)
        let deadline = ContinuousClock.now + timeout
        while !done(received), !sawEndOfStream, ContinuousClock.now < deadline {
            let count = buffer.withUnsafeMutableBytes { readDescriptor(descriptor, $0) }
            if count > 0 {
                received += buffer[..<count]
            } else if count == 0 || (errno != EAGAIN && errno != EWOULDBLOCK) {
                ended.withLock { $0 = true }
            } else {
                try await Task.sleep(for: .milliseconds(20))
            }
        }
        return received
    }

    func close() { closeDescriptor(descriptor) }

    /// Closes the client's side only (a half-close): it sends nothing more, but may still read.
    func closeWriting() {
        #if canImport(Glibc) || canImport(Musl)
            _ = shutdown(descriptor, Int32(SHUT_WR))
        #else
            _ = shutdown(descriptor, SHUT_WR)
        #endif
    }

    /// The status and the body (de-chunked) of an HTTP/1.1 response, as far as it was received, and whether it is
    /// complete (its last chunk arrived).
    static func decodeHTTP(_ bytes: [UInt8]) -> (status: Int?, body: String, complete: Bool) {
        let separator = Array("\r\n\r\n".utf8)
        guard let end = bytes.indices.first(where: { bytes[$0...].starts(with: separator) }) else { return (nil, "", false) }
        let head = String(decoding: bytes[..<end], as: UTF8.self)
        let status = head.split(separator: " ", maxSplits: 2).dropFirst().first.flatMap { Int($0) }
        var rest = bytes[(end + separator.count)...]
        guard head.lowercased().contains("transfer-encoding: chunked") else { return (status, String(decoding: rest, as: UTF8.self), false) }
        var body: [UInt8] = []
        let lineEnd = Array("\r\n".utf8)
        while let newline = rest.indices.first(where: { rest[$0...].starts(with: lineEnd) }),
            let size = Int(String(decoding: rest[..<newline], as: UTF8.self).split(separator: ";").first ?? "", radix: 16)
        {
            let start = newline + lineEnd.count
            if size == 0 { return (status, String(decoding: body, as: UTF8.self), true) }
            guard rest.endIndex >= start + size else { break }
            body += rest[start..<(start + size)]
            rest = rest[min(rest.endIndex, start + size + lineEnd.count)...]
        }
        return (status, String(decoding: body, as: UTF8.self), false)
    }
}

struct RawSocketError: Error, CustomStringConvertible {
    var description: String
    init(_ description: String) { self.description = description }
}
