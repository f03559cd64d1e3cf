import HTTPTypes
import NIOCore
import NIOHTTP1
import NIOHTTPTypes

/// Where the hub sends a subscriber's deliveries: a buffer an in-process reader drains (``Mailbox``), or the socket of
/// an event stream (``SocketOutlet``), written on its event loop with no task of its own.
enum Outlet: Sendable {
    case mailbox(Mailbox)
    case socket(SocketOutlet)
}

/// One event stream held at its socket: the hub's deliveries are written straight to the connection by its event loop,
/// with no task woken per frame. The stream's handler writes the response head and the catch-up, then waits on
/// ``ended`` once; everything after is done here, in a few lines of I/O around ``SocketStreamState``.
///
/// All its state lives on its event loop. The hub hands it deliveries in per-loop batches (``deliver(_:on:)``),
/// one `execute` per loop for a whole batch of events.
final class SocketOutlet: Sendable {
    let eventLoop: any EventLoop
    /// Completed once, when the stream ends: with the reason the hub or the outlet ended it, nil when the client left.
    let ended: EventLoopFuture<EndReason?>
    private let endedPromise: EventLoopPromise<EndReason?>
    private let handler: NIOLoopBound<StreamSocketHandler>
    private let state: NIOLoopBoundBox<SocketStreamState>
    /// The reconnect wait written before the end frame of a stream ended by shutdown.
    private let shutdownRetry: @Sendable () -> Int
    private let metrics: FeedMetrics

    private init(
        handler: StreamSocketHandler, eventLoop: any EventLoop, readThrough: Int64, limit: Int, metrics: FeedMetrics,
        shutdownRetry: @escaping @Sendable () -> Int
    ) {
        self.eventLoop = eventLoop
        self.metrics = metrics
        self.handler = NIOLoopBound(handler, eventLoop: eventLoop)
        self.state = NIOLoopBoundBox(SocketStreamState(readThrough: readThrough, limit: limit), eventLoop: eventLoop)
        self.endedPromise = eventLoop.makePromise()
        self.ended = endedPromise.futureResult
        self.shutdownRetry = shutdownRetry
    }

    /// The send buffer asked of the kernel for a stream's socket (Linux doubles it for its own bookkeeping).
    static let sendBufferBytes: SocketOptionValue = 64 * 1024

    /// An outlet on the stream handler of `channel`'s pipeline, which takes it as the connection's current stream.
    ///
    /// - Throws: NIO's `ChannelPipelineError.notFound` if the pipeline has no ``StreamSocketHandler`` (a server set up
    ///   without it): the request then fails with a 500.
    static func attach(
        to channel: any NIOCore.Channel,
        readThrough: Int64,
        limit: Int,
        metrics: FeedMetrics,
        shutdownRetry: @escaping @Sendable () -> Int
    ) async throws -> SocketOutlet {
        try await channel.eventLoop.submit {
            let handler = try channel.pipeline.syncOperations.handler(type: StreamSocketHandler.self)
            let outlet = SocketOutlet(
                handler: handler,
                eventLoop: channel.eventLoop,
                readThrough: readThrough,
                limit: limit,
                metrics: metrics,
                shutdownRetry: shutdownRetry
            )
            handler.take(outlet)
            // The kernel's send buffer of a stream is bounded, so that a reader that stops reading is seen as slow
            // (its channel turns unwritable) after ~`sendBufferBytes` rather than after the several MiB loopback
            // auto-tuning allows, and a stalled stream pins that little kernel memory. An HTTP/2 stream shares its
            // connection's socket: the option does not apply there (its channel is no socket, and refuses it).
            if channel is any SocketOptionProvider {
                try? channel.syncOptions?.setOption(ChannelOptions.socketOption(.so_sndbuf), value: Self.sendBufferBytes)
            }
            outlet.state.value.writabilityChanged(to: channel.isWritable)
            return outlet
        }.get()
    }

