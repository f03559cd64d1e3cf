import Foundation
import Testing

@testable import Realtime

/// What nodes tell each other over NOTIFY, without a database: a broadcast crosses whole, and a payload that is not a
/// JSON object is dropped, never shown as something else.
@Suite struct EphemeralMessageTests {
    @Test func aBroadcastCrossesToAnotherNodeWhole() throws {
        let message = BroadcastMessage(
            planID: UUID(), userID: UUID(), event: "cursor",
            payload: ["x": .integer(3), "note": .string("a/\"b\""), "nested": .object(["ok": .bool(true)])])
        let text = try EphemeralMessage.broadcast(message, from: "n1").encoded()
        let heard = try #require(EphemeralMessage.decode(text))
        #expect(heard.broadcastMessage == message)
    }

    @Test func aPayloadThatIsNotAnObjectIsDropped() {
        let base = EphemeralMessage.broadcast(BroadcastMessage(planID: UUID(), userID: UUID(), event: "e", payload: [:]), from: "n1")
        for payload in ["[1,2]", "not json", "3"] {
            var message = base
            message.payload = payload
            #expect(message.broadcastMessage == nil, "\(payload)")
        }
    }
}
