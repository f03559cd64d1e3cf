import Foundation

/// A generated secret kept in a file readable by its owner only (mode 0600), e.g. the embedded default's JWT secret.
public enum SecretFile {
    /// Reads the secret at `path`, creating it with 48 random bytes (base64url) when it does not exist.
    public static func loadOrCreate(at path: String) throws -> String {
        let fileManager = FileManager.default
        if let existing = try? String(contentsOfFile: path, encoding: .utf8) {
            let secret = existing.trimmingCharacters(in: .whitespacesAndNewlines)
            if !secret.isEmpty { return secret }
        }
        try fileManager.createDirectory(atPath: (path as NSString).deletingLastPathComponent, withIntermediateDirectories: true)
        var generator = SystemRandomNumberGenerator()
        let bytes = (0..<48).map { _ in UInt8.random(in: 0...255, using: &generator) }
        let secret = Data(bytes).base64EncodedString()
            .replacingOccurrences(of: "+", with: "-").replacingOccurrences(of: "/", with: "_").replacingOccurrences(of: "=", with: "")
        guard fileManager.createFile(atPath: path, contents: Data(secret.utf8), attributes: [.posixPermissions: 0o600]) else {
            throw ConfigurationError("Cannot write the secret file \(path).")
        }
        return secret
    }
}
