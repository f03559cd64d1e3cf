import Foundation
import HTTPTypes
import Hummingbird
import NIOCore

/// The one error type of the API: an HTTP status, a stable machine-readable `code` and a message for a person.
///
/// It renders as `{"error":{"code":"…","message":"…"}}`, plus `current` (the stored row) for a stale update.
public struct APIError: HTTPResponseError, CustomStringConvertible, Sendable {
    public var status: HTTPResponse.Status
    public var code: String
    public var message: String
    /// Extra response headers, e.g. `WWW-Authenticate` on a 401.
    public var headers: HTTPFields
    /// The current row, as JSON text, for `stale_update`.
    public var currentRow: String?

    public init(_ status: HTTPResponse.Status, code: String, message: String, headers: HTTPFields = [:], currentRow: String? = nil) {
        self.status = status
        self.code = code
        self.message = message
        self.headers = headers
        self.currentRow = currentRow
    }

    public var description: String { "\(status.code) \(code): \(message)" }

    /// The JSON body of this error. Built as text because `current` is the row as PostgreSQL rendered it, passed on
    /// unchanged.
    public var jsonBody: String {
        var body = #"{"error":{"code":"# + JSONText.quote(code) + #","message":"# + JSONText.quote(message) + "}"
        if let currentRow { body += #","current":"# + currentRow }
        return body + "}"
    }

    public func response(from request: Request, context: some RequestContext) throws -> Response {
        var headers = self.headers
        headers[.contentType] = "application/json; charset=utf-8"
        return Response(status: status, headers: headers, body: .init(byteBuffer: ByteBuffer(string: jsonBody)))
    }
}

extension APIError {
    // 400
    static func invalidJSON(_ message: String) -> APIError { .init(.badRequest, code: "invalid_json", message: message) }
    static func invalidFilter(_ message: String) -> APIError { .init(.badRequest, code: "invalid_filter", message: message) }
    static func invalidParameter(_ message: String) -> APIError { .init(.badRequest, code: "invalid_parameter", message: message) }

    // 401
    static func unauthorized(code: String, message: String) -> APIError {
        var headers = HTTPFields()
        headers[.wwwAuthenticate] =
            code == "missing_token"
            ? #"Bearer realm="realtime""# : #"Bearer realm="realtime", error="invalid_token", error_description="\#(message)""#
        return .init(.unauthorized, code: code, message: message, headers: headers)
    }
    static let missingToken = unauthorized(code: "missing_token", message: "An Authorization: Bearer <token> header is required.")
    static let tokenExpired = unauthorized(code: "token_expired", message: "The token has expired.")
    static func invalidToken(_ message: String) -> APIError { unauthorized(code: "invalid_token", message: message) }

    // 403
    static func forbidden(_ message: String) -> APIError { .init(.forbidden, code: "forbidden", message: message) }
    static let serviceRoleFromBrowser = APIError(
        .forbidden,
        code: "service_role_from_browser",
        message: "The service role key is refused on requests that carry an Origin header: it must never be used from a browser."
    )

    // 404
    static func notFound(_ message: String = "Not found.") -> APIError { .init(.notFound, code: "not_found", message: message) }
    /// A row that does not exist, or lies in a branch the caller cannot see: the same answer either way.
    static func rowNotVisible(_ table: String, _ id: UUID) -> APIError {
        notFound("No \(table) with id \(id.uuidString.lowercased()) is visible to you.")
    }

    // 409
    static func duplicate(_ message: String) -> APIError { .init(.conflict, code: "duplicate", message: message) }
    static func staleUpdate(current: String) -> APIError {
        .init(
            .conflict,
            code: "stale_update",
            message: "The row was updated elsewhere after this edit was made; the current row is in `current`.",
            currentRow: current
        )
    }
    static let idempotencyKeyReused = APIError(
        .conflict,
        code: "idempotency_key_reused",
        message: "This Idempotency-Key was already used for a different request."
    )

