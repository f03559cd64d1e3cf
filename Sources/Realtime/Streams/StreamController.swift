import Foundation
import HTTPTypes
import Hummingbird
import Logging
import NIOCore
import PostgresNIO
import ServiceLifecycle

/// The Server-Sent Events endpoints: `GET /realtime/v1/branch/{id}`, `/realtime/v1/plan/{id}` and
/// `/realtime/v1/stream?channel=…` (many channels on one connection).
///
/// A stream authenticates (header, or `access_token` for EventSource), checks every channel like REST (404 for one the
/// caller cannot see), registers with the hub, replays what the caller missed since `Last-Event-ID` from the event log,
/// and then writes live frames until the client leaves, the hub ends it (revoked, token expired, too slow), or the
/// server shuts down.
struct StreamController {
    let hub: Hub
    let database: Database
    let tokens: TokenAuthority
    let metrics: FeedMetrics
    /// Each user's budget of stream opens and polls.
    let limits: UserRateLimits
    /// False on a node started with the change feed off: streams are refused rather than left silent.
    let enabled: Bool
    /// The reconnect hint, before jitter.
    var retryMilliseconds = 2000
    /// Streams ended by a shutdown are told to reconnect after a random wait up to this, so that the clients of a node
    /// that restarts come back to the others spread out, not all in the same instant.
    var shutdownRetrySpread = Duration.seconds(5)
    static let catchUpBatch = 1000
    /// How long a stream waits for a node that has just started to load its memberships before `503 not_ready`.
    static let loadWait = Duration.seconds(10)

    func addRoutes(to router: Router<AppRequestContext>) {
        router.get("realtime/v1/branch/:id") { request, context in
            try await stream(request, context, channels: [.branch(try context.uuidParameter("id"))])
        }
        router.get("realtime/v1/plan/:id") { request, context in
            try await stream(request, context, channels: [.plan(try context.uuidParameter("id"))])
        }
        router.get("realtime/v1/stream") { request, context in
            let channels = try request.queryPairs.filter { $0.0 == "channel" }.map { try Channel(parsing: $0.1) }
            return try await stream(request, context, channels: channels)
        }
        router.get("realtime/v1/changes") { request, context in
            try await poll(request, context)
        }
    }

    private func stream(_ request: Request, _ context: AppRequestContext, channels: [Channel]) async throws -> Response {
        guard enabled else { throw APIError.notReady("The change feed is turned off on this node (REALTIME_CHANGE_FEED=0).") }
        let (principal, expiresAt) = try await AuthMiddleware.authenticate(request, tokens: tokens, allowQueryToken: true)
        try limits.takeStream(principal)
        let parameters = request.queryPairs
        let options = try SubscriptionOptions(parameters: parameters)
        let cursorText = request.headers[.lastEventID] ?? parameters.last(where: { $0.0 == "last_event_id" })?.1
        var parsedCursor: Cursor?
        if let cursorText {
            guard let parsed = Cursor(cursorText) else { throw APIError.invalidParameter("Last-Event-ID is not a cursor of this server.") }
            parsedCursor = parsed
        }
        let cursor = parsedCursor
        try await hub.waitUntilLoaded(within: Self.loadWait)
        let memberships = try await learnAccess(of: principal, to: Set(channels))
        let outlet = try await SocketOutlet.attach(
            to: context.channel,
            readThrough: cursor?.sequence ?? 0,
            limit: hub.bufferLimit,
            metrics: metrics,
            shutdownRetry: shutdownRetry
        )
        let subscription: SubscriptionID
        let needsReset: Bool
        do {
            subscription = try hub.subscribe(
                principal: principal,
                channels: Set(channels),
                options: options,
                expiresAt: expiresAt,
                after: cursor?.sequence ?? 0,
                snapshot: cursor?.snapshot,
                admittedWith: memberships,
                outlet: .socket(outlet)
            )
        } catch {
            outlet.close()
            throw error
        }
        // However the stream ends — even if the response is never written because the client left first — its entry
        // leaves the hub.
        outlet.ended.whenComplete { [hub] _ in hub.unsubscribe(subscription) }
        do {
            needsReset = try await isBeyondRetention(cursor)
        } catch {
            hub.unsubscribe(subscription)
            throw error
        }
        let logger = context.logger
        var headers = HTTPFields()
        headers[.contentType] = "text/event-stream; charset=utf-8"
        headers[.cacheControl] = "no-cache, no-transform"
        headers[HTTPField.Name("X-Accel-Buffering")!] = "no"
        let retry = retryMilliseconds + Int.random(in: 0...retryMilliseconds)
        let streamChannels = Set(channels)
        return Response(
            status: .ok,
            headers: headers,
            body: ResponseBody { [self] writer in
                metrics.streamOpened()
                var endedBy = "client_closed"
                defer {
                    hub.unsubscribe(subscription)
                    metrics.streamClosed(endedBy)
                }
                // The head and the first frame go through Hummingbird's writer; its writes are handed to the event loop
                // before it returns, so the outlet's writes (submitted to the same loop after) come after them.
                try await writer.write(SSEFrame.retry(milliseconds: retry))
                if needsReset {
                    try await writer.write(SSEFrame.control(.reset, reason: "The cursor is older than the event log's retention: load a snapshot."))
                    try await writer.finish(nil)
                    return
                }
                if let cursor {
                    // In a child task: the event log's reads take a deep stack, which would otherwise stay allocated
                    // with the connection's task for the stream's whole life (see ``ShallowConnectionResponder``).
                    async let caughtUp: Void = writeCatchUp(
                        of: subscription, for: principal, after: cursor.sequence, channels: streamChannels, to: outlet, logger: logger)
                    try await caughtUp
                }
                // From here the hub's deliveries are written at the socket by its event loop; this task only waits for
                // the end: the client leaves (the stream's socket handler sees its side close), the hub or the outlet
                // ends the stream, or the server shuts down gracefully — so that shutting down never waits on open
                // streams. The outlet has written the end frame by then.
                hub.goLive(subscription)
                let ended: EndReason? = try await withGracefulShutdownHandler {
                    try await outlet.ended.get()
                } onGracefulShutdown: {
                    outlet.end(.shutdown)
                }
                if let ended { endedBy = ended.metricLabel }
                try await writer.finish(nil)
            }
        )
    }

