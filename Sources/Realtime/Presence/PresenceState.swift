import Foundation

/// What a present user is doing on a plan: the whitelisted keys `slot` and `action`, and nothing else — no name, no
/// phone number, no free text beyond a short slot id.
public struct PresenceState: Sendable, Hashable, Codable {
    /// What the user does on the slot.
    public enum Action: String, Sendable, Hashable, Codable, CaseIterable {
        case viewing
        case selecting
        case editing
    }

    /// The slot or task the user is on, if any: at most ``maxValueBytes`` bytes.
    public var slot: String?
    public var action: Action

    /// The most bytes of one value.
    public static let maxValueBytes = 128
    /// The most bytes of the whole state as JSON.
    public static let maxStateBytes = 512
    /// The keys a state may have.
    public static let allowedKeys: Set<String> = ["slot", "action"]

    public init(slot: String? = nil, action: Action) {
        self.slot = slot
        self.action = action
    }

    /// Reads a heartbeat body, `{"state":{"slot":"…","action":"viewing|selecting|editing"}}`.
    ///
    /// - Throws: `APIError` 422 `unknown_field` for any other key (at the top or in `state`), `missing_field` without
    ///   `state` or `action`, `invalid_value` for a wrong type, an unknown action, a value over ``maxValueBytes`` or a
    ///   state over ``maxStateBytes``.
    public init(body: [String: JSONValue], stateBytes: Int? = nil) throws(APIError) {
        if let key = body.keys.sorted().first(where: { $0 != "state" }) {
            throw .unknownField("Unknown field '\(key)': a heartbeat body is {\"state\":{…}}.")
        }
        guard let value = body["state"] else { throw .missingField("state") }
        guard case .object(let state) = value else { throw .invalidValue("state must be an object, not \(value.typeName).") }
        if let key = state.keys.sorted().first(where: { !Self.allowedKeys.contains($0) }) {
            throw .unknownField("Unknown presence key '\(key)': only slot and action are allowed, so that no personal data travels with presence.")
        }
        guard let actionValue = state["action"] else { throw .missingField("state.action") }
        guard let actionText = actionValue.stringValue, let action = Action(rawValue: actionText) else {
            throw .invalidValue("state.action must be one of \(Action.allCases.map(\.rawValue).joined(separator: ", ")).")
        }
        var slot: String?
        switch state["slot"] {
        case nil, .null?: slot = nil
        case .string(let text)?:
            guard !text.isEmpty, text.utf8.count <= Self.maxValueBytes else {
                throw .invalidValue("state.slot must be 1 to \(Self.maxValueBytes) bytes.")
            }
            guard !text.unicodeScalars.contains(where: { $0.properties.generalCategory == .control }) else {
                throw .invalidValue("state.slot must not contain control characters.")
            }
            slot = text
        case let other?:
            throw .invalidValue("state.slot must be a string, not \(other.typeName).")
        }
        self.init(slot: slot, action: action)
        guard json.utf8.count <= Self.maxStateBytes else {
            throw .invalidValue("state must be at most \(Self.maxStateBytes) bytes as JSON.")
        }
    }

    /// The state as compact JSON, keys sorted: `{"action":"editing","slot":"…"}`.
    public var json: String { JSONText.encode(self) }
}
