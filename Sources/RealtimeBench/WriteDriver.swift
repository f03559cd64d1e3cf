import Foundation
import NIOHTTP1
import Synchronization

/// The kinds of write the driver mixes.
enum WriteKind: String, Codable, Sendable, CaseIterable {
    case insert
    case update
    case statusChange = "status_change"
    case delete
}

/// How often each kind of write is chosen, in percent.
struct WriteMix: Sendable, Codable {
    var insert = 30
    var update = 30
    var statusChange = 25
    var delete = 15

    /// Parses `insert=30,update=30,status_change=25,delete=15`.
    init(parsing text: String) throws {
        for part in text.split(separator: ",") {
            let pair = part.split(separator: "=")
            guard pair.count == 2, let value = Int(pair[1]), value >= 0, let kind = WriteKind(rawValue: String(pair[0])) else {
                throw BenchError("--mix takes kind=percent pairs of insert, update, status_change and delete; got '\(part)'.")
            }
            switch kind {
            case .insert: insert = value
            case .update: update = value
            case .statusChange: statusChange = value
            case .delete: delete = value
            }
        }
        guard insert + update + statusChange + delete > 0 else { throw BenchError("--mix must not be all zero.") }
    }

    func pick(using generator: inout some RandomNumberGenerator) -> WriteKind {
        var roll = Int.random(in: 0..<(insert + update + statusChange + delete), using: &generator)
        for (kind, weight) in [(WriteKind.insert, insert), (.update, update), (.statusChange, statusChange), (.delete, delete)] {
            if roll < weight { return kind }
            roll -= weight
        }
        return .insert
    }
}

/// One write as the driver made it: what, on which task, and when it was sent and acknowledged.
struct WriteRecord: Sendable {
    var number: Int
    var kind: WriteKind
    var task: UUID
    var plan: Int
    var sentMicroseconds: Int64
    var acknowledgedMicroseconds: Int64
    /// The HTTP status, or nil when the request failed without one.
    var status: Int?

    var succeeded: Bool { status.map { (200..<300).contains($0) } ?? false }
}

/// The tasks of every plan and which of them are free: a task has at most one write in flight, so that its events
/// come in the order of its writes and each can be matched to the write that made it.
final class TaskBook: Sendable {
    private struct State {
        var idle: [[UUID]]
        var statuses: [UUID: String] = [:]
        var generator = SystemRandomNumberGenerator()
    }

    /// A write chosen and claimed, ready to send.
    struct Claim: Sendable {
        var kind: WriteKind
        var task: UUID
        var plan: Int
        var nextStatus: String?
    }

    private static let statusCycle = ["taken": "done", "done": "posted", "posted": "edited", "edited": "taken"]
    private let state: Mutex<State>

    init(seeded: [[UUID]]) {
        var state = State(idle: seeded)
        for tasks in seeded { for task in tasks { state.statuses[task] = "taken" } }
        self.state = Mutex(state)
    }

    /// Picks a plan and a write of the mix; an update, status change or delete on a plan with no free task becomes an insert.
    func claim(mix: WriteMix) -> Claim {
        state.withLock { state in
            let plan = Int.random(in: 0..<state.idle.count, using: &state.generator)
            var kind = mix.pick(using: &state.generator)
            if kind != .insert, state.idle[plan].isEmpty { kind = .insert }
            guard kind != .insert else { return Claim(kind: .insert, task: UUID(), plan: plan) }
            let index = Int.random(in: 0..<state.idle[plan].count, using: &state.generator)
            let task = state.idle[plan].remove(at: index)
            let next = kind == .statusChange ? Self.statusCycle[state.statuses[task] ?? "taken"] : nil
            return Claim(kind: kind, task: task, plan: plan, nextStatus: next)
        }
    }

    /// Frees a task after its write: a new or changed task becomes free again, a deleted one is forgotten.
    func release(_ claim: Claim, succeeded: Bool) {
        state.withLock { state in
            switch claim.kind {
            case .delete:
                state.statuses[claim.task] = nil
            case .insert:
                guard succeeded else { return }
                state.statuses[claim.task] = "taken"
                state.idle[claim.plan].append(claim.task)
            case .update, .statusChange:
                if succeeded, let next = claim.nextStatus { state.statuses[claim.task] = next }
                state.idle[claim.plan].append(claim.task)
            }
        }
    }
}

/// Sends writes at a steady rate (open loop: the schedule does not wait for answers, up to a cap on writes in flight).
struct WriteDriver: Sendable {
    let rest: RestClient
    let plans: [UUID]
    let book: TaskBook
    let mix: WriteMix
    let counters: LiveCounters
    /// Extra characters in titles, to bring events to a chosen size.
    let titlePadding: String

    /// Writes at `rate` per second for `duration`, with at most `maxInFlight` unanswered; returns every write made.
    func run(rate: Double, duration: Duration, maxInFlight: Int) async -> [WriteRecord] {
        let records = Shared<[WriteRecord]>([])
        await PacedLoop(rate: rate, duration: duration, maxInFlight: maxInFlight).run { number in
            let claim = book.claim(mix: mix)
            let record = await send(claim, number: number)
            book.release(claim, succeeded: record.succeeded)
            records.withLock { $0.append(record) }
        }
        return records.value
    }

    private func send(_ claim: Claim, number: Int) async -> WriteRecord {
        let plan = plans[claim.plan]
        let title = "bench w\(number)\(titlePadding)"
        let sent = WallClock.microseconds()
        var status: Int?
        do {
            let answer: RestClient.Answer
            switch claim.kind {
            case .insert:
                answer = try await rest.send(.POST, "/rest/v1/tasks", json: TaskBody.insert(task: claim.task, plan: plan, title: title))
            case .update:
                answer = try await rest.send(.PATCH, "/rest/v1/tasks/\(claim.task.lowercased)", json: #"{"title":"\#(title)"}"#)
            case .statusChange:
                answer = try await rest.send(.PATCH, "/rest/v1/tasks/\(claim.task.lowercased)", json: #"{"status":"\#(claim.nextStatus ?? "done")"}"#)
            case .delete:
                answer = try await rest.send(.DELETE, "/rest/v1/tasks/\(claim.task.lowercased)")
            }
            status = answer.status
        } catch {
            status = nil
        }
        let acknowledged = WallClock.microseconds()
        let record = WriteRecord(
            number: number,
            kind: claim.kind,
            task: claim.task,
            plan: claim.plan,
            sentMicroseconds: sent,
            acknowledgedMicroseconds: acknowledged,
            status: status
        )
        if record.succeeded {
            counters.writesAcknowledged.add(1, ordering: .relaxed)
        } else {
            counters.writesFailed.add(1, ordering: .relaxed)
        }
        return record
    }

    typealias Claim = TaskBook.Claim
}