    /// Writes what the stream's user missed after `cursor`, batch by batch, as they may see it: with the memberships
    /// they had at each event's position, not today's. Stops early when the stream ends meanwhile.
    private func writeCatchUp(
        of subscription: SubscriptionID, for principal: Principal, after cursor: Int64, channels: Set<Channel>, to outlet: SocketOutlet,
        logger: Logger
    ) async throws {
        var history = try await Self.history(of: principal, after: cursor, database: database)
        let memberBranches = hub.branches(of: channels)
        var after = cursor
        while true {
            let (events, _) = try await EventLog.read(
                after: after,
                limit: Self.catchUpBatch,
                channels: channels,
                memberBranches: memberBranches,
                client: database.client,
                logger: logger
            )
            guard let last = events.last else { return }
            let frames = hub.catchUp(subscription, with: events, history: &history).compactMap(\.frameBytes)
            let goesOn = try await outlet.writeCatchUp(frames)
            metrics.framesWritten(frames.count)
            guard goesOn, events.count == Self.catchUpBatch else { return }
            after = last.sequence
        }
    }

    /// A random reconnect wait for a stream ended by shutdown: from a tenth of the spread to all of it.
    func shutdownRetry() -> Int {
        let spread = Int(shutdownRetrySpread.components.seconds * 1000 + shutdownRetrySpread.components.attoseconds / 1_000_000_000_000_000)
        return Int.random(in: max(1, spread / 10)...max(1, spread))
    }

    /// The most a poll may wait for new events, and the most events it returns.
    static let maxPollWait = 30
    static let maxPollLimit = 1000

