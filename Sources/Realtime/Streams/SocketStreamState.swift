import NIOCore

/// The life of one event stream held at its socket, without I/O: what to write for each delivery the hub sends, when
/// the reader counts as slow, and when the stream ends. ``SocketOutlet`` carries out its actions on the connection's
/// event loop.
///
/// A stream starts by catching up: its handler writes what it missed from the event log (``catchUp(_:)``), while the
/// hub already sends it live deliveries. Those are held, then written at ``caughtUp(through:)`` except the frames the
/// catch-up already wrote. An end that comes meanwhile (revoked, shutdown…) waits for the catch-up frames in hand,
/// which were decided before it, and ends the stream after them. Live, each frame goes out as it comes. The reader is slow when more than `limit` frames are held, or were
/// written while the connection stayed unwritable (the kernel and NIO buffer the rest): the stream then ends as
/// `slowConsumer`, and the client resumes by cursor.
struct SocketStreamState {
    enum Phase: Equatable {
        case catchingUp
        case live
        case ended
    }

    /// What the I/O shell does next.
    enum Action: Equatable {
        case none
        /// Write these frames (then flush); `commitTimes` are those of its change frames, for the delay objective.
        case write([ByteBuffer], commitTimes: [Double])
        /// Write these frames first (if any), then end the stream: write its end frames for `reason` (none when the
        /// client left), flush, and tell the stream's handler.
        case end(EndReason?, after: [ByteBuffer], commitTimes: [Double])
    }

    private(set) var phase = Phase.catchingUp
    /// The highest sequence written; a frame up to it is not written again.
    private(set) var readThrough: Int64
    /// The most frames held, or written while unwritable, before the reader counts as slow.
    let limit: Int
    private var held: [Delivery] = []
    /// An end the hub sent during the catch-up, carried out after the catch-up frames in hand.
    private var pendingEnd: EndReason?
    private var isWritable = true
    private var writtenWhileUnwritable = 0
    /// Whether anything was written since the last keepalive round: a stream that is not idle needs no keepalive.
    private var wroteSinceKeepalive = false

    init(readThrough: Int64, limit: Int) {
        self.readThrough = readThrough
        self.limit = max(1, limit)
    }

    /// The hub's deliveries for this stream, in order.
    mutating func deliver(_ deliveries: some Sequence<Delivery>) -> Action {
        switch phase {
        case .ended:
            return .none
        case .catchingUp:
            guard pendingEnd == nil else { return .none }
            for delivery in deliveries {
                if case .end(let reason) = delivery {
                    // What is held is dropped: a revoked or expired subscriber is sent nothing more live.
                    held = []
                    pendingEnd = reason
                    return .none
                }
                if case .keepalive = delivery { continue }
                held.append(delivery)
            }
            if held.count > limit {
                held = []
                pendingEnd = .slowConsumer
            }
            return .none
        case .live:
            return write(deliveries)
        }
    }

    /// Catch-up frames the handler read from the event log, to write now: followed by the end, if the hub ended the
    /// stream meanwhile.
    mutating func catchUp(_ frames: [ByteBuffer]) -> Action {
        guard phase == .catchingUp else { return .none }
        if let reason = pendingEnd {
            phase = .ended
            return .end(reason, after: frames, commitTimes: [])
        }
        return frames.isEmpty ? .none : .write(frames, commitTimes: [])
    }

    /// The catch-up wrote every frame up to `sequence`: the held deliveries after it go out, and from now on each as it
    /// comes.
    mutating func caughtUp(through sequence: Int64) -> Action {
        guard phase == .catchingUp else { return .none }
        if let reason = pendingEnd {
            phase = .ended
            return .end(reason, after: [], commitTimes: [])
        }
        phase = .live
        readThrough = max(readThrough, sequence)
        let deliveries = held
        held = []
        return write(deliveries)
    }

    /// The connection became writable, or stopped being so.
    mutating func writabilityChanged(to writable: Bool) {
        isWritable = writable
        if writable { writtenWhileUnwritable = 0 }
    }

    /// The client left (its connection closed): the stream ends with nothing more to write.
    mutating func clientLeft() -> Action {
        guard phase != .ended else { return .none }
        phase = .ended
        held = []
        return .end(nil, after: [], commitTimes: [])
    }

    private mutating func write(_ deliveries: some Sequence<Delivery>) -> Action {
        var frames: [ByteBuffer] = []
        var commitTimes: [Double] = []
        var keepalive = false
        for delivery in deliveries {
            switch delivery {
            case .frame(let bytes, let sequence, let committedAt):
                guard sequence > readThrough else { continue }
                readThrough = sequence
                frames.append(bytes)
                commitTimes.append(committedAt)
            case .ephemeral(let bytes):
                frames.append(bytes)
            case .keepalive:
                keepalive = true
            case .end(let reason):
                phase = .ended
                return .end(reason, after: frames, commitTimes: commitTimes)
            }
        }
        if keepalive {
            // One round of keepalives: idle since the last round, it gets one; otherwise it is not idle.
            if frames.isEmpty && !wroteSinceKeepalive { frames.append(SSEFrame.keepalive) }
            wroteSinceKeepalive = false
        } else if !frames.isEmpty {
            wroteSinceKeepalive = true
        }
        guard !frames.isEmpty else { return .none }
        if !isWritable {
            writtenWhileUnwritable += frames.count
            if writtenWhileUnwritable > limit {
                phase = .ended
                return .end(.slowConsumer, after: [], commitTimes: [])
            }
        }
        return .write(frames, commitTimes: commitTimes)
    }
}
