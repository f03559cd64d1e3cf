import Foundation
import Hummingbird

/// Per-user budgets for the requests that cost the server and the database the most: REST writes, polls and stream
/// opens, each a token bucket per user (see ``RateLimiter``). The service role is not limited: it is the operator's own
/// scripts and integrations. Beyond a budget: `429 rate_limited` with `Retry-After`.
public struct UserRateLimits: Sendable {
    let writes: RateLimiter
    let polls: RateLimiter
    let streams: RateLimiter

    public init(configuration: Configuration) {
        writes = RateLimiter(rate: configuration.userWriteRate, burst: Double(configuration.userWriteBurst))
        polls = RateLimiter(rate: configuration.userPollRate, burst: Double(configuration.userPollBurst))
        streams = RateLimiter(rate: configuration.userStreamRate, burst: Double(configuration.userStreamBurst))
    }

    /// Takes one poll from the user's budget.
    ///
    /// - Throws: `APIError` 429 `rate_limited` when it is spent.
    func takePoll(_ principal: Principal) throws(APIError) { try take(polls, principal, "polls") }

    /// Takes one stream open from the user's budget.
    ///
    /// - Throws: `APIError` 429 `rate_limited` when it is spent.
    func takeStream(_ principal: Principal) throws(APIError) { try take(streams, principal, "stream opens") }

    /// Takes one write from the user's budget.
    ///
    /// - Throws: `APIError` 429 `rate_limited` when it is spent.
    func takeWrite(_ principal: Principal) throws(APIError) { try take(writes, principal, "writes") }

    private func take(_ limiter: RateLimiter, _ principal: Principal, _ what: String) throws(APIError) {
        guard case .user(let user) = principal, let wait = limiter.take(user.uuidString) else { return }
        throw .rateLimited(retryAfter: wait, what: what)
    }
}

/// Charges every REST write (POST, PUT, PATCH, DELETE) to its user's write budget, after authentication.
struct WriteRateLimitMiddleware: RouterMiddleware {
    typealias Context = AppRequestContext

    let limits: UserRateLimits

    func handle(_ request: Request, context: Context, next: (Request, Context) async throws -> Response) async throws -> Response {
        if request.method != .get && request.method != .head, let principal = context.principal {
            try limits.takeWrite(principal)
        }
        return try await next(request, context)
    }
}
