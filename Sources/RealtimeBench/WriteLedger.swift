/// The events the acknowledged writes must have caused, worked out from the writes alone — never from the server's
/// event log — with the triggers' known side effects:
///
/// - insert → `task INSERT` (its title and status `taken`) and `status_history INSERT` (null → taken);
/// - title update → `task UPDATE` (the new title);
/// - status change → `task UPDATE` (the new status) and `status_history INSERT` (old → new status);
/// - delete → `task DELETE` and one cascaded `status_history DELETE` per history row the task had.
///
/// Each event streams on the channel of its task's plan and of that plan's branch.
struct WriteLedger {
    /// One event a write must cause, and what its frame must show.
    struct Expected {
        var kind: ChangeFacts.Kind
        /// Title (write number) a task row must show; `Int32.min` when not checked (a history row).
        var title: Int32
        /// The task's status, or a history row's `to_status`; `.none` when not checked (a history DELETE).
        var status: TaskStatus
        /// A history INSERT's `from_status`.
        var fromStatus: TaskStatus
        /// Index of the write in ``writes``.
        var write: Int32
    }

    /// Acknowledged writes, each task's in the order they were made.
    let writes: [WriteRecord]
    /// Every expected event; a task's are contiguous, in the order of its writes.
    private(set) var expected: [Expected] = []
    /// `tasks[i]`: the range of task `i`'s events in ``expected``, and its plan (-1 for an index never used).
    private(set) var ranges: [Range<Int>] = []
    private(set) var planOfTask: [Int32] = []
    /// Tasks with a write whose outcome is unknown (no answer, or 5xx): frames of theirs that fit no acknowledged
    /// write are counted apart, neither expected nor unmatched.
    private(set) var uncertain: Set<Int> = []
    /// Expected events per plan and per branch.
    private(set) var perPlan: [Int]
    private(set) var perBranch: [Int]
    let branches: Int

    /// `seeded[p]`: the setup's tasks of plan `p`; `attempts`: every write made (acknowledged or not).
    init(attempts: [WriteRecord], seeded: [[Int]], plans: Int, branches: Int) {
        self.branches = branches
        perPlan = Array(repeating: 0, count: plans)
        perBranch = Array(repeating: 0, count: branches + 1)
        let maxTask = max(attempts.map(\.taskIndex).max() ?? -1, seeded.flatMap { $0 }.max() ?? -1)
        planOfTask = Array(repeating: -1, count: maxTask + 1)
        for (plan, tasks) in seeded.enumerated() { for task in tasks { planOfTask[task] = Int32(plan) } }
        var byTask: [[WriteRecord]] = Array(repeating: [], count: maxTask + 1)
        for write in attempts {
            switch write.outcome {
            case .acknowledged:
                byTask[write.taskIndex].append(write)
                planOfTask[write.taskIndex] = Int32(write.plan)
            case .unknown:
                uncertain.insert(write.taskIndex)
                planOfTask[write.taskIndex] = Int32(write.plan)
            case .refused:
                break
            }
        }
        var ordered: [WriteRecord] = []
        ranges = Array(repeating: 0..<0, count: maxTask + 1)
        for task in byTask.indices {
            // One write in flight per task: the next is sent only after the last was answered.
            let writes = byTask[task].sorted { $0.sentMicroseconds < $1.sentMicroseconds }
            let start = expected.count
            for write in writes {
                let index = Int32(ordered.count)
                ordered.append(write)
                for event in Self.events(of: write) {
                    expected.append(
                        Expected(kind: event.kind, title: event.title, status: event.status, fromStatus: event.fromStatus, write: index))
                }
            }
            ranges[task] = start..<expected.count
            if let plan = writes.first?.plan {
                perPlan[plan] += expected.count - start
                perBranch[plan % branches] += expected.count - start
            }
        }
        self.writes = ordered
    }

    /// The events one write causes, in commit order within its transaction.
    static func events(of write: WriteRecord) -> [(kind: ChangeFacts.Kind, title: Int32, status: TaskStatus, fromStatus: TaskStatus)] {
        switch write.kind {
        case .insert:
            [(.taskInsert, write.title, .taken, .none), (.historyInsert, .min, .taken, .none)]
        case .update:
            [(.taskUpdate, write.title, write.toStatus, .none)]
        case .statusChange:
            [(.taskUpdate, write.title, write.toStatus, .none), (.historyInsert, .min, write.toStatus, write.fromStatus)]
        case .delete:
            [(.taskDelete, write.title, write.toStatus, .none)] + Array(repeating: (.historyDelete, .min, .none, .none), count: write.historyRows)
        }
    }

    /// All expected events, on every channel.
    var total: Int { expected.count }

    /// Events a subscriber of `scope` must receive.
    func expectedCount(_ scope: ChannelScope) -> Int {
        switch scope {
        case .plan(let plan): plan < perPlan.count ? perPlan[plan] : 0
        case .branch(let branch): branch < perBranch.count ? perBranch[branch] : 0
        }
    }

    /// Whether a subscriber of `scope` may see the events of `plan`.
    func sees(_ scope: ChannelScope, plan: Int) -> Bool {
        switch scope {
        case .plan(let watched): watched == plan
        case .branch(let branch): plan % branches == branch
        }
    }

    /// Whether a frame's facts are those of an expected event.
    static func fits(_ facts: ChangeFacts, _ event: Expected) -> Bool {
        facts.kind == event.kind && (event.title == .min || facts.title == event.title)
            && (event.status == .none || facts.status == event.status)
            && (event.kind != .historyInsert || facts.fromStatus == event.fromStatus)
    }
}

/// What a subscriber watches: one plan, or a whole branch (index `branches` and up: a branch with no writes).
enum ChannelScope: Sendable, Hashable {
    case plan(Int)
    case branch(Int)
}
