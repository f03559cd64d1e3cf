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

/// The unprivileged user PostgreSQL runs as when this process runs as root.
struct ServerAccount: Sendable, Hashable {
    var name: String
    var uid: uid_t
    var gid: gid_t
    var groups: [gid_t]

    /// The account to run PostgreSQL as, creating the `realtime-pg` system user if needed; nil when not running as root.
    ///
    /// An existing cluster keeps running as the user owning it; otherwise `postgres` is preferred.
    static func resolve(clusterDirectory: String, logger: Logger) async throws -> Self? {
        guard geteuid() == 0 else { return nil }
        if let account = try existing(clusterDirectory: clusterDirectory) { return account }
        if let account = lookup(name: "postgres") ?? lookup(name: EmbeddedPostgres.fallbackSystemUser) { return account }

        let name = EmbeddedPostgres.fallbackSystemUser
        guard let useradd = ProgramRunner.findProgram("useradd", in: ["/usr/sbin", "/sbin", "/usr/bin", "/bin"]) else {
            throw EmbeddedPostgresError.noSystemUser(reason: "there is no 'postgres' user and useradd was not found to create '\(name)'")
        }
        let result = try await ProgramRunner(account: nil).run(useradd, ["--system", "--no-create-home", "--shell", "/usr/sbin/nologin", name])
        // Exit status 9: created concurrently by someone else.
        if let account = lookup(name: name) {
            if result.status == 0 { logger.info("created system user \(name) to run PostgreSQL") }
            return account
        }
        throw EmbeddedPostgresError.noSystemUser(reason: "useradd \(name) failed (exit status \(result.status)): \(result.errorText)")
    }

    /// The user owning an existing cluster when running as root; nil when not root or when there is no cluster owned by another user.
    static func existing(clusterDirectory: String) throws(EmbeddedPostgresError) -> Self? {
        guard geteuid() == 0 else { return nil }
        guard FileManager.default.fileExists(atPath: clusterDirectory) else { return nil }
        let info = try FileStatus(path: clusterDirectory)
        guard info.uid != 0 else { return nil }
        guard let account = lookup(uid: info.uid) else {
            throw .noSystemUser(reason: "\(clusterDirectory) is owned by uid \(info.uid), which has no user name")
        }
        return account
    }

    static func lookup(name: String) -> Self? {
        lookupPasswordEntry { entry, buffer, result in getpwnam_r(name, entry, buffer.baseAddress!, buffer.count, result) }
    }

    static func lookup(uid: uid_t) -> Self? {
        lookupPasswordEntry { entry, buffer, result in getpwuid_r(uid, entry, buffer.baseAddress!, buffer.count, result) }
    }

    private static func lookupPasswordEntry(
        _ call: (UnsafeMutablePointer<passwd>, UnsafeMutableBufferPointer<CChar>, UnsafeMutablePointer<UnsafeMutablePointer<passwd>?>) -> Int32
    ) -> Self? {
        var entry = passwd()
        var result: UnsafeMutablePointer<passwd>?
        var buffer = [CChar](repeating: 0, count: 16384)
        let status = buffer.withUnsafeMutableBufferPointer { call(&entry, $0, &result) }
        guard status == 0, result != nil, let namePointer = entry.pw_name else { return nil }
        let name = String(cString: namePointer)
        return Self(name: name, uid: entry.pw_uid, gid: entry.pw_gid, groups: groupList(name: name, gid: entry.pw_gid))
    }

    private static func groupList(name: String, gid: gid_t) -> [gid_t] {
        #if os(Linux)
            var count: Int32 = 64
            var groups = [gid_t](repeating: 0, count: Int(count))
            if getgrouplist(name, gid, &groups, &count) == -1 {
                groups = [gid_t](repeating: 0, count: Int(count))
                guard getgrouplist(name, gid, &groups, &count) != -1 else { return [gid] }
            }
            return Array(groups.prefix(Int(count)))
        #else
            return [gid]
        #endif
    }

    /// Whether this user may search (enter) a directory with the given status.
    func canSearch(_ info: FileStatus) -> Bool {
        let mode = info.permissions
        if info.uid == uid { return mode & 0o100 != 0 }
        if groups.contains(info.gid) || info.gid == gid { return mode & 0o010 != 0 }
        return mode & 0o001 != 0
    }
}
