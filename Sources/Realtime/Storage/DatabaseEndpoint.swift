import Foundation

/// Where and how to reach a PostgreSQL database: host, port, credentials and database name.
public struct DatabaseEndpoint: Sendable, Hashable, CustomStringConvertible {
    /// Whether the connection uses TLS, as named by libpq's `sslmode`.
    public enum TLSMode: String, Sendable, Hashable {
        case disable
        case prefer
        case require
    }

    public var host: String
    public var port: Int
    public var username: String
    public var password: String?
    public var database: String
    public var tls: TLSMode

    public init(host: String, port: Int = 5432, username: String, password: String? = nil, database: String, tls: TLSMode = .disable) {
        self.host = host
        self.port = port
        self.username = username
        self.password = password
        self.database = database
        self.tls = tls
    }

    /// Parses a `postgres://user:password@host:port/database?sslmode=…` URL.
    public init(url: String) throws(DatabaseURLError) {
        guard let components = URLComponents(string: url),
            let scheme = components.scheme, ["postgres", "postgresql"].contains(scheme)
        else {
            throw DatabaseURLError(url: url, reason: "expected postgres://user:password@host:port/database")
        }
        guard let host = components.host, !host.isEmpty else {
            throw DatabaseURLError(url: url, reason: "the host is missing")
        }
        guard let user = components.user, !user.isEmpty else {
            throw DatabaseURLError(url: url, reason: "the user name is missing")
        }
        let database = String(components.path.drop(while: { $0 == "/" }))
        let sslMode = components.queryItems?.first(where: { $0.name == "sslmode" })?.value ?? "prefer"
        let tls: TLSMode
        switch sslMode {
        case "disable": tls = .disable
        case "allow", "prefer": tls = .prefer
        case "require", "verify-ca", "verify-full": tls = .require
        default: throw DatabaseURLError(url: url, reason: "unknown sslmode '\(sslMode)'")
        }
        self.init(
            host: host,
            port: components.port ?? 5432,
            username: user.removingPercentEncoding ?? user,
            password: components.password.map { $0.removingPercentEncoding ?? $0 },
            database: database.isEmpty ? user : (database.removingPercentEncoding ?? database),
            tls: tls
        )
    }

    /// The same server, another database on it.
    public func withDatabase(_ name: String) -> DatabaseEndpoint {
        var copy = self
        copy.database = name
        return copy
    }

    /// A URL for this endpoint; the password is included only when `includingPassword` is set.
    public func url(includingPassword: Bool) -> String {
        var components = URLComponents()
        components.scheme = "postgres"
        components.host = host
        components.port = port
        components.user = username
        if includingPassword { components.password = password }
        components.path = "/" + database
        if tls != .prefer { components.queryItems = [URLQueryItem(name: "sslmode", value: tls.rawValue)] }
        return components.string ?? "postgres://\(host):\(port)/\(database)"
    }

    /// The endpoint without its password, for logs.
    public var description: String { url(includingPassword: false) }
}

/// A database URL that could not be understood.
public struct DatabaseURLError: Error, CustomStringConvertible {
    public var url: String
    public var reason: String
    public var description: String { "Invalid database URL: \(reason)" }
}
