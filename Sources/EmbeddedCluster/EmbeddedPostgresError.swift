import Dispatch
import Foundation
import Logging
import PostgresNIO
import Realtime

#if canImport(Glibc)
    import Glibc
#elseif canImport(Musl)
    import Musl
#elseif canImport(Darwin)
    import Darwin
#endif

/// Why the embedded PostgreSQL could not be found, set up, started, stopped or used.
public enum EmbeddedPostgresError: Error, Sendable, CustomStringConvertible {
    /// No directory holds `initdb`, `pg_ctl` and `postgres` together.
    case serverProgramsNotFound(searched: [String])
    /// A program (`initdb`, `pg_ctl start`, …) exited with a failure; `output` is what it wrote (standard error first).
    case commandFailed(command: String, status: Int32, output: String)
    /// A program could not be launched at all.
    case launchFailed(program: String, reason: String)
    /// The unprivileged user PostgreSQL runs as cannot enter a parent of the data directory.
    case directoryNotTraversable(path: String, user: String, dataDirectory: String)
    /// The cluster exists but its password file is missing, empty or unreadable.
    case missingPassword(passwordFile: String, clusterDirectory: String)
    /// A database name outside `[a-z0-9_]{1,63}`.
    case invalidDatabaseName(String)
    /// The cluster is not running (no `postmaster.pid`).
    case notRunning(clusterDirectory: String)
    /// `postmaster.pid` could not be read or has no port.
    case unreadablePidFile(path: String)
    /// No unprivileged system user could be found or created to run PostgreSQL as.
    case noSystemUser(reason: String)
    /// No free TCP port could be obtained on 127.0.0.1.
    case freePortUnavailable(reason: String)
    /// Connecting to the cluster failed.
    case connectionFailed(endpoint: String, reason: String)
    /// An administrative statement failed.
    case queryFailed(statement: String, sqlState: String?, reason: String)
    /// A file or directory operation failed.
    case fileSystem(path: String, reason: String)

    /// The SQLSTATE of a failed statement, if any.
    public var sqlState: String? {
        if case .queryFailed(_, let sqlState, _) = self { return sqlState }
        return nil
    }

    public var description: String {
        switch self {
        case .serverProgramsNotFound(let searched):
            let places = searched.isEmpty ? "nowhere (the search path is empty)" : searched.joined(separator: ", ")
            return """
                PostgreSQL's server programs (\(PostgresInstallation.requiredPrograms.joined(separator: ", "))) were not found \
                together in one directory. Looked in: \(places). On Debian or Ubuntu install them with \
                `apt-get install -y postgresql`, or put the directory holding them on PATH.
                """
        case .commandFailed(let command, let status, let output):
            let details = output.trimmingCharacters(in: .whitespacesAndNewlines)
            return "\(command) failed (exit status \(status))" + (details.isEmpty ? "" : ": \(details)")
        case .launchFailed(let program, let reason):
            return "could not run \(program): \(reason)"
        case .directoryNotTraversable(let path, let user, let dataDirectory):
            return """
                PostgreSQL runs as the unprivileged user '\(user)' because this process runs as root, and that user cannot enter \
                \(path), a parent of the data directory \(dataDirectory). Choose a data directory outside it (for example under \
                /var/lib or /srv), or allow it with `chmod o+x \(path)`.
                """
        case .missingPassword(let passwordFile, let clusterDirectory):
            return """
                the PostgreSQL cluster in \(clusterDirectory) exists but its superuser password file \(passwordFile) is missing, \
                empty or unreadable; restore it, or remove the cluster to create a new one
                """
        case .invalidDatabaseName(let name):
            return "invalid database name '\(name)': use 1 to 63 characters of a-z, 0-9 and _"
        case .notRunning(let clusterDirectory):
            return "the PostgreSQL cluster in \(clusterDirectory) is not running"
        case .unreadablePidFile(let path):
            return "could not read the port from \(path)"
        case .noSystemUser(let reason):
            return "PostgreSQL cannot run as root and no unprivileged user could be set up for it: \(reason)"
        case .freePortUnavailable(let reason):
            return "could not find a free TCP port on 127.0.0.1: \(reason)"
        case .connectionFailed(let endpoint, let reason):
            return "could not connect to PostgreSQL at \(endpoint): \(reason)"
        case .queryFailed(let statement, let sqlState, let reason):
            return "\(statement) failed" + (sqlState.map { " (SQLSTATE \($0))" } ?? "") + ": \(reason)"
        case .fileSystem(let path, let reason):
            return "\(path): \(reason)"
        }
    }
}
