import Crypto
import Foundation
import Logging
import PostgresNIO

/// One numbered SQL file of `Migrations/`, e.g. `0002_row_level_security.sql`.
public struct MigrationFile: Sendable, Equatable {
    public var version: Int
    public var name: String
    public var sql: String
    /// SHA-256 of the file's bytes, hex; an applied file must never change.
    public var checksum: String

    public init(version: Int, name: String, sql: String) {
        self.version = version
        self.name = name
        self.sql = sql
        self.checksum = SHA256.hash(data: Data(sql.utf8)).map { String(format: "%02x", $0) }.joined()
    }

    /// Reads `NNNN_name.sql` files from a folder, ordered by number.
    public static func load(from directory: String) throws(MigrationError) -> [MigrationFile] {
        let names: [String]
        do {
            names = try FileManager.default.contentsOfDirectory(atPath: directory)
        } catch {
            throw .folderUnreadable(directory)
        }
        var files: [MigrationFile] = []
        for name in names where name.hasSuffix(".sql") {
            guard let version = Int(name.prefix(while: \.isNumber)), name.first?.isNumber == true else {
                throw .badFileName(name)
            }
            guard let sql = try? String(contentsOfFile: directory + "/" + name, encoding: .utf8) else {
                throw .folderUnreadable(directory + "/" + name)
            }
            files.append(MigrationFile(version: version, name: name, sql: sql))
        }
        files.sort { $0.version < $1.version }
        for (a, b) in zip(files, files.dropFirst()) where a.version == b.version {
            throw .duplicateVersion(a.name, b.name)
        }
        guard !files.isEmpty else { throw .folderUnreadable(directory) }
        return files
    }

    /// Finds the `Migrations` folder: the given one, else `./Migrations`, else one above the running executable
    /// (as in `.build/debug/realtime` inside a checkout).
    public static func locateFolder(_ explicit: String?) -> String? {
        if let explicit { return explicit }
        let fileManager = FileManager.default
        var candidates = [fileManager.currentDirectoryPath + "/Migrations"]
        var directory = URL(fileURLWithPath: CommandLine.arguments[0]).resolvingSymlinksInPath().deletingLastPathComponent()
        for _ in 0..<6 {
            candidates.append(directory.appendingPathComponent("Migrations").path)
            directory.deleteLastPathComponent()
        }
        return candidates.first { fileManager.fileExists(atPath: $0 + "/0001_schema.sql") }
    }
}

/// Why migrations could not be applied.
public enum MigrationError: Error, CustomStringConvertible, Equatable {
    case folderUnreadable(String)
    case badFileName(String)
    case duplicateVersion(String, String)
    case checksumChanged(name: String, applied: String, now: String)
    case failed(name: String, reason: String)

    public var description: String {
        switch self {
        case .folderUnreadable(let path): "Cannot read migrations from \(path) (set --migrations-dir or REALTIME_MIGRATIONS_DIR)."
        case .badFileName(let name): "Migration file \(name) must be named NNNN_description.sql."
        case .duplicateVersion(let a, let b): "Migration files \(a) and \(b) have the same number."
        case .checksumChanged(let name, let applied, let now):
            "Migration \(name) was changed after it was applied (checksum \(applied.prefix(12))… is now \(now.prefix(12))…). "
                + "Applied migrations must never change: add a new numbered file instead."
        case .failed(let name, let reason): "Migration \(name) failed: \(reason)"
        }
    }
}

/// Applies `Migrations/` in order, each file in its own transaction, recorded in `realtime_migration`.
///
/// Several nodes may start at once: an advisory lock makes them take turns, and each re-reads what is applied.
public struct Migrator: Sendable {
    static let lockKey: Int64 = 0x7265_616c_7469_6d65  // "realtime"

    public let files: [MigrationFile]
    let logger: Logger

    public init(files: [MigrationFile], logger: Logger) {
        self.files = files
        self.logger = logger
    }

    /// Applies what is missing; refuses when an applied file's checksum changed. Returns the names applied now.
    @discardableResult
    public func migrate(client: PostgresClient) async throws -> [String] {
        try await client.withConnection { connection in
            try await connection.queryIfOpen("SELECT pg_advisory_lock(\(Self.lockKey))", logger: logger)
            do {
                try await connection.queryIfOpen(
                    """
                    CREATE TABLE IF NOT EXISTS realtime_migration (
                        version integer PRIMARY KEY, name text NOT NULL, checksum text NOT NULL,
                        applied_at timestamptz NOT NULL DEFAULT now())
                    """,
                    logger: logger
                )
                let applied = try await apply(on: connection)
                try await connection.queryIfOpen("SELECT pg_advisory_unlock(\(Self.lockKey))", logger: logger)
                return applied
            } catch {
                _ = try? await connection.queryIfOpen("SELECT pg_advisory_unlock(\(Self.lockKey))", logger: logger)
                throw error
            }
        }
    }

    private func apply(on connection: PostgresConnection) async throws -> [String] {
        var applied: [Int: String] = [:]
        for try await (version, checksum) in try await connection.queryIfOpen(
            "SELECT version, checksum FROM realtime_migration",
            logger: logger
        ).decode((Int, String).self) {
            applied[version] = checksum
        }
        for file in files {
            if let checksum = applied[file.version], checksum != file.checksum {
                throw MigrationError.checksumChanged(name: file.name, applied: checksum, now: file.checksum)
            }
        }
        var appliedNow: [String] = []
        for file in files where applied[file.version] == nil {
            logger.info("applying migration", metadata: ["migration": "\(file.name)"])
            try await connection.queryIfOpen("BEGIN", logger: logger)
            do {
                for statement in SQLScript.statements(in: file.sql) {
                    try await connection.queryIfOpen(PostgresQuery(unsafeSQL: statement), logger: logger)
                }
                try await connection.queryIfOpen(
                    "INSERT INTO realtime_migration (version, name, checksum) VALUES (\(file.version), \(file.name), \(file.checksum))",
                    logger: logger
                )
                try await connection.queryIfOpen("COMMIT", logger: logger)
            } catch {
                _ = try? await connection.queryIfOpen("ROLLBACK", logger: logger)
                let reason = (error as? PSQLError)?.serverInfo?[.message] ?? String(describing: error)
                throw MigrationError.failed(name: file.name, reason: reason)
            }
            appliedNow.append(file.name)
        }
        return appliedNow
    }

    /// The applied versions and their checksums; empty when nothing was ever applied.
    static func appliedVersions(client: PostgresClient, logger: Logger) async throws -> [Int: String] {
        let exists = try await client.rowsIfOpen("SELECT to_regclass('realtime_migration') IS NOT NULL", logger: logger)
        guard try exists.first?.decode(Bool.self) == true else { return [:] }
        var applied: [Int: String] = [:]
        for row in try await client.rowsIfOpen("SELECT version, checksum FROM realtime_migration", logger: logger) {
            let (version, checksum) = try row.decode((Int, String).self)
            applied[version] = checksum
        }
        return applied
    }
}
