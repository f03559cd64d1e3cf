import Foundation
import HTTPTypes
import NIOCore
import Synchronization
import Testing

@testable import Realtime

/// Fixed ids and a factory of change events for the fan-out tests.
enum Fixture {
    static let branchA = UUID(uuidString: "aaaaaaaa-0000-0000-0000-000000000001")!
    static let branchB = UUID(uuidString: "bbbbbbbb-0000-0000-0000-000000000002")!
    static let planA = UUID(uuidString: "aaaaaaaa-1111-0000-0000-000000000001")!
    static let planA2 = UUID(uuidString: "aaaaaaaa-2222-0000-0000-000000000002")!
    static let planB = UUID(uuidString: "bbbbbbbb-1111-0000-0000-000000000001")!
    static let taskA = UUID(uuidString: "aaaaaaaa-3333-0000-0000-000000000001")!
    static let alice = UUID(uuidString: "a11ce000-0000-0000-0000-000000000001")!
    static let bob = UUID(uuidString: "b0b00000-0000-0000-0000-000000000002")!

    static func event(
        _ sequence: Int64,
        _ table: String,
        _ operation: ChangeEvent.Operation,
        branch: UUID?,
        plan: UUID? = nil,
        oldBranch: UUID? = nil,
        oldPlan: UUID? = nil,
        record: String = "{}",
        oldRecord: String = "{}"
    ) -> ChangeEvent {
        ChangeEvent(
            sequence: sequence,
            table: table,
            operation: operation,
            commitTimestamp: "2024-05-01T10:00:00.123456+00:00",
            commitTime: Date(timeIntervalSince1970: 1_714_557_600),
            place: RowPlace(branch: branch, plan: plan),
            previousPlace: oldBranch == nil && oldPlan == nil ? nil : RowPlace(branch: oldBranch ?? branch, plan: oldPlan ?? plan),
            record: record,
            oldRecord: oldRecord
        )
    }

    /// A task event in a branch and plan, with a record naming them.
    static func task(_ sequence: Int64, _ operation: ChangeEvent.Operation = .insert, branch: UUID, plan: UUID, status: String = "taken")
        -> ChangeEvent
    {
        let row = taskRow(branch: branch, plan: plan, status: status)
        return event(
            sequence,
            "task",
            operation,
            branch: branch,
            plan: plan,
            record: operation == .delete ? "{}" : row,
            oldRecord: operation == .delete ? row : "{}"
        )
    }

    static func taskRow(branch: UUID, plan: UUID, status: String = "taken") -> String {
        #"{"id":"\#(taskA.lowercased)","branch_id":"\#(branch.lowercased)","plan_id":"\#(plan.lowercased)","status":"\#(status)","title":"T"}"#
    }

    static func memberRow(user: UUID, branch: UUID, role: MemberRole = .viewer) -> String {
        #"{"id":"\#(UUID().lowercased)","branch_id":"\#(branch.lowercased)","user_id":"\#(user.lowercased)","role":"\#(role.rawValue)"}"#
    }

    /// Alice's memberships across the log, as a replay loads them: a viewer of A since before the log began.
    static func aliceHistory(coveredThrough: Int64 = 1_000) -> MembershipHistory? {
        MembershipHistory(
            userID: alice,
            intervals: [MembershipHistory.Interval(branchID: branchA, role: .viewer, from: 0, until: nil)],
            coveredThrough: coveredThrough
        )
    }

    /// A hub where alice is a member of A, bob of B, and the plans' branches are known.
    static func hub(bufferLimit: Int = Hub.defaultBufferLimit) -> Hub {
        let hub = Hub(bufferLimit: bufferLimit)
        hub.setMemberships([alice: Memberships([branchA: .viewer]), bob: Memberships([branchB: .editor])])
        hub.setPlanBranches([planA: branchA, planA2: branchA, planB: branchB])
        return hub
    }

    /// Every event kind of a branch: each table, each operation.
    static func everyKindOfEvent(in branch: UUID, plan: UUID, from sequence: Int64) -> [ChangeEvent] {
        let row = #"{"id":"\#(UUID().lowercased)","branch_id":"\#(branch.lowercased)","plan_id":"\#(plan.lowercased)"}"#
        var events: [ChangeEvent] = []
        var next = sequence
        for table in ["plan", "task", "status_history", "attachment", "client_card"] {
            for operation in [ChangeEvent.Operation.insert, .update, .delete] {
                let isDelete = operation == .delete
                events.append(
                    event(next, table, operation, branch: branch, plan: plan, record: isDelete ? "{}" : row, oldRecord: isDelete ? row : "{}")
                )
                next += 1
            }
        }
        return events
    }
}

extension UUID {
    var lowercased: String { uuidString.lowercased() }
}

extension Delivery {
    /// The frame's text and sequence, or nil for other deliveries.
    var frame: (text: String, sequence: Int64)? {
        guard case .frame(let bytes, let sequence, _) = self else { return nil }
        return (String(buffer: bytes), sequence)
    }

    /// The JSON of a frame's data line.
    var json: [String: Any]? {
        guard let text = frame?.text, let line = text.split(separator: "\n").first(where: { $0.hasPrefix("data: ") }) else { return nil }
        return (try? JSONSerialization.jsonObject(with: Data(line.dropFirst(6).utf8))) as? [String: Any]
    }

    var channels: [String]? { json?["channels"] as? [String] }

    /// The text of an ephemeral frame (presence, broadcast), or nil for other deliveries.
    var frameText: String? {
        guard case .ephemeral(let bytes) = self else { return nil }
        return String(buffer: bytes)
    }

    /// The `id:` of a frame.
    var frameID: String? {
        guard let line = frame?.text.split(separator: "\n").first, line.hasPrefix("id: ") else { return nil }
        return String(line.dropFirst(4))
    }
    var operation: String? { json?["event"] as? String }
}

extension Subscription {
    /// What is buffered now, without waiting.
    func buffered() -> [Delivery] { deliveries.availableDeliveries() }

    func sequences() -> [Int64] { buffered().compactMap { $0.frame?.sequence } }
}
