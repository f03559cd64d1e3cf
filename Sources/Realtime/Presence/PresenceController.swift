import Foundation
import Hummingbird
import Logging

/// `/realtime/v1/presence/plan/{id}` (heartbeat, leave, list) and `/realtime/v1/broadcast/plan/{id}`.
///
/// Only users who may read the plan take part; the service role may only observe (list, or subscribe to
/// `presence:plan:<id>`). Heartbeats and broadcasts are rate-limited per user and node.
struct PresenceController {
    let presence: PresenceService
    let access: ChannelAccess
    let tokens: TokenAuthority
    let heartbeatLimiter: RateLimiter
    let broadcastLimiter: RateLimiter
    /// A heartbeat or broadcast body is small; anything bigger is refused before it is parsed.
    static let maxBodyBytes = 8 * 1024

    func addRoutes(to router: Router<AppRequestContext>) {
        router.post("realtime/v1/presence/plan/:id") { request, context in try await heartbeat(request, context) }
        router.delete("realtime/v1/presence/plan/:id") { request, context in try await leave(request, context) }
        router.get("realtime/v1/presence/plan/:id") { request, context in try await list(request, context) }
        router.post("realtime/v1/broadcast/plan/:id") { request, context in try await broadcast(request, context) }
    }

    private func heartbeat(_ request: Request, _ context: AppRequestContext) async throws -> Response {
        let plan = try context.uuidParameter("id")
        let user = try await participant(request, action: "be present on")
        var request = request
        let (body, _) = try await request.jsonObject(limit: Self.maxBodyBytes)
        let state = try PresenceState(body: body)
        if let wait = heartbeatLimiter.take("presence:\(user)") { throw APIError.rateLimited(retryAfter: wait, what: "presence heartbeats") }
        try await access.checkPlan(.user(user), plan)
        let entry = presence.heartbeat(user: user, plan: plan, state: state)
        let interval = presence.heartbeatInterval.components.seconds
        let reply = HeartbeatReply(
            channel: Channel.presence(plan: plan).description,
            entry: entry.view(),
            ttlSeconds: presence.ttl.components.seconds,
            heartbeatSeconds: interval,
            nextHeartbeatAt: Date().addingTimeInterval(TimeInterval(interval))
        )
        return .json(.ok, JSONText.encode(reply))
    }

    private func leave(_ request: Request, _ context: AppRequestContext) async throws -> Response {
        let plan = try context.uuidParameter("id")
        let user = try await participant(request, action: "leave")
        try await access.checkPlan(.user(user), plan)
        presence.leave(user: user, plan: plan)
        return .noContent
    }

    private func list(_ request: Request, _ context: AppRequestContext) async throws -> Response {
        let plan = try context.uuidParameter("id")
        let (principal, _) = try await AuthMiddleware.authenticate(request, tokens: tokens, allowQueryToken: false)
        try await access.checkPlan(principal, plan)
        let entries = presence.hub.presences(on: plan)
        let list = PresenceList(channel: Channel.presence(plan: plan).description, presences: entries.map { $0.view(includingNode: true) })
        return .json(.ok, JSONText.encode(list))
    }

    private func broadcast(_ request: Request, _ context: AppRequestContext) async throws -> Response {
        let plan = try context.uuidParameter("id")
        let user = try await participant(request, action: "broadcast to")
        var request = request
        let (body, _) = try await request.jsonObject(limit: Self.maxBodyBytes)
        let message = try BroadcastMessage(planID: plan, userID: user, body: body)
        if let wait = broadcastLimiter.take("broadcast:\(user)") { throw APIError.rateLimited(retryAfter: wait, what: "broadcasts") }
        try await access.checkPlan(.user(user), plan)
        presence.broadcast(message)
        return .json(.accepted, JSONText.encode(BroadcastAccepted(channel: Channel.plan(plan).description, event: message.event)))
    }

    /// The user making a presence or broadcast request; the service role gets 403, as it may only observe.
    private func participant(_ request: Request, action: String) async throws -> UUID {
        let (principal, _) = try await AuthMiddleware.authenticate(request, tokens: tokens, allowQueryToken: false)
        guard case .user(let user) = principal else {
            throw APIError.forbidden("The service role may only observe presence and broadcasts; it cannot \(action) a plan.")
        }
        return user
    }
}

/// The answer to a heartbeat: the entry's fields beside where it is and when to beat again.
private struct HeartbeatReply: Encodable {
    var channel: String
    var entry: PresenceView
    var ttlSeconds: Int64
    var heartbeatSeconds: Int64
    var nextHeartbeatAt: Date

    enum CodingKeys: String, CodingKey {
        case channel
        case ttlSeconds = "ttl_seconds"
        case heartbeatSeconds = "heartbeat_seconds"
        case nextHeartbeatAt = "next_heartbeat_at"
    }

    func encode(to encoder: any Encoder) throws {
        try entry.encode(to: encoder)
        var container = encoder.container(keyedBy: CodingKeys.self)
        try container.encode(channel, forKey: .channel)
        try container.encode(ttlSeconds, forKey: .ttlSeconds)
        try container.encode(heartbeatSeconds, forKey: .heartbeatSeconds)
        try container.encode(nextHeartbeatAt, forKey: .nextHeartbeatAt)
    }
}

/// Everyone present on a plan, with the node that holds each entry.
private struct PresenceList: Encodable {
    var channel: String
    var presences: [PresenceView]
}

/// The answer to a broadcast: where it went, under what name.
private struct BroadcastAccepted: Encodable {
    var channel: String
    var event: String
}
