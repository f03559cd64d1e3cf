import Foundation
import JWTKit

/// The claims of our tokens, as Supabase uses them: `sub`, `role` and `exp`.
public struct TokenClaims: JWTPayload, Equatable {
    /// The role claim's two accepted values.
    public enum Role: String, Codable, Sendable {
        case authenticated
        case serviceRole = "service_role"
    }

    public var sub: SubjectClaim
    public var role: Role
    public var exp: ExpirationClaim

    public init(sub: String, role: Role, expiresAt: Date) {
        self.sub = SubjectClaim(value: sub)
        self.role = role
        self.exp = ExpirationClaim(value: expiresAt)
    }

    public func verify(using algorithm: some JWTAlgorithm) async throws {
        try exp.verifyNotExpired()
    }
}

/// Issues and checks HS256 tokens with the server's secret.
public struct TokenAuthority: Sendable {
    /// Why a token was refused.
    public enum Failure: Error, Equatable, Sendable {
        case malformed(String)
        case badSignature
        case expired
        case invalidClaims(String)
    }

    private let keys: JWTKeyCollection

    /// The shortest secret accepted: HS256 needs a key at least as long as its 32-byte hash.
    public static let minimumSecretBytes = 32

    public init(secret: String) async throws(ConfigurationError) {
        guard secret.utf8.count >= Self.minimumSecretBytes else {
            throw ConfigurationError("The JWT secret must be at least \(Self.minimumSecretBytes) bytes long (REALTIME_JWT_SECRET).")
        }
        let keys = JWTKeyCollection()
        await keys.add(hmac: HMACKey(from: secret), digestAlgorithm: .sha256)
        self.keys = keys
    }

    /// Signs a token for `subject` with `role`, valid for `lifetime` seconds.
    public func issue(subject: String, role: TokenClaims.Role, lifetime: TimeInterval, now: Date = Date()) async throws -> String {
        try await keys.sign(TokenClaims(sub: subject, role: role, expiresAt: now.addingTimeInterval(lifetime)))
    }

    /// Verifies a bearer token and turns it into the principal it proves.
    public func principal(for token: String) async throws(Failure) -> Principal {
        try await verify(token).principal
    }

    /// Verifies a bearer token: the principal it proves and when it expires (a stream ends then).
    public func verify(_ token: String) async throws(Failure) -> (principal: Principal, expiresAt: Date) {
        try Self.requireHS256Header(token)
        let claims: TokenClaims
        do {
            claims = try await keys.verify(token, as: TokenClaims.self)
        } catch let error as JWTError {
            switch error.errorType {
            case .claimVerificationFailure where error.reason == "expired": throw .expired
            case .signatureVerificationFailed: throw .badSignature
            case .claimVerificationFailure: throw .invalidClaims(error.reason ?? "a claim failed verification")
            default: throw .malformed(error.reason ?? "the token could not be decoded")
            }
        } catch {
            throw .malformed("the token could not be decoded")
        }
        let subject = UUID(uuidString: claims.sub.value)
        switch claims.role {
        case .authenticated:
            guard let subject else { throw .invalidClaims("sub must be a user id (uuid)") }
            return (.user(subject), claims.exp.value)
        case .serviceRole:
            return (.service(actingUser: subject), claims.exp.value)
        }
    }

    /// Only HS256 is accepted: a token naming another algorithm (or `none`) is refused before any verification.
    private static func requireHS256Header(_ token: String) throws(Failure) {
        let parts = token.split(separator: ".", omittingEmptySubsequences: false)
        guard parts.count == 3 else { throw .malformed("a JWT has three dot-separated parts") }
        var base64 = parts[0].replacingOccurrences(of: "-", with: "+").replacingOccurrences(of: "_", with: "/")
        base64 += String(repeating: "=", count: (4 - base64.count % 4) % 4)
        guard let data = Data(base64Encoded: base64),
            let header = try? JSONSerialization.jsonObject(with: data) as? [String: Any]
        else { throw .malformed("the token header is not base64url JSON") }
        guard header["alg"] as? String == "HS256" else { throw .malformed("only HS256 tokens are accepted") }
    }
}
