import Foundation

/// Who is making a request, as proven by their token.
public enum Principal: Sendable, Hashable, CustomStringConvertible {
    /// A signed-in user (`role: authenticated`); policies apply.
    case user(UUID)
    /// The service role (`role: service_role`), for scripts and integrations; it bypasses policies.
    /// It may carry the user id it acts for, which is stamped into `updated_by`.
    case service(actingUser: UUID?)

    /// The user id to stamp as `updated_by`, if any.
    public var userID: UUID? {
        switch self {
        case .user(let id): id
        case .service(let id): id
        }
    }

    public var isService: Bool {
        if case .service = self { return true }
        return false
    }

    /// A stable text key for this principal, e.g. for idempotency records.
    public var key: String {
        switch self {
        case .user(let id): "user:\(id.uuidString.lowercased())"
        case .service: "service_role"
        }
    }

    public var description: String { key }
}
