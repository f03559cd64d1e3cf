import Foundation
import NIOCore
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
///
/// The writes are chosen, sent and recorded on one event loop (``LoopRequestRun``), with no task or thread hop per
/// write, so the tool's CPU per write stays small beside the server's.
struct WriteDriver: Sendable {
    let loop: any EventLoop
    let host: String
    let port: Int
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
    /// `warm` connections are opened before the first write, as a busy client already has them.
    func run(rate: Double, duration: Duration, maxInFlight: Int, warm: Int) async throws -> [WriteRecord] {
        try await writes(.rate(rate, maxInFlight: maxInFlight), duration: duration, warm: warm)
    }

    /// `writers` loops, each sending its next write when the last one is answered, for `duration`; each writer's
    /// connection is opened before the first write.
    func runClosedLoop(writers: Int, duration: Duration) async throws -> [WriteRecord] {
        try await writes(.closedLoop(senders: writers), duration: duration, warm: writers)
    }

    private func writes(_ pace: LoopRequestRun.Pace, duration: Duration, warm: Int) async throws -> [WriteRecord] {
        let records = Shared<[WriteRecord]>([])
        try await LoopRequestRun(loop: loop, host: host, port: port, pace: pace, duration: duration, warm: warm).run { [self] number in
            let claim = book.claim(mix: mix, number: number)
            let sent = WallClock.microseconds()
            return (
                request(claim, number: number),
                { status in
                    let record = answered(claim, number: number, sent: sent, status: status)
                    records.withLock { $0.append(record) }
                }
            )
        }
        return records.value.sorted { $0.number < $1.number }
    }

    /// The request of a claimed write.
    private func request(_ claim: TaskBook.Claim, number: Int) -> LoopRequest {
        let plan = plans[claim.plan]
        let task = ids.id(claim.task)
        let editors = editorTokens[claim.plan % editorTokens.count]
        let token = editors[number % editors.count]
        let title = "bench w\(number)\(titlePadding)"
        switch claim.kind {
        case .insert:
            return LoopRequest(method: .POST, path: "/rest/v1/tasks", bearerToken: token, json: TaskBody.insert(task: task, plan: plan, title: title))
        case .update:
            return LoopRequest(method: .PATCH, path: "/rest/v1/tasks/\(task.lowercased)", bearerToken: token, json: #"{"title":"\#(title)"}"#)
        case .statusChange:
            return LoopRequest(
                method: .PATCH, path: "/rest/v1/tasks/\(task.lowercased)", bearerToken: token, json: #"{"status":"\#(claim.status)"}"#)
        case .delete:
            return LoopRequest(method: .DELETE, path: "/rest/v1/tasks/\(task.lowercased)", bearerToken: token)
        }
    }

    /// What the tool knows of a write once it is answered; its task is released for its next write.
    private func answered(_ claim: TaskBook.Claim, number: Int, sent: Int64, status: Int?) -> WriteRecord {
        let record = WriteRecord(
            number: number,
            kind: claim.kind,
            taskIndex: claim.task,
            task: ids.id(claim.task),
            plan: claim.plan,
            title: claim.title,
            toStatus: claim.status,
            fromStatus: claim.fromStatus,
            historyRows: claim.historyRows,
            sentMicroseconds: sent,
            acknowledgedMicroseconds: WallClock.microseconds(),
            status: status
        )
        book.release(claim, record.outcome)
        if record.succeeded {
            counters.writesAcknowledged.add(1, ordering: .relaxed)
        } else {
            counters.writesFailed.add(1, ordering: .relaxed)
        }
        return record
    }
}
