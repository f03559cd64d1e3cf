import NIOCore
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
/// It is the only handler in its pipeline: it decodes the HTTP answer itself (``HTTPStreamDecoder``) and the SSE lines
/// in place from the read's buffer, so a read costs no allocation beyond the receipts it keeps.
///
/// Everything it learns stays on its event loop until the connection closes, when it goes to the ``OutcomeSink`` at
/// once. Only the shared counters are touched across threads, once per read.
final class SubscriberHandler: ChannelInboundHandler {
    typealias InboundIn = ByteBuffer
    typealias OutboundOut = ByteBuffer

    private let target: SubscriberTarget
    private let host: String
    private let counters: LiveCounters
    private let sink: OutcomeSink
    private let answered: EventLoopPromise<Int>
    private var decoder = HTTPStreamDecoder()
    private var parser: SSEParser
    private var status: Int?
    private var receipts: [Receipt] = []
    private var controlEvents: [String] = []
    private var endReason: String?
    private var bodyBytes = 0
    private var isAnswered = false
    private var isClosing = false

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
        var request = "GET \(target.path) HTTP/1.1\r\nHost: \(host)\r\nAccept: text/event-stream\r\n"
        if let token = target.bearerToken { request += "Authorization: Bearer \(token)\r\n" }
        request += "\r\n"
        context.writeAndFlush(wrapOutboundOut(context.channel.allocator.buffer(string: request)), promise: nil)
        context.fireChannelActive()
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        guard !isClosing else { return }
        let buffer = unwrapInboundIn(data)
        var now: Int64 = 0
        var changes = 0
        var ended = false
        do {
            try buffer.withUnsafeReadableBytes { bytes in
                try decoder.feed(bytes) { part in
                    switch part {
                    case .head(let code):
                        status = code
                        answer(code)
                        if code == 200 { counters.openStreams.add(1, ordering: .relaxed) } else { ended = true }
                    case .body(let body):
                        guard !ended else { return }
                        bodyBytes += body.count
                        if now == 0 { now = WallClock.microseconds() }
                        parser.feed(body) { frame in
                            switch frame {
                            case .change(let sequence, let facts):
                                receipts.append(Receipt(sequence: sequence, microseconds: now, facts: facts))
                                changes += 1
                            case .control(let name):
                                controlEvents.append(name)
                            }
                        }
                    case .end:
                        if status == 200 { endReason = endReason ?? "server_ended_stream" }
                        ended = true
                    }
                }
            }
        } catch {
            endReason = endReason ?? "error: \(error)"
            ended = true
        }
        if changes > 0 { counters.frames.add(changes, ordering: .relaxed) }
        if ended {
            isClosing = true
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
            // One fixed buffer per connection, reused by every read: no resizing, and a burst comes in one read.
            .channelOption(.recvAllocator, value: FixedSizeRecvByteBufferAllocator(capacity: 16 * 1024))
            .channelInitializer { [source, factsReader, counters, sink] channel in
                channel.eventLoop.makeCompletedFuture {
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