    /// `GET /realtime/v1/changes?channel=…&after=<cursor>&limit=…&wait=<seconds>`: the events a stream would carry,
    /// as `{"events":[…],"cursor":"…"}`; with `wait`, a long poll that answers as soon as there is something new. After a
    /// TRUNCATE of a table of its channels the answer stops there with `"reset":true`: load a snapshot.
    private func poll(_ request: Request, _ context: AppRequestContext) async throws -> Response {
        guard enabled else { throw APIError.notReady("The change feed is turned off on this node (REALTIME_CHANGE_FEED=0).") }
        let (principal, _) = try await AuthMiddleware.authenticate(request, tokens: tokens, allowQueryToken: true)
        try limits.takePoll(principal)
        let parameters = request.queryPairs
        let channels = try Set(parameters.filter { $0.0 == "channel" }.map { try Channel(parsing: $0.1) })
        guard !channels.isEmpty else { throw APIError.invalidParameter("Name at least one channel, e.g. channel=branch:<uuid>.") }
        guard channels.count <= Channel.maxPerSubscription else {
            throw APIError.invalidParameter("A poll takes at most \(Channel.maxPerSubscription) channels.")
        }
        let options = try SubscriptionOptions(parameters: parameters)
        var cursor = Cursor(sequence: 0)
        if let text = parameters.last(where: { $0.0 == "after" })?.1 {
            guard let parsed = Cursor(text) else { throw APIError.invalidParameter("after is not a cursor of this server.") }
            cursor = parsed
        }
        let limit = try Self.integer(parameters, "limit", default: 100, in: 1...Self.maxPollLimit)
        let wait = try Self.integer(parameters, "wait", default: 0, in: 0...Self.maxPollWait)
        try await learnAccess(of: principal, to: channels)
        if try await isBeyondRetention(cursor) {
            throw APIError(.gone, code: "cursor_expired", message: "The cursor is older than the event log's retention: load a snapshot.")
        }
        let deadline = ContinuousClock.now + .seconds(wait)
        var scanned = cursor.sequence
        // Like a stream's frame ids, event ids carry the snapshot until an event settles it.
        var snapshot = cursor.snapshot
        var found: [String] = []
        // A TRUNCATE of a table of these channels ends the answer there: the caller loads a snapshot.
        var reset = false
        // Events are shown by the memberships the user had at each one's position in the log, not by today's.
        var history = try await Self.history(of: principal, after: cursor.sequence, database: database)
        let memberBranches = hub.branches(of: channels)
        readLoop: while true {
            while found.count < limit {
                let (events, readThrough) = try await EventLog.read(
                    after: scanned,
                    limit: Self.catchUpBatch,
                    channels: channels,
                    memberBranches: memberBranches,
                    client: database.client,
                    logger: context.logger
                )
                for event in events {
                    guard found.count < limit else { break readLoop }
                    scanned = event.sequence
                    history?.apply(event)
                    if event.resets(channels, options) {
                        reset = true
                        break readLoop
                    }
                    if snapshot?.isSettled(by: event.xid) == true { snapshot = nil }
                    var fanOut = EventFanOut(event)
                    let memberships = history?.memberships(at: event.sequence) ?? Memberships()
                    let reader = EventFanOut.Reader(principal: principal, options: options, holds: cursor)
                    guard let (operation, readable) = fanOut.view(for: reader, mask: fanOut.mask(for: channels), memberships: memberships)
                    else { continue }
                    let id = Cursor(sequence: event.sequence, snapshot: snapshot).description
                    found.append(SSEFrame.changeJSON(event.placed(as: operation), channels: fanOut.channels(readable), id: id))
                }
                scanned = max(scanned, readThrough)
                if events.count < Self.catchUpBatch { break }
            }
            if !found.isEmpty || ContinuousClock.now >= deadline || Task.isShuttingDownGracefully { break }
            try await Task.sleep(for: .milliseconds(200))
        }
        // A snapshot cursor keeps its snapshot until an event has settled it, so that none is repeated.
        let next = scanned > cursor.sequence ? Cursor(sequence: scanned, snapshot: snapshot) : cursor
        let resetField = reset ? #","reset":true"# : ""
        return .json(.ok, #"{"events":["# + found.joined(separator: ",") + #"],"cursor":"# + JSONText.quote(next.description) + resetField + "}")
    }

    private static func integer(_ parameters: [(String, String)], _ name: String, default value: Int, in range: ClosedRange<Int>) throws -> Int {
        guard let text = parameters.last(where: { $0.0 == name })?.1 else { return value }
        guard let number = Int(text), range.contains(number) else {
            throw APIError.invalidParameter("\(name) must be an integer from \(range.lowerBound) to \(range.upperBound).")
        }
        return number
    }

    /// A user's memberships across the log from `cursor` on; nil for the service role, which reads everything.
    static func history(of principal: Principal, after cursor: Int64, database: Database) async throws -> MembershipHistory? {
        guard case .user(let user) = principal else { return nil }
        return try await MembershipHistory.load(userID: user, after: cursor, client: database.client, logger: database.logger)
    }

    @discardableResult
    private func learnAccess(of principal: Principal, to channels: Set<Channel>) async throws -> Memberships {
        try await ChannelAccess(hub: hub, database: database).check(principal, channels)
    }

    /// Whether events after the cursor may already have been pruned, so that resuming would miss some.
    private func isBeyondRetention(_ cursor: Cursor?) async throws -> Bool {
        guard let cursor else { return false }
        if cursor.sequence > (try await EventLog.newestSequence(client: database.client, logger: database.logger)) {
            return true  // not a cursor of this event log (e.g. from a database that was reset)
        }
        guard let oldest = try await EventLog.oldestSequence(client: database.client, logger: database.logger) else {
            return false
        }
        return cursor.sequence < oldest - 1
    }
}

extension Delivery {
    /// The bytes of a frame delivery, change or ephemeral.
    var frameBytes: ByteBuffer? {
        switch self {
        case .frame(let bytes, _, _), .ephemeral(let bytes): bytes
        case .keepalive, .end: nil
        }
    }
}

extension HTTPField.Name {
    /// `Last-Event-ID`, sent by EventSource when it reconnects.
    static let lastEventID = HTTPField.Name("Last-Event-ID")!
}
