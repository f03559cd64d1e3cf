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

/// A file's owner, group and permission bits.
struct FileStatus: Sendable, Hashable {
    var uid: uid_t
    var gid: gid_t
    var permissions: mode_t

    init(path: String) throws(EmbeddedPostgresError) {
        let attributes: [FileAttributeKey: Any]
        do {
            attributes = try FileManager.default.attributesOfItem(atPath: path)
        } catch {
            throw .fileSystem(path: path, reason: "\(error)")
        }
        guard let uid = (attributes[.ownerAccountID] as? NSNumber)?.uint32Value,
            let gid = (attributes[.groupOwnerAccountID] as? NSNumber)?.uint32Value,
            let permissions = (attributes[.posixPermissions] as? NSNumber)?.uint16Value
        else {
            throw .fileSystem(path: path, reason: "could not read its owner and permissions")
        }
        self.uid = uid_t(uid)
        self.gid = gid_t(gid)
        self.permissions = mode_t(permissions) & 0o7777
    }
}
