import Foundation
import HTTPTypes
import Hummingbird
import NIOCore
import Synchronization

/// The browser side served by the server itself: the client library at `/client/realtime.js`, the demo page at `/`
/// (and its files under `/client/`), and, on an embedded demo server only, `/client/demo.json` with the demo users'
/// tokens so that the page can offer "sign in as".
struct WebController {
    let files: WebFiles
    let demo: DemoLogin

    func addRoutes(to router: Router<AppRequestContext>) {
        router.get("/") { _, _ in try file("index.html") }
        router.get("client/demo.json") { _, _ in
            guard let json = demo.json else { throw APIError.notFound("Demo sign-in exists only on an embedded demo server.") }
            var headers = HTTPFields()
            headers[.cacheControl] = "no-store"
            return Response.json(.ok, json, headers: headers)
        }
        router.get("client/:file") { _, context in
            try file(context.parameters.get("file") ?? "")
        }
    }

    private func file(_ name: String) throws -> Response {
        guard let (bytes, type) = files.file(named: name) else { throw APIError.notFound("No file \(name) here.") }
        var headers = HTTPFields()
        headers[.contentType] = type
        headers[.cacheControl] = "no-cache"
        headers[.xContentTypeOptions] = "nosniff"
        return Response(status: .ok, headers: headers, body: .init(byteBuffer: bytes))
    }
}

/// The files of `Web/Public`, read once at start.
struct WebFiles: Sendable {
    private let files: [String: (ByteBuffer, String)]

    static let contentTypes = [
        "html": "text/html; charset=utf-8",
        "js": "text/javascript; charset=utf-8",
        "mjs": "text/javascript; charset=utf-8",
        "css": "text/css; charset=utf-8",
        "json": "application/json; charset=utf-8",
        "svg": "image/svg+xml",
        "png": "image/png",
    ]

    /// Reads every file of a folder (not its subfolders) whose type is known.
    init(folder: URL?) {
        var files: [String: (ByteBuffer, String)] = [:]
        if let folder, let names = try? FileManager.default.contentsOfDirectory(atPath: folder.path) {
            for name in names {
                guard let type = Self.contentTypes[(name as NSString).pathExtension.lowercased()],
                    let data = FileManager.default.contents(atPath: folder.appendingPathComponent(name).path)
                else { continue }
                files[name] = (ByteBuffer(bytes: data), type)
            }
        }
        self.files = files
    }

    /// The files shipped with the server.
    static func bundled() -> WebFiles { WebFiles(folder: Bundle.module.url(forResource: "Public", withExtension: nil)) }

    func file(named name: String) -> (ByteBuffer, String)? { files[name] }

    var names: [String] { files.keys.sorted() }
}

/// The demo users' sign-in, set by the command line once an embedded demo has started; `/client/demo.json` serves it.
public final class DemoLogin: Sendable {
    private let stored = Mutex<String?>(nil)

    public init() {}

    /// `{"branch_id":…,"plan_id":…,"users":[{"user_id":…,"name":…,"role":…,"token":…}]}`.
    public var json: String? { stored.withLock { $0 } }

    /// Publishes the demo users with their tokens (never the service role's).
    public func publish(users: [(user: DemoData.User, token: String)]) {
        let body = Body(
            branchID: DemoData.branchID.uuidString.lowercased(),
            planID: DemoData.planID.uuidString.lowercased(),
            users: users.map { user, token in
                Body.User(userID: user.id.uuidString.lowercased(), name: user.name, role: user.role.rawValue, token: token)
            }
        )
        let json = JSONText.encode(body)
        stored.withLock { $0 = json }
    }

    private struct Body: Encodable {
        struct User: Encodable {
            var userID: String
            var name: String
            var role: String
            var token: String

            enum CodingKeys: String, CodingKey {
                case userID = "user_id"
                case name, role, token
            }
        }

        var branchID: String
        var planID: String
        var users: [User]

        enum CodingKeys: String, CodingKey {
            case branchID = "branch_id"
            case planID = "plan_id"
            case users
        }
    }
}

extension HTTPField.Name {
    static let xContentTypeOptions = HTTPField.Name("X-Content-Type-Options")!
}
