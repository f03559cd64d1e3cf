import Foundation
import Hummingbird
import Logging

/// Turns `Authorization: Bearer <JWT>` into the request's principal, or answers 401 (403 for the service role
/// from a browser).
struct AuthMiddleware: RouterMiddleware {
    typealias Context = AppRequestContext

    let tokens: TokenAuthority

    func handle(_ request: Request, context: Context, next: (Request, Context) async throws -> Response) async throws -> Response {
        let (principal, _) = try await Self.authenticate(request, tokens: tokens, allowQueryToken: false)
        var context = context
        context.principal = principal
        context.logger[metadataKey: "user"] = "\(principal)"
        return try await next(request, context)
    }

    /// The principal a request's token proves, and when the token expires.
    ///
    /// - Parameter allowQueryToken: also accept `?access_token=`, for EventSource, which cannot set headers.
    static func authenticate(_ request: Request, tokens: TokenAuthority, allowQueryToken: Bool) async throws -> (Principal, Date) {
        let token: String
        if let header = request.headers[.authorization] {
            let parts = header.split(separator: " ", maxSplits: 1, omittingEmptySubsequences: true)
            guard parts.count == 2, parts[0].lowercased() == "bearer" else {
                throw APIError.invalidToken("The Authorization header must be 'Bearer <token>'.")
            }
            token = String(parts[1]).trimmingCharacters(in: .whitespaces)
        } else if allowQueryToken, let query = request.queryPairs.last(where: { $0.0 == "access_token" }) {
            token = query.1
        } else {
            throw APIError.missingToken
        }
        let verified: (principal: Principal, expiresAt: Date)
        do {
            verified = try await tokens.verify(token)
        } catch {
            switch error {
            case .expired: throw APIError.tokenExpired
            case .badSignature: throw APIError.invalidToken("The token's signature does not match.")
            case .malformed(let reason), .invalidClaims(let reason): throw APIError.invalidToken("The token is invalid: \(reason).")
            }
        }
        if verified.principal.isService, request.headers[.origin] != nil {
            throw APIError.serviceRoleFromBrowser
        }
        return verified
    }
}