    // 413, 415
    static func payloadTooLarge(limit: Int) -> APIError {
        .init(.contentTooLarge, code: "payload_too_large", message: "The request body is larger than the limit of \(limit) bytes.")
    }
    static let unsupportedMediaType = APIError(
        .unsupportedMediaType,
        code: "unsupported_media_type",
        message: "The request body must be JSON, sent with Content-Type: application/json."
    )

    // 422
    static func unknownField(_ field: String, table: String) -> APIError {
        .init(.unprocessableContent, code: "unknown_field", message: "Unknown or read-only field '\(field)' for \(table).")
    }
    /// `unknown_field` with a message of its own, for bodies that are not rows.
    static func unknownField(_ message: String) -> APIError { .init(.unprocessableContent, code: "unknown_field", message: message) }
    static func missingField(_ field: String) -> APIError {
        .init(.unprocessableContent, code: "missing_field", message: "The field '\(field)' is required.")
    }
    static func invalidValue(_ message: String) -> APIError { .init(.unprocessableContent, code: "invalid_value", message: message) }
    static func invalidReference(_ message: String) -> APIError {
        .init(.unprocessableContent, code: "invalid_reference", message: message)
    }
    static func constraintViolation(_ message: String) -> APIError {
        .init(.unprocessableContent, code: "constraint_violation", message: message)
    }
    static let planInOtherBranch = APIError(
        .unprocessableContent,
        code: "plan_in_other_branch",
        message: "A task belongs to its plan's branch: branch_id must be the plan's branch_id."
    )

    // 429
    static func rateLimited(retryAfter: Duration, what: String) -> APIError {
        let seconds = max(1, Int((Double(retryAfter.components.seconds) + Double(retryAfter.components.attoseconds) / 1e18).rounded(.up)))
        var headers = HTTPFields()
        headers[.retryAfter] = "\(seconds)"
        return .init(.tooManyRequests, code: "rate_limited", message: "Too many \(what); retry after \(seconds) s.", headers: headers)
    }

    // 500, 503
    static let internalError = APIError(
        .internalServerError,
        code: "internal_error",
        message: "The server failed to handle this request; it has been logged."
    )
    static func notReady(_ message: String) -> APIError { .init(.serviceUnavailable, code: "not_ready", message: message) }
    /// The request's database connection was lost (terminated, or the database restarted); nothing was committed unless
    /// the loss came after COMMIT, which a retry with the same `Idempotency-Key` resolves.
    static var databaseUnavailable: APIError {
        var headers = HTTPFields()
        headers[.retryAfter] = "1"
        return .init(
            .serviceUnavailable,
            code: "database_unavailable",
            message: "The database connection was lost; retry the request.",
            headers: headers
        )
    }
}

/// Small helpers for writing JSON text by hand where the text comes from PostgreSQL.
enum JSONText {
    /// A value as compact JSON text, keys sorted and `/` left as is. For the API's own bodies; rows that PostgreSQL
    /// renders as JSON are passed on as text, never decoded and encoded again.
    static func encode(_ value: some Encodable) -> String {
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.sortedKeys, .withoutEscapingSlashes]
        encoder.dateEncodingStrategy = .custom { date, encoder in
            var container = encoder.singleValueContainer()
            try container.encode(Timestamp.text(date))
        }
        // The API's bodies hold strings, numbers, booleans, dates and JSONValue trees: none fails to encode.
        return (try? String(decoding: encoder.encode(value), as: UTF8.self)) ?? "{}"
    }

    /// A JSON string literal for `value`, quotes included.
    static func quote(_ value: String) -> String {
        var out = "\""
        out.reserveCapacity(value.utf8.count + 2)
        for scalar in value.unicodeScalars {
            switch scalar {
            case "\"": out += "\\\""
            case "\\": out += "\\\\"
            case "\n": out += "\\n"
            case "\r": out += "\\r"
            case "\t": out += "\\t"
            case _ where scalar.value < 0x20: out += String(format: "\\u%04x", scalar.value)
            default: out.unicodeScalars.append(scalar)
            }
        }
        return out + "\""
    }
}
