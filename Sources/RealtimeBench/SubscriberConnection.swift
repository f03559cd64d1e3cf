import NIOCore
import NIOHTTP1
import NIOPosix
import Synchronization

/// What one subscriber asks for: a stream path on the server, as a given user.
struct SubscriberTarget: Sendable {
    /// Position in the scenario's list of subscribers.
    var index: Int
    /// The channel index (an nchan channel) whose events it should receive.
    var channel: Int
    /// Realtime: the plan or branch it watches (nil for nchan).
    var scope: ChannelScope?
    /// Realtime: its user's role and channel kind, e.g. `viewer plan`, for the report.
    var kind = ""
    /// Request path and query, e.g. `/realtime/v1/plan/<id>`.
    var path: String
    /// Whether this is a negative control: a stream the user may not see, which must be refused before it starts.
    var isNegativeControl = false
    /// `Authorization: Bearer …`, when the server needs one.
    var bearerToken: String?
}

/// A frame as it arrived: its sequence number (the SSE `id`), when it was read, and what its data says of the row.
struct Receipt: Sendable {
    var sequence: Int64
    var microseconds: Int64
    var facts = ChangeFacts()
}

/// Everything one subscriber saw, handed over when its connection closes.
struct SubscriberOutcome: Sendable {
    var target: SubscriberTarget
    /// The HTTP status of the stream's answer; nil when none arrived.
    var status: Int?
    var receipts: [Receipt]
    /// Control events received, e.g. `error` for a slow consumer.
    var controlEvents: [String]
    /// Whether the stream ended before the tool closed it, and why.
    var disconnected: Bool
    var endReason: String?
    /// Body bytes received (frames, keepalives), for the average frame size.
    var bodyBytes: Int
}

/// Collects the outcomes of closed connections from every event loop.
final class OutcomeSink: Sendable {
    private let outcomes = Mutex<[SubscriberOutcome]>([])

    init() {}

    func add(_ outcome: SubscriberOutcome) {
        outcomes.withLock { $0.append(outcome) }
    }

    /// Takes everything collected so far.
    func drain() -> [SubscriberOutcome] {
        outcomes.withLock { outcomes in
            defer { outcomes.removeAll() }
            return outcomes
        }
    }
}

/// A raw HTTP/1.1 SSE subscriber: sends one GET, reads the answer's status, then parses frames as they arrive and
/// stamps each with the wall-clock time of the read that completed it.
///
/// Everything it learns stays on its event loop until the connection closes, when it goes to the ``OutcomeSink`` at
/// once. Only the shared counters are touched across threads.
final class SubscriberHandler: ChannelInboundHandler {
    typealias InboundIn = HTTPClientResponsePart
    typealias OutboundOut = HTTPClientRequestPart

    private let target: SubscriberTarget
    private let host: String
    private let counters: LiveCounters
    private let sink: OutcomeSink
    private let answered: EventLoopPromise<Int>
    private var parser: SSEParser
    private var status: Int?
    private var receipts: [Receipt] = []
    private var controlEvents: [String] = []
    private var endReason: String?
    private var bodyBytes = 0
    private var isAnswered = false

    init(
        target: SubscriberTarget,
        host: String,
        source: SequenceSource,
        factsReader: ChangeFactsReader?,
        counters: LiveCounters,
        sink: OutcomeSink,
        answered: EventLoopPromise<Int>
    ) {
        self.target = target
        self.host = host
        self.parser = SSEParser(source: source, factsReader: factsReader)
        self.counters = counters
        self.sink = sink
        self.answered = answered
    }

    func channelActive(context: ChannelHandlerContext) {
        var headers = HTTPHeaders()
        headers.add(name: "Host", value: host)
        headers.add(name: "Accept", value: "text/event-stream")
        if let token = target.bearerToken { headers.add(name: "Authorization", value: "Bearer \(token)") }
        let head = HTTPRequestHead(version: .http1_1, method: .GET, uri: target.path, headers: headers)
        context.write(wrapOutboundOut(.head(head)), promise: nil)
        context.writeAndFlush(wrapOutboundOut(.end(nil)), promise: nil)
        context.fireChannelActive()
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        switch unwrapInboundIn(data) {
        case .head(let head):
            status = Int(head.status.code)
            answer(Int(head.status.code))
            if head.status == .ok {
                counters.openStreams.add(1, ordering: .relaxed)
            } else {
                context.close(promise: nil)
            }
        case .body(let buffer):
            bodyBytes += buffer.readableBytes
            let now = WallClock.microseconds()
            var changes = 0
            parser.feed(buffer) { frame in
                switch frame {
                case .change(let sequence, let facts):
                    receipts.append(Receipt(sequence: sequence, microseconds: now, facts: facts))
                    changes += 1
                case .control(let name):
                    controlEvents.append(name)
                }
            }
            if changes > 0 { counters.frames.add(changes, ordering: .relaxed) }
        case .end:
            endReason = endReason ?? "server_ended_stream"
            context.close(promise: nil)
        }
    }

    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        endReason = endReason ?? "error: \(error)"
        context.close(promise: nil)
    }

    func channelInactive(context: ChannelHandlerContext) {
        answer(-1)
        let finishing = counters.finishing.load(ordering: .relaxed)
        let disconnected = status == 200 && !finishing
        if status == 200 {
            counters.openStreams.subtract(1, ordering: .relaxed)
            if disconnected { counters.disconnects.add(1, ordering: .relaxed) }
        }
        sink.add(
            SubscriberOutcome(
                target: target,
                status: status,
                receipts: receipts,
                controlEvents: controlEvents,
                disconnected: disconnected,
                endReason: disconnected ? (endReason ?? "connection_closed") : nil,
                bodyBytes: bodyBytes
            )
        )
        receipts = []
        context.fireChannelInactive()
    }

    private func answer(_ code: Int) {
        guard !isAnswered else { return }
        isAnswered = true
        answered.succeed(code)
    }
}

/// Opens subscriber connections to one host and port over a shared event loop group.
struct SubscriberConnector: Sendable {
    let group: any EventLoopGroup
    let host: String
    let port: Int
    let source: SequenceSource
    /// Reads what a realtime frame's data says of its row; nil for nchan.
    var factsReader: ChangeFactsReader? = nil
    let counters: LiveCounters
    let sink: OutcomeSink

    /// Connects and sends the request; returns the channel and the answer's HTTP status (-1 when none came).
    func open(_ target: SubscriberTarget) async throws -> (channel: any Channel, status: Int) {
        let eventLoop = group.next()
        let answered = eventLoop.makePromise(of: Int.self)
        let hostHeader = "\(host):\(port)"
        let bootstrap = ClientBootstrap(group: eventLoop)
            .connectTimeout(.seconds(15))
            .channelOption(.socketOption(.tcp_nodelay), value: 1)
            .channelInitializer { [source, factsReader, counters, sink] channel in
                channel.eventLoop.makeCompletedFuture {
                    try channel.pipeline.syncOperations.addHTTPClientHandlers()
                    try channel.pipeline.syncOperations.addHandler(
                        SubscriberHandler(
                            target: target,
                            host: hostHeader,
                            source: source,
                            factsReader: factsReader,
                            counters: counters,
                            sink: sink,
                            answered: answered
                        )
                    )
                }
            }
        let channel: any Channel
        do {
            channel = try await bootstrap.connect(host: host, port: port).get()
        } catch {
            answered.fail(error)  // nothing else will answer it; completing a promise twice is harmless
            throw error
        }
        let status = try await answered.futureResult.get()
        return (channel, status)
    }
}
