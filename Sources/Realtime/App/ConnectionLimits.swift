import HTTPTypes
import NIOCore
import NIOHTTPTypes
import Synchronization

/// Caps on the connections the server holds at once: in all, and per client IP address. A connection beyond a cap gets
/// one answer to its first request — `503 server_busy` over the total, `429 too_many_connections` over its address's
/// share, both with `Retry-After` — and is closed.
///
/// With HTTP/2 every stream counts as a connection (a browser's streams share one TCP connection, and each holds the
/// same resources on the server as an HTTP/1.1 connection would). Behind a load balancer every client has the
/// balancer's address: turn the per-address cap off there (0) and let the balancer cap clients.
public final class ConnectionLimits: Sendable {
    /// The most connections at once, in all; 0 for no cap.
    public let total: Int
    /// The most connections at once from one IP address; 0 for no cap.
    public let perAddress: Int
    /// The wait `Retry-After` suggests.
    public let retryAfterSeconds: Int
    private let counts = Mutex(Counts())

    private struct Counts {
        var total = 0
        var byAddress: [String: Int] = [:]
    }

    /// Why a connection was refused.
    enum Refusal: Equatable {
        case total
        case perAddress
    }

    public init(total: Int, perAddress: Int, retryAfterSeconds: Int = 5) {
        self.total = max(0, total)
        self.perAddress = max(0, perAddress)
        self.retryAfterSeconds = max(1, retryAfterSeconds)
    }

    /// Counts a new connection from `address`, unless it is over a cap.
    func admit(_ address: String) -> Refusal? {
        counts.withLock { counts in
            if total > 0, counts.total >= total { return .total }
            let fromAddress = counts.byAddress[address, default: 0]
            if perAddress > 0, fromAddress >= perAddress { return .perAddress }
            counts.total += 1
            counts.byAddress[address] = fromAddress + 1
            return nil
        }
    }

    /// A connection admitted from `address` ended.
    func release(_ address: String) {
        counts.withLock { counts in
            counts.total -= 1
            let left = counts.byAddress[address, default: 1] - 1
            counts.byAddress[address] = left > 0 ? left : nil
        }
    }

    /// Connections held now, in all and from `address`.
    func held(from address: String) -> (total: Int, fromAddress: Int) {
        counts.withLock { ($0.total, $0.byAddress[address, default: 0]) }
    }

    /// A handler for each connection's (or HTTP/2 stream's) pipeline.
    func handler() -> ConnectionLimitHandler { ConnectionLimitHandler(limits: self) }
}

/// Counts its connection against the limits while the connection lives; a connection over a cap is answered with the
/// refusal at its first request and closed.
final class ConnectionLimitHandler: ChannelDuplexHandler, RemovableChannelHandler {
    typealias InboundIn = HTTPRequestPart
    typealias InboundOut = HTTPRequestPart
    typealias OutboundIn = HTTPResponsePart
    typealias OutboundOut = HTTPResponsePart

    private let limits: ConnectionLimits
    private var admittedAddress: String?
    private var refusal: ConnectionLimits.Refusal?
    private var answered = false

    init(limits: ConnectionLimits) {
        self.limits = limits
    }

    func handlerAdded(context: ChannelHandlerContext) {
        let address = context.channel.remoteAddress?.ipAddress ?? "unknown"
        if let refusal = limits.admit(address) {
            self.refusal = refusal
        } else {
            admittedAddress = address
        }
    }

    func handlerRemoved(context: ChannelHandlerContext) {
        if let address = admittedAddress { limits.release(address) }
        admittedAddress = nil
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        guard let refusal else {
            context.fireChannelRead(data)
            return
        }
        guard case .head = unwrapInboundIn(data), !answered else { return }
        answered = true
        let (status, code, message) =
            switch refusal {
            case .total: (HTTPResponse.Status.serviceUnavailable, "server_busy", "The server holds as many connections as it may; retry later.")
            case .perAddress:
                (
                    HTTPResponse.Status.tooManyRequests, "too_many_connections",
                    "Too many connections from this address at once; close some or retry later."
                )
            }
        let body = ByteBuffer(string: APIError(status, code: code, message: message).jsonBody)
        var head = HTTPResponse(status: status)
        head.headerFields[.contentType] = "application/json; charset=utf-8"
        head.headerFields[.contentLength] = "\(body.readableBytes)"
        head.headerFields[.retryAfter] = "\(limits.retryAfterSeconds)"
        head.headerFields[.connection] = "close"
        context.write(wrapOutboundOut(.head(head)), promise: nil)
        context.write(wrapOutboundOut(.body(body)), promise: nil)
        context.writeAndFlush(wrapOutboundOut(.end(nil))).whenComplete { _ in context.close(promise: nil) }
    }
}
