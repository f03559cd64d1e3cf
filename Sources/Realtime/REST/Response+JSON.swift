import Foundation
import Hummingbird
import NIOCore

extension Response {
    /// A response whose body is JSON text.
    static func json(_ status: HTTPResponse.Status, _ text: String, headers: HTTPFields = [:]) -> Response {
        var headers = headers
        headers[.contentType] = "application/json; charset=utf-8"
        return Response(status: status, headers: headers, body: .init(byteBuffer: ByteBuffer(string: text)))
    }

    /// 204 with no body.
    static var noContent: Response { Response(status: .noContent) }
}

extension Request {
    /// The query string as ordered, percent-decoded name/value pairs.
    var queryPairs: [(String, String)] {
        guard let query = uri.query, !query.isEmpty else { return [] }
        return query.split(separator: "&").map { pair in
            let parts = pair.split(separator: "=", maxSplits: 1, omittingEmptySubsequences: false)
            let decode = { (text: Substring) in String(text).removingPercentEncoding ?? String(text) }
            return (decode(parts[0]), parts.count > 1 ? decode(parts[1]) : "")
        }
    }
}

extension AppRequestContext {
    /// A uuid path parameter; 400 `invalid_parameter` when it is not a uuid.
    func uuidParameter(_ name: String) throws -> UUID {
        guard let text = parameters.get(name), let id = UUID(uuidString: text) else {
            throw APIError.invalidParameter("The path parameter \(name) must be a uuid.")
        }
        return id
    }
}
