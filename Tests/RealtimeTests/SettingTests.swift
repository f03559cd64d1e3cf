import Foundation
import Logging
import Testing

@testable import Realtime

/// The one table of settings: the command line, the environment and the README agree with it.
@Suite struct SettingTests {
    @Test func flagsWinOverTheEnvironmentAndEveryValueIsChecked() throws {
        let environment = ["REALTIME_PORT": "9000", "REALTIME_USER_WRITE_RATE": "7.5", "REALTIME_RELAY": "0", "REALTIME_HOST": ""]
        let configuration = try Configuration.resolve(
            arguments: ["--port", "9100", "--max-body-bytes=4096", "--no-demo", "--log-level", "DEBUG"], environment: environment,
            for: .server)
        #expect(configuration.port == 9100)
        #expect(configuration.maxBodyBytes == 4096)
        #expect(configuration.userWriteRate == 7.5)
        #expect(!configuration.runsRelay && !configuration.seedDemo && configuration.changeFeedEnabled)
        #expect(configuration.logLevel == .debug)
        #expect(configuration.host == "127.0.0.1", "an empty variable counts as unset")

        let rejected: [([String], [String: String], String)] = [
            (["--max-body-bytes", "10"], [:], "--max-body-bytes must be an integer from 1024"),
            (["--db-pool-size", "0"], [:], "--db-pool-size must be an integer from 1 to 500"),
            (["--user-poll-rate", "nan"], [:], "--user-poll-rate must be a number from 0.01 to 10000"),
            (["--bogus", "1"], [:], "unknown option '--bogus'"),
            (["--port"], [:], "--port needs a value"),
            (["--no-relay=yes"], [:], "--no-relay takes no value"),
            (["9000"], [:], "unexpected argument '9000'"),
            ([], ["REALTIME_CHANGE_FEED": "maybe"], "REALTIME_CHANGE_FEED must be 1 or 0"),
            ([], ["REALTIME_SLO_DISCONNECT_PERCENT": "0"], "REALTIME_SLO_DISCONNECT_PERCENT must be a number from 0.001 to 100"),
        ]
        for (arguments, environment, message) in rejected {
            let error = #expect(throws: ConfigurationError.self) {
                try Configuration.resolve(arguments: arguments, environment: environment, for: .server)
            }
            #expect(error?.description.hasPrefix(message) == true, "\(arguments) \(environment): \(error?.description ?? "no error")")
        }
    }

    @Test func migrateTakesOnlyTheDatabaseSettings() throws {
        let configuration = try Configuration.resolve(
            arguments: ["--database-url", "postgres://u@db/app", "--migrations-dir", "/m", "--data-dir", "/d", "--log-level", "error"],
            environment: ["REALTIME_PORT": "not read by migrate"], for: .database)
        #expect(configuration.databaseURL == "postgres://u@db/app" && configuration.migrationsDirectory == "/m")
        #expect(configuration.dataDirectory == "/d" && configuration.logLevel == .error)
        #expect(throws: ConfigurationError.self) { try Configuration.resolve(arguments: ["--port", "1"], environment: [:], for: .database) }
    }

    @Test func eachSettingIsWrittenOnceAndItsDefaultIsAllowed() throws {
        let flags = Setting.all.compactMap(\.flag)
        let variables = Setting.all.map(\.environment)
        #expect(Set(flags).count == flags.count, "a flag twice in Setting.all")
        #expect(Set(variables).count == variables.count, "an environment variable twice in Setting.all")
        // Every default passes its own check: given back as a flag, it changes nothing.
        let defaults = try Configuration.resolve(arguments: [], environment: [:], for: .server)
        for setting in Setting.all {
            guard let option = setting.option, case .value = setting.kind, !setting.defaultValue.hasPrefix("(") else { continue }
            if setting.flag == "node-id" || setting.flag == "migrations-dir" { continue }  // computed at start, shown in words
            let given = try Configuration.resolve(arguments: [option, setting.defaultValue], environment: [:], for: .server)
            #expect(setting.defaultText(given) == setting.defaultText(defaults), "\(option) \(setting.defaultValue)")
        }
    }

    static var readme: String {
        get throws { try String(contentsOfFile: TestServer.repositoryRoot + "/README.md", encoding: .utf8) }
    }

    @Test func theReadmeListsEverySetting() throws {
        let readme = try Self.readme
        let start = try #require(readme.range(of: "<!-- settings: generated from Setting.all"), "the README's settings table has no start marker")
        let end = try #require(readme.range(of: "<!-- /settings -->"), "the README's settings table has no end marker")
        let table = readme[start.upperBound..<end.lowerBound].split(separator: "\n").dropFirst().joined(separator: "\n")
        let expected = Setting.markdownTable()
        #expect(table == expected, "the README's configuration table differs from Setting.all; it should read:\n\(expected)")
    }

    /// `realtime serve --help` lists what the table says (the help wraps lines, so whitespace is compared loosely).
    @Test func serveHelpListsEverySetting() throws {
        let binary = TestServer.repositoryRoot + "/.build/debug/realtime"
        try #require(FileManager.default.isExecutableFile(atPath: binary), "build the executable first (swift build --build-tests)")
        let process = Process()
        process.executableURL = URL(fileURLWithPath: binary)
        process.arguments = ["serve", "--help"]
        let output = Pipe()
        process.standardOutput = output
        try process.run()
        let data = output.fileHandleForReading.readDataToEndOfFile()
        process.waitUntilExit()
        let words = { (text: String) in text.split(whereSeparator: \.isWhitespace).joined(separator: " ") }
        let help = words(String(decoding: data, as: UTF8.self))
        #expect(help.contains(words(Setting.help(for: .server))), "realtime serve --help:\n\(help)")
        for setting in Setting.all {
            #expect(help.contains(setting.option ?? setting.environment), "\(setting.environment) missing from serve --help")
        }
    }
}
