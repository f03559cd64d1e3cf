import Crypto
import Foundation
import HTTPTypes
import Hummingbird
import NIOCore
import PostgresNIO

/// Idempotent POSTs: the first response to an `Idempotency-Key` is stored in the same transaction as the write and
/// replayed for every repeat, so a retried POST never writes twice.
///
/// The key row is inserted first; a concurrent repeat waits on it and then replays the committed answer. When the
/// write fails, its transaction rolls back with the key row, so the client may retry with the same key.
struct Idempotency {
    static let header = HTTPField.Name("Idempotency-Key")!
    static let replayedHeader = HTTPField.Name("Idempotent-Replayed")!
    static let maxKeyLength = 255
    /// How long keys are kept; `Maintenance` deletes older ones.
    static let retention: Duration = .seconds(24 * 3600)

    let key: String
    let requestHash: String

    /// The key of a request, if it sent one; 400 when the key is empty or too long.
    init?(request: Request, body: ByteBuffer) throws(APIError) {
        guard let key = request.headers[Self.header] else { return nil }
        guard (1...Self.maxKeyLength).contains(key.utf8.count) else {
            throw .invalidParameter("Idempotency-Key must be 1 to \(Self.maxKeyLength) bytes.")
        }
        var hasher = SHA256()
        hasher.update(data: Array("\(request.method.rawValue) \(request.uri.path)\n".utf8))
        hasher.update(data: Array(body.readableBytesView))
        self.key = key
        self.requestHash = hasher.finalize().map { String(format: "%02x", $0) }.joined()
    }

    /// A stored answer to replay.
    struct StoredResponse {
        var status: Int
        var body: String
    }

    /// Claims the key for this request; returns the stored answer when the key was used before.
    func claim(in transaction: RequestTransaction) async throws -> StoredResponse? {
        let owner = transaction.principal.key
        let inserted = try await transaction.query(
            """
            INSERT INTO realtime.idempotency_key (owner, key, request_hash) VALUES (\(owner), \(key), \(requestHash))
            ON CONFLICT DO NOTHING RETURNING 1
            """
        )
        if !inserted.isEmpty { return nil }
        let rows = try await transaction.query(
            "SELECT request_hash, status, response FROM realtime.idempotency_key WHERE owner = \(owner) AND key = \(key)"
        )
        guard let row = rows.first else { throw APIError.idempotencyKeyReused }
        let (hash, status, body) = try row.decode((String, Int?, String?).self)
        guard hash == requestHash, let status, let body else { throw APIError.idempotencyKeyReused }
        return StoredResponse(status: status, body: body)
    }

    /// Records the answer given under this key.
    func record(status: Int, body: String, in transaction: RequestTransaction) async throws {
        try await transaction.query(
            """
            UPDATE realtime.idempotency_key SET status = \(status), response = \(body)
            WHERE owner = \(transaction.principal.key) AND key = \(key)
            """
        )
    }
}
