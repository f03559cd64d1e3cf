import Crypto
import Foundation

/// Signs HS256 tokens with the server's secret, the way `realtime token` does: claims `sub`, `role` and `exp`.
struct TokenMinter: Sendable {
    private let key: SymmetricKey

    /// The two roles the server accepts.
    enum Role: String, Sendable {
        case authenticated
        case serviceRole = "service_role"
    }

    init(secret: String) {
        key = SymmetricKey(data: Data(secret.utf8))
    }

    /// Reads the secret from `REALTIME_JWT_SECRET` when set, else from `file` (the embedded server's `<data-dir>/jwt-secret`).
    static func load(secretFile file: String?) throws -> TokenMinter {
        if let secret = ProcessInfo.processInfo.environment["REALTIME_JWT_SECRET"], !secret.isEmpty {
            return TokenMinter(secret: secret)
        }
        guard let file else { throw BenchError("Give --jwt-secret-file or set REALTIME_JWT_SECRET.") }
        let secret = try String(contentsOfFile: file, encoding: .utf8).trimmingCharacters(in: .whitespacesAndNewlines)
        guard !secret.isEmpty else { throw BenchError("\(file) is empty.") }
        return TokenMinter(secret: secret)
    }

    /// A token for `subject` with `role`, valid for `lifetime` seconds from now.
    func token(subject: String, role: Role, lifetime: Int) -> String {
        let expires = Int(Date().timeIntervalSince1970) + lifetime
        let header = Self.base64URL(Data(#"{"alg":"HS256","typ":"JWT"}"#.utf8))
        let claims = Self.base64URL(Data(#"{"sub":"\#(subject)","role":"\#(role.rawValue)","exp":\#(expires)}"#.utf8))
        let signingInput = header + "." + claims
        let signature = HMAC<SHA256>.authenticationCode(for: Data(signingInput.utf8), using: key)
        return signingInput + "." + Self.base64URL(Data(signature))
    }

    private static func base64URL(_ data: Data) -> String {
        data.base64EncodedString().replacingOccurrences(of: "+", with: "-").replacingOccurrences(of: "/", with: "_")
            .replacingOccurrences(of: "=", with: "")
    }
}

/// A failure of the load tool, told as one sentence.
struct BenchError: Error, CustomStringConvertible {
    var description: String
    init(_ description: String) { self.description = description }
}
