import Foundation
import Hummingbird
import NIOCore

/// Reading a JSON object body within the server's limits.
extension Request {
    /// Collects the body (at most `limit` bytes) and decodes it as a JSON object.
    ///
    /// - Throws: `APIError` 415 when the body is not declared as JSON, 413 over the limit, 400 when it is not a JSON object.
    mutating func jsonObject(limit: Int) async throws -> (object: [String: JSONValue], bytes: ByteBuffer) {
        guard let contentType = headers[.contentType], Self.isJSON(contentType) else {
            throw APIError.unsupportedMediaType
        }
        let buffer: ByteBuffer
        do {
            buffer = try await collectBody(upTo: limit)
        } catch is NIOTooManyBytesError {
            throw APIError.payloadTooLarge(limit: limit)
        }
        let data = Data(buffer.readableBytesView)
        let value: JSONValue
        do {
            value = try JSONDecoder().decode(JSONValue.self, from: data)
        } catch {
            throw APIError.invalidJSON("The request body is not valid JSON.")
        }
        guard case .object(let object) = value else {
            throw APIError.invalidJSON("The request body must be a JSON object, not \(value.typeName).")
        }
        return (object, buffer)
    }

    /// `application/json`, optionally with parameters, or any `application/*+json`.
    static func isJSON(_ contentType: String) -> Bool {
        let mediaType = contentType.split(separator: ";", maxSplits: 1)[0].trimmingCharacters(in: .whitespaces).lowercased()
        return mediaType == "application/json" || (mediaType.hasPrefix("application/") && mediaType.hasSuffix("+json"))
    }
}
