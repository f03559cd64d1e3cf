import Foundation

/// The directory holding PostgreSQL's server programs (`initdb`, `pg_ctl` and `postgres`), all three from the same installation.
public struct PostgresInstallation: Sendable, Hashable, CustomStringConvertible {
    /// The programs an embedded cluster needs; a directory counts only when it holds all of them.
    public static let requiredPrograms = ["initdb", "pg_ctl", "postgres"]

    /// Where Debian and Ubuntu install versioned server programs, as `<root>/<major>/bin`.
    public static let defaultVersionedRoots = ["/usr/lib/postgresql"]

    /// The directory the three programs live in.
    public var binDirectory: String

    /// Uses the programs in `binDirectory` without checking that they exist.
    public init(binDirectory: String) {
        self.binDirectory = binDirectory
    }

    /// The path of `initdb`.
    public var initdb: String { path(of: "initdb") }
    /// The path of `pg_ctl`.
    public var pgCtl: String { path(of: "pg_ctl") }
    /// The path of `postgres`.
    public var postgres: String { path(of: "postgres") }

    public var description: String { binDirectory }

    /// Finds the server programs on `PATH` (taken from `environment`) or under `/usr/lib/postgresql/<major>/bin`.
    public static func locate(environment: [String: String] = ProcessInfo.processInfo.environment) throws(EmbeddedPostgresError) -> Self {
        let path = (environment["PATH"] ?? "").split(separator: ":").map(String.init)
        return try locate(path: path, versionedRoots: defaultVersionedRoots)
    }

    /// Finds the server programs in the first directory of `path` that holds all three, or else under the highest
    /// `<root>/<major>/bin` (for each root of `versionedRoots`) that holds all three.
    ///
    /// A directory holding only some of them (such as a stray `initdb` symlink in `/usr/local/bin`) is skipped.
    public static func locate(path: [String], versionedRoots: [String]) throws(EmbeddedPostgresError) -> Self {
        var searched: [String] = []
        for directory in path where !directory.isEmpty {
            let directory = URL(fileURLWithPath: directory).standardizedFileURL.path
            guard !searched.contains(directory) else { continue }
            searched.append(directory)
            if holdsAllPrograms(directory) { return Self(binDirectory: directory) }
        }
        for root in versionedRoots {
            let majors = ((try? FileManager.default.contentsOfDirectory(atPath: root)) ?? [])
                .compactMap { name in majorVersion(name).map { (name: name, version: $0) } }
                .sorted { $1.version.lexicographicallyPrecedes($0.version) }
            for major in majors {
                let directory = "\(root)/\(major.name)/bin"
                searched.append(directory)
                if holdsAllPrograms(directory) { return Self(binDirectory: directory) }
            }
            if majors.isEmpty { searched.append("\(root)/<major>/bin") }
        }
        throw .serverProgramsNotFound(searched: searched)
    }

    private func path(of program: String) -> String {
        binDirectory.hasSuffix("/") ? binDirectory + program : "\(binDirectory)/\(program)"
    }

    private static func holdsAllPrograms(_ directory: String) -> Bool {
        requiredPrograms.allSatisfy { program in
            var isDirectory: ObjCBool = false
            let file = "\(directory)/\(program)"
            return FileManager.default.fileExists(atPath: file, isDirectory: &isDirectory) && !isDirectory.boolValue
                && FileManager.default.isExecutableFile(atPath: file)
        }
    }

    /// `"15"` → `[15]`, `"9.6"` → `[9, 6]`; anything else is not a version directory.
    private static func majorVersion(_ name: String) -> [Int]? {
        let parts = name.split(separator: ".", omittingEmptySubsequences: false).map { Int($0) }
        guard !parts.isEmpty, parts.allSatisfy({ $0 != nil }) else { return nil }
        return parts.compactMap { $0 }
    }
}
