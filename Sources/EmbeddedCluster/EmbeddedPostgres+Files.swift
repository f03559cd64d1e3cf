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

/// The cluster's password, its connections and its files: what ``EmbeddedPostgres`` keeps on disk and how it
/// finds a free port.
extension EmbeddedPostgres {
    // MARK: - Password

    func loadOrCreatePassword() throws -> String {
        if FileManager.default.fileExists(atPath: passwordFile) {
            return try readPassword()
        }
        guard !FileManager.default.fileExists(atPath: clusterDirectory + "/PG_VERSION") else {
            throw EmbeddedPostgresError.missingPassword(passwordFile: passwordFile, clusterDirectory: clusterDirectory)
        }
        do {
            try writeFile(passwordFile, contents: randomHex(bytes: 24) + "\n", mode: 0o600, owner: nil, exclusive: true)
        } catch EmbeddedPostgresError.fileSystem where FileManager.default.fileExists(atPath: passwordFile) {
            // Written concurrently by another start: use that one.
        }
        return try readPassword()
    }

    func readPassword() throws(EmbeddedPostgresError) -> String {
        let password: String
        do {
            password = try String(contentsOfFile: passwordFile, encoding: .utf8).trimmingCharacters(in: .whitespacesAndNewlines)
        } catch {
            throw .missingPassword(passwordFile: passwordFile, clusterDirectory: clusterDirectory)
        }
        guard !password.isEmpty else { throw .missingPassword(passwordFile: passwordFile, clusterDirectory: clusterDirectory) }
        return password
    }

    // MARK: - Connections

    func withAdminConnection<Result>(
        to endpoint: DatabaseEndpoint,
        _ body: (PostgresConnection) async throws -> Result
    ) async throws -> Result {
        let configuration = PostgresConnection.Configuration(
            host: endpoint.host,
            port: endpoint.port,
            username: endpoint.username,
            password: endpoint.password,
            database: "postgres",
            tls: .disable
        )
        let connection: PostgresConnection
        do {
            connection = try await PostgresConnection.connect(configuration: configuration, id: 1, logger: logger)
        } catch {
            throw EmbeddedPostgresError.connectionFailed(endpoint: endpoint.withDatabase("postgres").description, reason: String(reflecting: error))
        }
        do {
            let result = try await body(connection)
            try? await connection.close()
            return result
        } catch {
            try? await connection.close()
            throw error
        }
    }

    func execute(_ sql: String, on connection: PostgresConnection) async throws {
        do {
            try await connection.query(PostgresQuery(unsafeSQL: sql), logger: logger)
        } catch let error as PSQLError {
            throw EmbeddedPostgresError.queryFailed(
                statement: sql,
                sqlState: error.serverInfo?[.sqlState],
                reason: error.serverInfo?[.message] ?? String(reflecting: error)
            )
        }
    }

    // MARK: - Files

    /// Lets the server's user enter `directory`: adds o+x to it when needed (it is ours), and fails when a parent is closed.
    func makeTraversable(for account: ServerAccount) throws(EmbeddedPostgresError) {
        var path = ""
        var ancestors = ["/"]
        for component in directory.split(separator: "/") {
            path += "/" + component
            ancestors.append(path)
        }
        for ancestor in ancestors {
            let info = try FileStatus(path: ancestor)
            guard !account.canSearch(info) else { continue }
            if ancestor == directory, info.uid == geteuid() {
                guard chmod(ancestor, info.permissions | 0o001) == 0 else {
                    throw .fileSystem(path: ancestor, reason: String(cString: strerror(errno)))
                }
                logger.info("allowing user \(account.name) to enter \(ancestor) (chmod o+x)")
                continue
            }
            throw .directoryNotTraversable(path: ancestor, user: account.name, dataDirectory: directory)
        }
    }

    func createDirectory(_ path: String, mode: mode_t, owner: ServerAccount? = nil) throws(EmbeddedPostgresError) {
        do {
            if !FileManager.default.fileExists(atPath: path) {
                try FileManager.default.createDirectory(atPath: path, withIntermediateDirectories: true)
                guard chmod(path, mode) == 0 else { throw EmbeddedPostgresError.fileSystem(path: path, reason: String(cString: strerror(errno))) }
            }
            if let owner, chown(path, owner.uid, owner.gid) != 0 {
                throw EmbeddedPostgresError.fileSystem(path: path, reason: "chown to \(owner.name): " + String(cString: strerror(errno)))
            }
        } catch let error as EmbeddedPostgresError {
            throw error
        } catch {
            throw .fileSystem(path: path, reason: "\(error)")
        }
    }

    /// Writes a file with `mode` from its creation on (no window where others may read it), owned by `owner` when given.
    func writeFile(
        _ path: String,
        contents: String,
        mode: mode_t,
        owner: ServerAccount?,
        exclusive: Bool = false
    ) throws(EmbeddedPostgresError) {
        let flags = O_WRONLY | O_CREAT | O_CLOEXEC | O_NOFOLLOW | (exclusive ? O_EXCL : O_TRUNC)
        let fd = open(path, flags, mode)
        guard fd >= 0 else { throw .fileSystem(path: path, reason: String(cString: strerror(errno))) }
        defer { close(fd) }
        guard fchmod(fd, mode) == 0 else { throw .fileSystem(path: path, reason: String(cString: strerror(errno))) }
        if let owner, fchown(fd, owner.uid, owner.gid) != 0 {
            throw .fileSystem(path: path, reason: "chown to \(owner.name): " + String(cString: strerror(errno)))
        }
        var bytes = Array(contents.utf8)[...]
        while !bytes.isEmpty {
            let written = bytes.withUnsafeBytes { write(fd, $0.baseAddress, $0.count) }
            if written < 0, errno == EINTR { continue }
            guard written > 0 else { throw .fileSystem(path: path, reason: String(cString: strerror(errno))) }
            bytes = bytes.dropFirst(written)
        }
    }

    func randomHex(bytes count: Int) -> String {
        var generator = SystemRandomNumberGenerator()
        return (0..<count).map { _ in
            let byte = UInt8.random(in: .min ... .max, using: &generator)
            return (byte < 16 ? "0" : "") + String(byte, radix: 16)
        }.joined()
    }

    /// A TCP port on 127.0.0.1 that is free right now: bound with port 0, read back, and released.
    static func freeLoopbackPort() throws(EmbeddedPostgresError) -> Int {
        #if os(Linux)
            let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        #else
            let fd = socket(AF_INET, SOCK_STREAM, 0)
        #endif
        guard fd >= 0 else { throw .freePortUnavailable(reason: String(cString: strerror(errno))) }
        defer { close(fd) }
        var address = sockaddr_in()
        address.sin_family = sa_family_t(AF_INET)
        address.sin_port = 0
        address.sin_addr.s_addr = inet_addr(host)
        let length = socklen_t(MemoryLayout<sockaddr_in>.size)
        let bound = withUnsafePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, length) }
        }
        guard bound == 0 else { throw .freePortUnavailable(reason: String(cString: strerror(errno))) }
        var boundLength = length
        let named = withUnsafeMutablePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { getsockname(fd, $0, &boundLength) }
        }
        guard named == 0 else { throw .freePortUnavailable(reason: String(cString: strerror(errno))) }
        return Int(UInt16(bigEndian: address.sin_port))
    }
}
