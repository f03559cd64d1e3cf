import NIOCore
import Synchronization

/// The async sequence of a subscription's deliveries; it ends after an `.end` delivery or when its task is cancelled.
///
/// It has one reader. When the reader's task is cancelled, or the stream and its iterators are all released, the
/// subscription is removed from the hub.
public struct DeliveryStream: AsyncSequence, Sendable {
    public typealias Element = Delivery

    private let lifetime: ConsumerLifetime

    init(mailbox: Mailbox) { lifetime = ConsumerLifetime(mailbox: mailbox) }

    public func makeAsyncIterator() -> Iterator { Iterator(lifetime: lifetime) }

    /// The deliveries already buffered, up to `limit`, without waiting: after one `next()`, a writer may take these too
    /// and write them in one go. Only for the stream's one reader.
    public func availableDeliveries(limit: Int = .max) -> [Delivery] { lifetime.mailbox.available(limit: limit) }

    /// Reads the deliveries one by one.
    public struct Iterator: AsyncIteratorProtocol, Sendable {
        fileprivate let lifetime: ConsumerLifetime

        public mutating func next() async -> Delivery? { await lifetime.mailbox.next() }
    }
}

/// Tells the mailbox when the reader side is gone.
private final class ConsumerLifetime: Sendable {
    let mailbox: Mailbox

    init(mailbox: Mailbox) { self.mailbox = mailbox }

    deinit { mailbox.terminate() }
}

/// A subscriber's bounded buffer between the publishing task and its reader.
///
/// Frames beyond the limit are refused (the hub then ends the subscriber). Ending drops whatever is still buffered, so
/// the end is seen next: a revoked or expired subscriber reads nothing more, a slow one resumes by cursor.
final class Mailbox: Sendable {
    /// The result of offering a frame.
    enum OfferResult: Equatable {
        case accepted
        case full
        case closed
    }

    private struct State {
        var buffer = CircularBuffer<Delivery>()
        var waiter: CheckedContinuation<Delivery?, Never>?
        /// Accepts nothing more: it was ended, or its reader is gone.
        var isClosed = false
        /// The reader has seen the end: `next()` returns nil.
        var isFinished = false
        /// The highest sequence handed to the reader, or written by it from a catch-up; later frames up to it are skipped.
        var readThrough: Int64
        var onTermination: (@Sendable () -> Void)?

        /// The next delivery to hand out, skipping frames the reader already has.
        mutating func popNext() -> Delivery? {
            while let delivery = buffer.popFirst() {
                switch delivery {
                case .frame(_, let sequence, _):
                    if sequence <= readThrough { continue }
                    readThrough = sequence
                case .end:
                    isFinished = true
                case .keepalive, .ephemeral:
                    break
                }
                return delivery
            }
            return nil
        }
    }

    /// The most frames buffered before the subscriber counts as slow.
    let limit: Int
    private let state: Mutex<State>

    init(limit: Int, readThrough: Int64) {
        self.limit = max(1, limit)
        state = Mutex(State(readThrough: readThrough))
    }

    /// Sets what runs once when the reader goes away (cancelled or released).
    func onTermination(_ action: @escaping @Sendable () -> Void) {
        state.withLock { $0.onTermination = action }
    }

    /// Buffers a frame, or hands it straight to a waiting reader.
    func offer(_ frame: ByteBuffer, sequence: Int64, committedAt: Double) -> OfferResult {
        let (result, waiter): (OfferResult, CheckedContinuation<Delivery?, Never>?) = state.withLock { state in
            if state.isClosed { return (.closed, nil) }
            if sequence <= state.readThrough { return (.accepted, nil) }
            if let waiter = state.waiter {
                state.waiter = nil
                state.readThrough = sequence
                return (.accepted, waiter)
            }
            if state.buffer.count >= limit { return (.full, nil) }
            state.buffer.append(.frame(frame, sequence: sequence, committedAt: committedAt))
            return (.accepted, nil)
        }
        waiter?.resume(returning: .frame(frame, sequence: sequence, committedAt: committedAt))
        return result
    }

