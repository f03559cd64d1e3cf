import Foundation
import HTTPTypes
import Logging
import Testing

@testable import Realtime

@Suite struct ConfigurationTests {
    @Test func defaultsWorkWithNoSetup() throws {
        let configuration = try Configuration.fromEnvironment([:])
        #expect(configuration.host == "127.0.0.1")
        #expect(configuration.port == 8080)
        #expect(configuration.databaseURL == nil)
        #expect(configuration.dataDirectory == ".realtime")
        #expect(configuration.maxBodyBytes == 262_144)
        #expect(configuration.seedDemo)
    }

    @Test func readsEnvironmentAndRejectsNonsense() throws {
        let configuration = try Configuration.fromEnvironment([
            "REALTIME_PORT": "9000", "REALTIME_LOG_LEVEL": "debug", "DATABASE_URL": "postgres://u:p@db:5433/app", "REALTIME_NO_DEMO": "1",
        ])
        #expect(configuration.port == 9000)
        #expect(configuration.logLevel == .debug)
        #expect(configuration.databaseURL == "postgres://u:p@db:5433/app")
        #expect(!configuration.seedDemo)
        #expect(throws: ConfigurationError.self) { try Configuration.fromEnvironment(["REALTIME_PORT": "eighty"]) }
        #expect(throws: ConfigurationError.self) { try Configuration.fromEnvironment(["REALTIME_LOG_LEVEL": "loud"]) }
    }

    @Test func parsesDatabaseURLs() throws {
        let endpoint = try DatabaseEndpoint(url: "postgresql://app%40x:s%3Dcret@db.local:6543/plans?sslmode=require")
        #expect(endpoint == DatabaseEndpoint(host: "db.local", port: 6543, username: "app@x", password: "s=cret", database: "plans", tls: .require))
        #expect(throws: DatabaseURLError.self) { try DatabaseEndpoint(url: "mysql://u@h/db") }
        #expect(throws: DatabaseURLError.self) { try DatabaseEndpoint(url: "postgres://h/db") }
    }
}