    /// Writes catch-up frames (after the response head), waiting until they are written: the catch-up of a long
    /// absence goes out no faster than the client reads it. Returns false when the stream has ended (the hub ended it
    /// meanwhile, after these frames, or the client left): the catch-up stops there.
    func writeCatchUp(_ frames: [ByteBuffer]) async throws -> Bool {
        try await eventLoop.flatSubmit { [self] () -> EventLoopFuture<Bool> in
            var commitTimes: [Double] = []
            let action = state.value.catchUp(frames)
            guard case .write = action else {
                _ = carryOut(action, commitTimes: &commitTimes)
                return eventLoop.makeSucceededFuture(false)
            }
            let written = eventLoop.makePromise(of: Void.self)
            _ = carryOut(action, commitTimes: &commitTimes, promise: written)
            return written.futureResult.map { true }
        }.get()
    }

    /// The catch-up wrote every frame up to `sequence`: from now on the hub's deliveries are written as they come.
    func goLive(through sequence: Int64) {
        eventLoop.execute { [self] in
            var commitTimes: [Double] = []
            let count = carryOut(state.value.caughtUp(through: sequence), commitTimes: &commitTimes)
            if count > 0 { metrics.framesWritten(count, commitTimes: commitTimes) }
        }
    }

    /// Ends the stream for `reason` (after the catch-up frames in hand, if it is still catching up), unless it already
    /// ended.
    func end(_ reason: EndReason) {
        eventLoop.execute { [self] in
            var commitTimes: [Double] = []
            _ = carryOut(state.value.deliver(CollectionOfOne(.end(reason: reason))), commitTimes: &commitTimes)
        }
    }

    /// Ends the stream as if the client left, unless it already ended; for a stream whose handler stops waiting.
    func close() {
        eventLoop.execute { [self] in clientLeft() }
    }

    /// Writes a batch of deliveries to outlets of one event loop: one `execute` for the batch, and each outlet's frames
    /// of the batch joined into one write and flushed once.
    static func deliver(_ batch: [(SocketOutlet, Delivery)], on eventLoop: any EventLoop) {
        guard let metrics = batch.first?.0.metrics else { return }
        eventLoop.execute {
            // Each outlet's deliveries in order, outlets in the order they first appear.
            var order: [SocketOutlet] = []
            var deliveries: [ObjectIdentifier: [Delivery]] = [:]
            for (outlet, delivery) in batch {
                let key = ObjectIdentifier(outlet)
                if deliveries[key] == nil { order.append(outlet) }
                deliveries[key, default: []].append(delivery)
            }
            var commitTimes: [Double] = []
            var written = 0
            for outlet in order {
                written += outlet.carryOut(outlet.state.value.deliver(deliveries[ObjectIdentifier(outlet)] ?? []), commitTimes: &commitTimes)
            }
            if written > 0 { metrics.framesWritten(written, commitTimes: commitTimes) }
        }
    }

    // MARK: On the event loop

    /// The connection's writability changed.
    func writabilityChanged(to writable: Bool) {
        state.value.writabilityChanged(to: writable)
    }

    /// The client's connection closed.
    func clientLeft() {
        var commitTimes: [Double] = []
        _ = carryOut(state.value.clientLeft(), commitTimes: &commitTimes)
    }

    /// Carries out an action, flushing what it writes; returns the number of the stream's frames it wrote. `promise`,
    /// for a write, completes when its last frame is written.
    private func carryOut(_ action: SocketStreamState.Action, commitTimes: inout [Double], promise: EventLoopPromise<Void>? = nil) -> Int {
        switch action {
        case .none:
            promise?.succeed()
            return 0
        case .write(let frames, let times):
            write(frames, promise: promise)
            flush()
            commitTimes += times
            // A keepalive is written alone, and is not a frame of the stream's.
            return frames.count == 1 && frames[0] == SSEFrame.keepalive ? 0 : frames.count
        case .end(let reason, let frames, let times):
            var last = frames
            if reason == .shutdown { last.append(SSEFrame.retry(milliseconds: shutdownRetry())) }
            if let reason { last.append(SSEFrame.end(reason)) }
            write(last, promise: promise)
            if !last.isEmpty { flush() }
            commitTimes += times
            handler.value.release(self)
            endedPromise.succeed(reason)
            return frames.count
        }
    }

