import Hummingbird
import Logging
import PostgresNIO

/// Makes every failure an `APIError` response: domain errors answer for themselves, known database errors map to
/// 4xx, and anything else is logged and answered with 500 `internal_error` (always a bug of ours).
struct ErrorMiddleware: RouterMiddleware {
    typealias Context = AppRequestContext

    func handle(_ request: Request, context: Context, next: (Request, Context) async throws -> Response) async throws -> Response {
        do {
            return try await next(request, context)
        } catch let error as APIError {
            return try error.response(from: request, context: context)
        } catch let error as HTTPError {
            return try Self.apiError(for: error).response(from: request, context: context)
        } catch let error as DatabaseConnectionClosed {
            context.logger.warning("database connection lost during a request", metadata: ["error": "\(error)"])
            return try APIError.databaseUnavailable.response(from: request, context: context)
        } catch let error as PSQLError {
            if let mapped = APIError(postgres: error) { return try mapped.response(from: request, context: context) }
            if error.meansConnectionLost {
                context.logger.warning("database connection lost during a request", metadata: ["error": "\(String(reflecting: error))"])
                return try APIError.databaseUnavailable.response(from: request, context: context)
            }
            context.logger.error("unexpected database error", metadata: ["error": "\(String(reflecting: error))"])
            return try APIError.internalError.response(from: request, context: context)
        } catch {
            context.logger.error("unhandled error", metadata: ["error": "\(String(reflecting: error))"])
            return try APIError.internalError.response(from: request, context: context)
        }
    }

    static func apiError(for error: HTTPError) -> APIError {
        switch error.status {
        case .notFound: .notFound("No such endpoint.")
        case .methodNotAllowed: APIError(.methodNotAllowed, code: "method_not_allowed", message: "This method is not allowed here.")
        case .contentTooLarge: APIError(.contentTooLarge, code: "payload_too_large", message: error.body ?? "The request body is too large.")
        case .badRequest: .invalidParameter(error.body ?? "Bad request.")
        default: APIError(error.status, code: "http_\(error.status.code)", message: error.body ?? error.status.reasonPhrase)
        }
    }
}

extension APIError {
    /// The API error for a database error caused by the request's data, or nil for one that is a bug of ours.
    init?(postgres error: PSQLError) {
        guard let state = error.serverInfo?[.sqlState] else { return nil }
        let constraint = error.serverInfo?[.constraintName] ?? ""
        let message = error.serverInfo?[.message] ?? "rejected by the database"
        switch state {
        case "23505":
            self = .duplicate("A row with the same \(constraint.hasSuffix("_pkey") ? "id" : "key") already exists.")
        case "23503":
            self = .invalidReference("A referenced row does not exist or is in another branch (\(constraint)).")
        case "23514":
            self = .constraintViolation(Self.checkMessages[constraint] ?? "The row breaks the rule \(constraint).")
        case "23502":
            self = .missingField(error.serverInfo?[.columnName] ?? "a required field")
        case "42501":
            self = .forbidden("Row-level security refused this: \(message).")
        case _ where state.hasPrefix("22"):
            self = .invalidValue("Invalid value: \(message).")
        default:
            return nil
        }
    }

    /// The registry's messages for named CHECK constraints (``TableSchema/checkMessages``).
    static let checkMessages: [String: String] = TableSchema.exposed.reduce(into: [:]) { messages, schema in
        messages.merge(schema.checkMessages) { first, _ in first }
    }
}

extension PSQLError {
    /// Whether the request failed because its database connection was lost (closed, terminated, or the server is
    /// shutting down), not because of anything in the request: worth a retry.
    var meansConnectionLost: Bool {
        switch code {
        case .serverClosedConnection, .clientClosedConnection, .connectionError, .uncleanShutdown, .poolClosed: return true
        default: break
        }
        guard let state = serverInfo?[.sqlState] else { return false }
        // 08: connection exception; 57P01-57P03: admin shutdown, crash shutdown, cannot connect now.
        return state.hasPrefix("08") || ["57P01", "57P02", "57P03"].contains(state)
    }
}
