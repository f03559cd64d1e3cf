import Foundation

/// A message one user sends to everyone on a plan: `{"event":"<name>","payload":{…}}`. Ephemeral: no cursor, no
/// replay, never stored.
public struct BroadcastMessage: Sendable, Hashable {
    public var planID: UUID
    public var userID: UUID
    public var event: String
    /// The payload object.
    public var payload: [String: JSONValue]

    /// The most bytes of a payload as JSON.
    public static let maxPayloadBytes = 2048
    /// The most characters of an event name.
    public static let maxEventLength = 64

    public init(planID: UUID, userID: UUID, event: String, payload: [String: JSONValue]) {
        self.planID = planID
        self.userID = userID
        self.event = event
        self.payload = payload
    }

    /// Reads a broadcast body.
    ///
    /// - Throws: `APIError` 422 `unknown_field` for keys other than `event` and `payload`, `missing_field`, and
    ///   `invalid_value` for an event name that is not 1–64 of `A-Z a-z 0-9 _ . : -`, a payload that is not an object,
    ///   or one over ``maxPayloadBytes``.
    public init(planID: UUID, userID: UUID, body: [String: JSONValue]) throws(APIError) {
        if let key = body.keys.sorted().first(where: { $0 != "event" && $0 != "payload" }) {
            throw .unknownField("Unknown field '\(key)': a broadcast is {\"event\":…,\"payload\":{…}}.")
        }
        guard let eventValue = body["event"] else { throw .missingField("event") }
        guard let event = eventValue.stringValue, Self.isEventName(event) else {
            throw .invalidValue("event must be 1 to \(Self.maxEventLength) characters of A-Z, a-z, 0-9, '_', '.', ':' or '-'.")
        }
        guard let payload = body["payload"] else { throw .missingField("payload") }
        guard case .object(let object) = payload else { throw .invalidValue("payload must be a JSON object, not \(payload.typeName).") }
        let json = JSONValue.text(of: object)
        guard json.utf8.count <= Self.maxPayloadBytes else {
            throw .invalidValue("payload must be at most \(Self.maxPayloadBytes) bytes as JSON; it is \(json.utf8.count).")
        }
        self.init(planID: planID, userID: userID, event: event, payload: object)
    }

    static func isEventName(_ text: String) -> Bool {
        !text.isEmpty && text.count <= maxEventLength
            && text.unicodeScalars.allSatisfy {
                $0.isASCII && ($0.properties.isAlphabetic || ("0"..."9").contains($0) || "_.:-".unicodeScalars.contains($0))
            }
    }
}