    private func write(_ frames: [ByteBuffer], promise: EventLoopPromise<Void>? = nil) {
        guard !frames.isEmpty, let context = handler.value.context(of: self) else {
            promise?.succeed()
            return
        }
        // HTTP/1.1: framed as chunks here and written below the response encoder, which would otherwise frame them once
        // per stream through three more handlers and three writes. HTTP/2: body parts, through the stream's codec.
        let encoder = handler.value.belowResponseEncoder()
        let buffers = encoder == nil ? SSEFrame.coalesced(frames) : SSEFrame.chunked(frames, allocator: context.channel.allocator)
        guard !buffers.isEmpty else {
            promise?.succeed()
            return
        }
        for (index, buffer) in buffers.enumerated() {
            let written = index == buffers.count - 1 ? promise : nil
            if let encoder {
                encoder.write(NIOAny(IOData.byteBuffer(buffer)), promise: written)
            } else {
                context.write(handler.value.wrapOutboundOut(.body(buffer)), promise: written)
            }
        }
    }

    private func flush() {
        handler.value.context(of: self)?.flush()
    }
}

/// In every connection's (and HTTP/2 stream's) pipeline, between the HTTP codec and Hummingbird: the way in for a
/// ``SocketOutlet`` to write its stream's frames, and to learn when the connection's writability changes or it closes.
/// Everything else passes through untouched.
final class StreamSocketHandler: ChannelDuplexHandler, RemovableChannelHandler {
    typealias InboundIn = HTTPRequestPart
    typealias InboundOut = HTTPRequestPart
    typealias OutboundIn = HTTPResponsePart
    typealias OutboundOut = HTTPResponsePart

    private var context: ChannelHandlerContext?
    /// The stream the connection carries now, if any.
    private var current: SocketOutlet?
    /// NIO's HTTP/1.1 response encoder's context, once looked up (`.some(nil)`: this pipeline has none, an HTTP/2
    /// stream's).
    private var responseEncoder: ChannelHandlerContext??

    init() {}

    func handlerAdded(context: ChannelHandlerContext) { self.context = context }

    func handlerRemoved(context: ChannelHandlerContext) {
        current?.clientLeft()
        self.context = nil
        responseEncoder = nil
    }

    /// Where a stream writes frames it framed as chunks itself: the context of NIO's HTTP/1.1 response encoder, so that
    /// they go on to the socket from there. The encoder frames a stream's answer in chunks, as the frames assume: the
    /// codec above it answers as HTTP/1.1, and a stream's head has a body and no `Content-Length`. Nil on an HTTP/2
    /// stream, whose frames go through its codec as body parts.
    func belowResponseEncoder() -> ChannelHandlerContext? {
        guard let context else { return nil }
        if responseEncoder == nil {
            responseEncoder = .some(try? context.pipeline.syncOperations.context(handlerType: HTTPResponseEncoder.self))
        }
        return responseEncoder ?? nil
    }

    /// Makes `outlet` the connection's stream (one at a time: a later one replaces it).
    func take(_ outlet: SocketOutlet) {
        current?.clientLeft()
        current = outlet
    }

    /// The outlet's stream is over: the connection may carry another response.
    func release(_ outlet: SocketOutlet) {
        if current === outlet { current = nil }
    }

    /// The context to write with, while `outlet` is the connection's stream.
    func context(of outlet: SocketOutlet) -> ChannelHandlerContext? {
        current === outlet ? context : nil
    }

    func channelWritabilityChanged(context: ChannelHandlerContext) {
        current?.writabilityChanged(to: context.channel.isWritable)
        context.fireChannelWritabilityChanged()
    }

    func channelInactive(context: ChannelHandlerContext) {
        current?.clientLeft()
        context.fireChannelInactive()
    }

    /// A client that closes its side of the connection has left, even though the server could still write (the
    /// server allows half-closed connections).
    func userInboundEventTriggered(context: ChannelHandlerContext, event: Any) {
        if case .some(.inputClosed) = event as? ChannelEvent { current?.clientLeft() }
        context.fireUserInboundEventTriggered(event)
    }
}
