import Foundation
import Hummingbird
import Logging

/// Turns `Authorization: Bearer <JWT>` into the request's principal, or answers 401 (403 for the service role
/// from a browser).
struct AuthMiddleware: RouterMiddleware {
    typealias Context = AppRequestContext

    let tokens: TokenAuthority

    func handle(_ request: Request, context: Context, next: (Request, Context) async throws -> Response) async throws -> Response {
        guard let header = request.headers[.authorization] else { throw APIError.missingToken }
        let parts = header.split(separator: " ", maxSplits: 1, omittingEmptySubsequences: true)
        guard parts.count == 2, parts[0].lowercased() == "bearer" else {
            throw APIError.invalidToken("The Authorization header must be 'Bearer <token>'.")
        }
        let principal: Principal
        do {
            principal = try await tokens.principal(for: String(parts[1]).trimmingCharacters(in: .whitespaces))
        } catch {
            switch error {
            case .expired: throw APIError.tokenExpired
            case .badSignature: throw APIError.invalidToken("The token's signature does not match.")
            case .malformed(let reason), .invalidClaims(let reason): throw APIError.invalidToken("The token is invalid: \(reason).")
            }
        }
        if principal.isService, request.headers[.origin] != nil {
            throw APIError.serviceRoleFromBrowser
        }
        var context = context
        context.principal = principal
        context.logger[metadataKey: "user"] = "\(principal)"
        return try await next(request, context)
    }
}
