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

/// `name=percent` pairs, comma-separated, as `--mix` and `--roles` take them.
func percentPairs(_ text: String, option: String) throws -> [(name: String, value: Int)] {
    try text.split(separator: ",").map { part in
        let pair = part.split(separator: "=")
        guard pair.count == 2, let value = Int(pair[1]), value >= 0 else { throw BenchError("\(option) takes name=percent pairs; got '\(part)'.") }
        return (String(pair[0]), value)
    }
}

/// How often each kind of write is chosen, in percent.
struct WriteMix: Sendable, Codable {
    var insert = 30
    var update = 30
    var statusChange = 25
    var delete = 15

    /// Parses `insert=30,update=30,status_change=25,delete=15`.
    init(parsing text: String) throws {
        for (name, value) in try percentPairs(text, option: "--mix") {
            guard let kind = WriteKind(rawValue: name) else {
                throw BenchError("--mix knows insert, update, status_change and delete; got '\(name)'.")
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

/// One write as the driver made it: what, on which task, by whom, and when it was sent and answered.
struct WriteRecord: Sendable {
    var number: Int
    var kind: WriteKind
    /// The task's index in the run (``TaskIDs``), its id, and its plan's index.
    var taskIndex: Int
    var task: UUID
    var plan: Int
    /// What the write's events show: the task's title (write number) and status after it, the status before it, and for
    /// a delete the history rows its cascade removes.
    var title: Int32
    var toStatus: TaskStatus
    var fromStatus: TaskStatus
    var historyRows: Int
    var sentMicroseconds: Int64
    var acknowledgedMicroseconds: Int64
    /// The HTTP status, or nil when the request failed without one.
    var status: Int?

    var succeeded: Bool { status.map { (200..<300).contains($0) } ?? false }

    /// 2xx: committed; 4xx: refused; anything else: unknown.
    var outcome: TaskBook.Outcome {
        guard let status else { return .unknown }
        return (200..<300).contains(status) ? .acknowledged : (400..<500).contains(status) ? .refused : .unknown
    }
}

/// Sends task writes as editors: the write on a plan carries the token of an editor of that plan's branch, so it goes
/// through the server's policy and row-level security as a user's would. Open loop at a rate (the S scenarios), or
/// closed loop with a fixed number of writers (W).
struct WriteDriver: Sendable {
    let rest: RestClient
    let plans: [UUID]
    let ids: TaskIDs
    /// `editorTokens[b]`: tokens of the editors of branch `b`; plan `p` is in branch `p % editorTokens.count`.
    let editorTokens: [[String]]
    let book: TaskBook
    let mix: WriteMix
    let counters: LiveCounters
    /// Extra characters in titles, to bring events to a chosen size.
    let titlePadding: String

    /// Writes at `rate` per second for `duration`, with at most `maxInFlight` unanswered; returns every write made.
    func run(rate: Double, duration: Duration, maxInFlight: Int) async -> [WriteRecord] {
        let records = Shared<[WriteRecord]>([])
        await PacedLoop(rate: rate, duration: duration, maxInFlight: maxInFlight).run { number in
            let record = await write(number: number)
            records.withLock { $0.append(record) }
        }
        return records.value
    }

    /// `writers` loops, each sending its next write when the last one is answered, for `duration`.
    func runClosedLoop(writers: Int, duration: Duration) async -> [WriteRecord] {
        let records = Shared<[WriteRecord]>([])
        let numbers = Counter()
        let end = ContinuousClock.now + duration
        await withDiscardingTaskGroup { group in
            for _ in 0..<writers {
                group.addTask {
                    var mine: [WriteRecord] = []
                    while ContinuousClock.now < end { mine.append(await write(number: numbers.add() - 1)) }
                    records.withLock { $0.append(contentsOf: mine) }
                }
            }
        }
        return records.value.sorted { $0.number < $1.number }
    }

    private func write(number: Int) async -> WriteRecord {
        let claim = book.claim(mix: mix, number: number)
        let record = await send(claim, number: number)
        book.release(claim, record.outcome)
        return record
    }

    private func send(_ claim: TaskBook.Claim, number: Int) async -> WriteRecord {
        let plan = plans[claim.plan]
        let task = ids.id(claim.task)
        let editors = editorTokens[claim.plan % editorTokens.count]
        let token = editors[number % editors.count]
        let title = "bench w\(number)\(titlePadding)"
        let sent = WallClock.microseconds()
        var status: Int?
        do {
            let answer: RestClient.Answer
            switch claim.kind {
            case .insert:
                answer = try await rest.send(.POST, "/rest/v1/tasks", json: TaskBody.insert(task: task, plan: plan, title: title), as: token)
            case .update:
                answer = try await rest.send(.PATCH, "/rest/v1/tasks/\(task.lowercased)", json: #"{"title":"\#(title)"}"#, as: token)
            case .statusChange:
                answer = try await rest.send(.PATCH, "/rest/v1/tasks/\(task.lowercased)", json: #"{"status":"\#(claim.status)"}"#, as: token)
            case .delete:
                answer = try await rest.send(.DELETE, "/rest/v1/tasks/\(task.lowercased)", as: token)
            }
            status = answer.status
        } catch {
            status = nil
        }
        let record = WriteRecord(
            number: number,
            kind: claim.kind,
            taskIndex: claim.task,
            task: task,
            plan: claim.plan,
            title: claim.title,
            toStatus: claim.status,
            fromStatus: claim.fromStatus,
            historyRows: claim.historyRows,
            sentMicroseconds: sent,
            acknowledgedMicroseconds: WallClock.microseconds(),
            status: status
        )
        if record.succeeded {
            counters.writesAcknowledged.add(1, ordering: .relaxed)
        } else {
            counters.writesFailed.add(1, ordering: .relaxed)
        }
        return record
    }
}
