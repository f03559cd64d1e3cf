import Hummingbird
import Logging

/// The request context of every route: Hummingbird's core storage plus the authenticated principal.
public struct AppRequestContext: RequestContext {
    public var coreContext: CoreRequestContextStorage
    /// Set by `AuthMiddleware` on routes that need a token.
    public var principal: Principal?

    public init(source: Source) {
        self.coreContext = .init(source: source)
        self.principal = nil
    }

    /// The principal of an authenticated route; `AuthMiddleware` guarantees it is set.
    func requirePrincipal() throws -> Principal {
        guard let principal else { throw APIError.missingToken }
        return principal
    }
}