    /// Buffers an ephemeral frame (presence, broadcast), or hands it straight to a waiting reader. It counts against the
    /// same limit as change frames.
    func offerEphemeral(_ frame: ByteBuffer) -> OfferResult {
        let (result, waiter): (OfferResult, CheckedContinuation<Delivery?, Never>?) = state.withLock { state in
            if state.isClosed { return (.closed, nil) }
            if let waiter = state.waiter {
                state.waiter = nil
                return (.accepted, waiter)
            }
            if state.buffer.count >= limit { return (.full, nil) }
            state.buffer.append(.ephemeral(frame))
            return (.accepted, nil)
        }
        waiter?.resume(returning: .ephemeral(frame))
        return result
    }

    /// Wakes an idle reader with a keepalive; a reader with frames buffered is not idle and gets none.
    func offerKeepalive() {
        let waiter: CheckedContinuation<Delivery?, Never>? = state.withLock { state in
            if state.isClosed { return nil }
            if let waiter = state.waiter {
                state.waiter = nil
                return waiter
            }
            if state.buffer.isEmpty { state.buffer.append(.keepalive) }
            return nil
        }
        waiter?.resume(returning: .keepalive)
    }

    /// Offers any delivery: a frame, an ephemeral frame, a keepalive or the end.
    func offer(_ delivery: Delivery) -> OfferResult {
        switch delivery {
        case .frame(let bytes, let sequence, let committedAt): return offer(bytes, sequence: sequence, committedAt: committedAt)
        case .ephemeral(let bytes): return offerEphemeral(bytes)
        case .keepalive:
            offerKeepalive()
            return .accepted
        case .end(let reason): return end(reason) ? .accepted : .closed
        }
    }

    /// Records that the reader wrote frames up to `sequence` itself, so that buffered or later copies are skipped.
    func markRead(through sequence: Int64) {
        state.withLock { $0.readThrough = max($0.readThrough, sequence) }
    }

    /// The highest sequence the reader has.
    var readThrough: Int64 { state.withLock { $0.readThrough } }

    /// Drops what is buffered and makes `.end(reason)` the next and last delivery. Returns false if already closed.
    @discardableResult
    func end(_ reason: EndReason) -> Bool {
        let (ended, waiter): (Bool, CheckedContinuation<Delivery?, Never>?) = state.withLock { state in
            if state.isClosed { return (false, nil) }
            state.isClosed = true
            state.buffer.removeAll()
            guard let waiter = state.waiter else {
                state.buffer.append(.end(reason: reason))
                return (true, nil)
            }
            state.waiter = nil
            state.isFinished = true
            return (true, waiter)
        }
        waiter?.resume(returning: .end(reason: reason))
        return ended
    }

    /// The reader went away: drop everything, wake a pending `next()` with nil, run the termination action once.
    func terminate() {
        let (waiter, action): (CheckedContinuation<Delivery?, Never>?, (@Sendable () -> Void)?) = state.withLock { state in
            state.isClosed = true
            state.isFinished = true
            state.buffer.removeAll()
            let waiter = state.waiter
            state.waiter = nil
            let action = state.onTermination
            state.onTermination = nil
            return (waiter, action)
        }
        waiter?.resume(returning: nil)
        action?()
    }

    /// Up to `limit` buffered deliveries, without waiting.
    func available(limit: Int) -> [Delivery] {
        state.withLock { state in
            var deliveries: [Delivery] = []
            while deliveries.count < limit, let delivery = state.popNext() { deliveries.append(delivery) }
            return deliveries
        }
    }

    /// The next delivery, waiting for one if needed; nil after the end or once terminated.
    func next() async -> Delivery? {
        await withTaskCancellationHandler {
            await withCheckedContinuation { (continuation: CheckedContinuation<Delivery?, Never>) in
                let ready: Delivery?? = state.withLock { state in
                    if let delivery = state.popNext() { return .some(delivery) }
                    if state.isFinished || (state.isClosed && state.buffer.isEmpty) { return .some(nil) }
                    precondition(state.waiter == nil, "A subscription's deliveries have one reader.")
                    state.waiter = continuation
                    return nil
                }
                if let ready { continuation.resume(returning: ready) }
            }
        } onCancel: {
            terminate()
        }
    }
}
