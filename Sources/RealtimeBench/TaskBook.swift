import Synchronization

/// The tasks of every plan, what the tool knows of each (status, title, history rows), and which are free: a task
/// has at most one write in flight, so its events come in the order of its writes and each can be matched to the
/// write that made it. The state changes only by acknowledged writes, so it is what the database holds.
final class TaskBook: Sendable {
    /// What the tool knows of one task.
    struct TaskState: Sendable {
        var plan: Int
        var status: TaskStatus
        /// The write number in its title, -1 for the setup's title.
        var title: Int32
        /// Rows of its status history (one from its insert, one more per status change): a delete cascades to them.
        var historyRows: Int
    }

    /// A write chosen and claimed, ready to send: everything its events will show.
    struct Claim: Sendable {
        var kind: WriteKind
        var task: Int
        var plan: Int
        /// The title the task has after the write (its write number for an insert or title update).
        var title: Int32
        /// The status after the write, and before it (a status change's history row shows both).
        var status: TaskStatus
        var fromStatus: TaskStatus
        /// History rows the task has (a delete's cascade).
        var historyRows: Int
    }

    /// How a write ended, as far as the tool can tell.
    enum Outcome: Sendable {
        /// 2xx: it was committed.
        case acknowledged
        /// 4xx: refused, nothing was committed.
        case refused
        /// No answer, or a 5xx: it may or may not have been committed. The task is never written again.
        case unknown
    }

    private struct State {
        var idle: [[Int]]
        var tasks: [Int: TaskState] = [:]
        var nextIndex: Int
        var generator = SystemRandomNumberGenerator()
    }

    private let state: Mutex<State>

    /// `seeded[p]` are the indices of the tasks made in plan `p` during the setup (status taken, one history row).
    init(seeded: [[Int]]) {
        var state = State(idle: seeded, nextIndex: (seeded.flatMap { $0 }.max() ?? -1) + 1)
        for (plan, tasks) in seeded.enumerated() {
            for task in tasks { state.tasks[task] = TaskState(plan: plan, status: .taken, title: -1, historyRows: 1) }
        }
        self.state = Mutex(state)
    }

    /// Picks a plan and a write of the mix for write `number`; an update, status change or delete on a plan with no
    /// free task becomes an insert.
    func claim(mix: WriteMix, number: Int) -> Claim {
        state.withLock { state in
            let plan = Int.random(in: 0..<state.idle.count, using: &state.generator)
            var kind = mix.pick(using: &state.generator)
            if kind != .insert, state.idle[plan].isEmpty { kind = .insert }
            let title = Int32(truncatingIfNeeded: number)
            guard kind != .insert else {
                defer { state.nextIndex += 1 }
                return Claim(kind: .insert, task: state.nextIndex, plan: plan, title: title, status: .taken, fromStatus: .none, historyRows: 0)
            }
            let position = Int.random(in: 0..<state.idle[plan].count, using: &state.generator)
            let task = state.idle[plan].remove(at: position)
            let known = state.tasks[task] ?? TaskState(plan: plan, status: .taken, title: -1, historyRows: 1)
            switch kind {
            case .update:
                return Claim(
                    kind: kind, task: task, plan: plan, title: title, status: known.status, fromStatus: known.status, historyRows: known.historyRows)
            case .statusChange:
                return Claim(
                    kind: kind, task: task, plan: plan, title: known.title, status: known.status.next, fromStatus: known.status,
                    historyRows: known.historyRows)
            case .insert, .delete:
                return Claim(
                    kind: kind, task: task, plan: plan, title: known.title, status: known.status, fromStatus: known.status,
                    historyRows: known.historyRows)
            }
        }
    }

    /// Records what the write did and frees its task (a deleted task, or one whose write ended unknown, is not freed).
    func release(_ claim: Claim, _ outcome: Outcome) {
        state.withLock { state in
            switch (outcome, claim.kind) {
            case (.unknown, _):
                state.tasks[claim.task] = nil
            case (.refused, .insert):
                break
            case (.refused, _):
                state.idle[claim.plan].append(claim.task)
            case (.acknowledged, .delete):
                state.tasks[claim.task] = nil
            case (.acknowledged, .insert):
                state.tasks[claim.task] = TaskState(plan: claim.plan, status: .taken, title: claim.title, historyRows: 1)
                state.idle[claim.plan].append(claim.task)
            case (.acknowledged, .update):
                state.tasks[claim.task]?.title = claim.title
                state.idle[claim.plan].append(claim.task)
            case (.acknowledged, .statusChange):
                state.tasks[claim.task]?.status = claim.status
                state.tasks[claim.task]?.historyRows += 1
                state.idle[claim.plan].append(claim.task)
            }
        }
    }
}
