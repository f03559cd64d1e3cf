import NIOCore

/// Why the hub ended a subscription.
public enum EndReason: Sendable, Equatable, CaseIterable {
    /// The user lost access to a branch of the subscription's channels.
    case revoked
    /// The subscription's token expired.
    case tokenExpired
    /// The subscriber did not read fast enough and its buffer filled up; it resumes by cursor.
    case slowConsumer
    /// The hub shut down.
    case shutdown
    /// A table of its channels was emptied at once (TRUNCATE): what the subscriber holds is stale; it loads a snapshot.
    case reset
}

/// What a subscriber reads from its stream.
public enum Delivery: Sendable, Equatable {
    /// An encoded SSE frame (see ``SSEFrame/change(_:channels:)``) of the event with this sequence, committed at
    /// `committedAt` (seconds since 1970, for the delay objective); write it as is.
    case frame(ByteBuffer, sequence: Int64, committedAt: Double)
    /// An encoded SSE frame of something ephemeral (presence, broadcast): it has no sequence and is never replayed.
    case ephemeral(ByteBuffer)
    /// Nothing happened for a while: write ``SSEFrame/keepalive`` (see ``Hub/sendKeepalives()``).
    case keepalive
    /// The last delivery: write ``SSEFrame/end(_:)`` and close the response.
    case end(reason: EndReason)
}
