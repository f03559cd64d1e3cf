import NIOCore
import NIOHTTP1
import NIOPosix

/// A request for ``LoopHTTPClient``: method, path and query, bearer token, and a JSON body.
struct LoopRequest: Sendable {
    var method: HTTPMethod
    var path: String
    var bearerToken: String?
    var json: String?
}

/// HTTP/1.1 requests over keep-alive connections that all belong to one event loop. A request is written, its answer
/// read and its caller called back on that loop, so a request costs the tool its bytes and the HTTP codec: no task,
/// continuation, timer or thread hop per request, which AsyncHTTPClient's pool spent (about 300 µs of the tool's CPU
/// per write in W).
///
/// One request at a time on a connection, as browsers and scripts send them (no pipelining). A request that finds
/// every connection busy waits its turn; a connection is opened while fewer than `maxConnections` are open. A request
/// whose connection fails or closes before its answer is answered `nil` (its outcome unknown).
///
/// Not Sendable: make it, and call it, on `loop` only.
final class LoopHTTPClient {
    typealias Answered = (_ status: Int?) -> Void

    let loop: any EventLoop
    private let host: String
    private let port: Int
    private let maxConnections: Int
    private var idle: [AnswerHandler] = []
    private var opened = 0
    private var waiting = CircularBuffer<(request: LoopRequest, answered: Answered)>()

    init(loop: any EventLoop, host: String, port: Int, maxConnections: Int) {
        self.loop = loop
        self.host = host
        self.port = port
        self.maxConnections = max(1, maxConnections)
    }

    /// Sends `request`; `answered` is called on the loop with the answer's status, or nil when none came.
    func send(_ request: LoopRequest, _ answered: @escaping Answered) {
        loop.preconditionInEventLoop()
        if let connection = idle.popLast() {
            connection.send(request, answered)
            return
        }
        waiting.append((request, answered))
        if opened < maxConnections { open() }
    }

    /// Opens connections until `count` are open (at most `maxConnections`), as a busy client already has them; the
    /// future completes once they are, or once one failed.
    func warm(_ count: Int) -> EventLoopFuture<Void> {
        loop.preconditionInEventLoop()
        let futures = (0..<max(0, min(count, maxConnections) - opened)).map { _ in open() }
        return EventLoopFuture.andAllSucceed(futures, on: loop)
    }

    /// Closes every idle connection.
    func close() {
        loop.preconditionInEventLoop()
        for connection in idle { connection.close() }
    }

    @discardableResult
    private func open() -> EventLoopFuture<Void> {
        opened += 1
        let handler = NIOLoopBound(AnswerHandler(loop: loop, hostHeader: "\(host):\(port)"), eventLoop: loop)
        let connected = ClientBootstrap(group: loop)
            .connectTimeout(.seconds(10))
            .channelOption(.socketOption(.tcp_nodelay), value: 1)
            .channelInitializer { channel in
                channel.eventLoop.makeCompletedFuture {
                    try channel.pipeline.syncOperations.addHTTPClientHandlers()
                    try channel.pipeline.syncOperations.addHandler(handler.value)
                }
            }
            .connect(host: host, port: port)
        connected.assumeIsolated().whenComplete { result in
            switch result {
            case .success:
                let connection = handler.value
                connection.onFree = { [unowned self] in self.free($0) }
                connection.onClose = { [unowned self] in self.closed($0) }
                self.free(connection)
            case .failure:
                self.opened -= 1
                // Nothing would answer the oldest waiting request: it fails, and the next one gets a new try.
                if let first = self.waiting.popFirst() { first.answered(nil) }
                if !self.waiting.isEmpty, self.opened < self.maxConnections { self.open() }
            }
        }
        return connected.map { _ in }
    }

    private func free(_ connection: AnswerHandler) {
        guard connection.isOpen else { return }  // its close is on its way to `closed`
        if let next = waiting.popFirst() {
            connection.send(next.request, next.answered)
        } else {
            idle.append(connection)
        }
    }

    private func closed(_ connection: AnswerHandler) {
        opened -= 1
        idle.removeAll { $0 === connection }
        if !waiting.isEmpty, opened < maxConnections { open() }
    }
}

/// The last handler of one of ``LoopHTTPClient``'s connections: writes a request, reads its answer's status, and
/// tells the client when the connection is free again or closed.
private final class AnswerHandler: ChannelInboundHandler {
    typealias InboundIn = HTTPClientResponsePart
    typealias OutboundOut = HTTPClientRequestPart

    /// How long an answer may take before its connection is closed and the request answered `nil`.
    static let answerTimeout = TimeAmount.seconds(60)

    private let loop: any EventLoop
    private let hostHeader: String
    private var context: ChannelHandlerContext?
    private var pending: LoopHTTPClient.Answered?
    private var status: Int?
    private var keepAlive = true
    private var timeout: Scheduled<Void>?
    var onFree: ((AnswerHandler) -> Void)?
    var onClose: ((AnswerHandler) -> Void)?

    init(loop: any EventLoop, hostHeader: String) {
        self.loop = loop
        self.hostHeader = hostHeader
    }

    func handlerAdded(context: ChannelHandlerContext) {
        self.context = context
    }

    func handlerRemoved(context: ChannelHandlerContext) {
        self.context = nil
    }

    func send(_ request: LoopRequest, _ answered: @escaping LoopHTTPClient.Answered) {
        guard let context, context.channel.isActive else {
            // Answered later, never from inside the call: a caller that sends again on an answer must not recurse.
            loop.assumeIsolated().execute { answered(nil) }
            return
        }
        pending = answered
        status = nil
        keepAlive = true
        timeout = context.eventLoop.assumeIsolated().scheduleTask(in: Self.answerTimeout) { [weak self] in
            self?.context?.close(promise: nil)
        }
        var headers = HTTPHeaders()
        headers.add(name: "Host", value: hostHeader)
        if let token = request.bearerToken { headers.add(name: "Authorization", value: "Bearer \(token)") }
        var body: ByteBuffer?
        if let json = request.json {
            let buffer = context.channel.allocator.buffer(string: json)
            headers.add(name: "Content-Type", value: "application/json")
            headers.add(name: "Content-Length", value: String(buffer.readableBytes))
            body = buffer
        }
        let head = HTTPRequestHead(version: .http1_1, method: request.method, uri: request.path, headers: headers)
        context.write(wrapOutboundOut(.head(head)), promise: nil)
        if let body { context.write(wrapOutboundOut(.body(.byteBuffer(body))), promise: nil) }
        context.writeAndFlush(wrapOutboundOut(.end(nil)), promise: nil)
    }

    var isOpen: Bool { context?.channel.isActive ?? false }

    func close() {
        context?.close(promise: nil)
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        switch unwrapInboundIn(data) {
        case .head(let head):
            status = Int(head.status.code)
            keepAlive = head.isKeepAlive
        case .body:
            break
        case .end:
            timeout?.cancel()
            timeout = nil
            let (answered, status) = (pending, status)
            pending = nil
            if keepAlive {
                // Free first, so that a request waiting for a connection goes out on this one now (it resets
                // `pending` and `status`, taken above).
                onFree?(self)
            } else {
                // The server closes it (nginx after `keepalive_requests`): it is not used again.
                context.close(promise: nil)
            }
            answered?(status)
        }
    }

    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        context.close(promise: nil)
    }

    func channelInactive(context: ChannelHandlerContext) {
        timeout?.cancel()
        timeout = nil
        let answered = pending
        pending = nil
        onClose?(self)
        onFree = nil
        onClose = nil
        answered?(nil)
        context.fireChannelInactive()
    }
}
