import Hummingbird
import Logging
import NIOCore

/// The request context of every route: Hummingbird's core storage plus the authenticated principal.
public struct AppRequestContext: RequestContext {
    public var coreContext: CoreRequestContextStorage
    /// Set by `AuthMiddleware` on routes that need a token.
    public var principal: Principal?
    /// The connection (or HTTP/2 stream) the request came on: event streams are written to it directly.
    public let channel: any NIOCore.Channel

    public init(source: Source) {
        self.coreContext = .init(source: source)
        self.principal = nil
        self.channel = source.channel
    }

    /// The principal of an authenticated route; `AuthMiddleware` guarantees it is set.
    func requirePrincipal() throws -> Principal {
        guard let principal else { throw APIError.missingToken }
        return principal
    }
}
