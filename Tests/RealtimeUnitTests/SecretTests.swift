import Foundation
import HTTPTypes
import Logging
import Testing

@testable import Realtime

@Suite struct SecretTests {
    @Test func shortSecretsAreRefused() async {
        await #expect(throws: ConfigurationError.self) { try await TokenAuthority(secret: "too-short") }
    }

    @Test func aGeneratedSecretIsKeptReadableByItsOwnerOnlyAndReused() throws {
        let path = RepositoryFiles.scratchDirectory() + "/data/jwt-secret"
        let secret = try SecretFile.loadOrCreate(at: path)
        #expect(secret.count >= 64, "48 random bytes, base64url")
        let mode = try #require(try FileManager.default.attributesOfItem(atPath: path)[.posixPermissions] as? Int)
        #expect(mode & 0o777 == 0o600, "mode \(String(mode, radix: 8))")
        #expect(try SecretFile.loadOrCreate(at: path) == secret, "the same secret on the next start")
        #expect(try SecretFile.loadOrCreate(at: RepositoryFiles.scratchDirectory() + "/other") != secret)
    }
}
