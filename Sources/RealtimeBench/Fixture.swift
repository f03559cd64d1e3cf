import Foundation
import NIOCore
import NIOHTTP1

/// The branches, plans, users and memberships one realtime scenario creates for itself through the REST API (as the
/// service role: the setup is not measured), and the event-log position after which its own writes begin.
///
/// Branches `0..<branches` carry the plans that are written to (plan `p` is in branch `p % branches`). One more, the
/// *quiet* branch (index `branches`), has a plan but no writes: its members are outsiders to every written branch. The
/// sentinel plan is in a branch of its own that no subscriber may see.
struct Fixture: Sendable {
    var branches: [UUID]
    var quietBranch: UUID
    var plans: [UUID]
    /// One user per entry of the shape's `members`, in that order.
    var users: [UUID]
    /// `editors[b]`: the users who write to branch `b`'s plans, each an editor of that branch only.
    var editors: [[UUID]]
    /// A plan in the sentinel branch, renamed to mark a point in the feed (see ``awaitFeed(rest:timeout:)``).
    var sentinelPlan: UUID
    /// Tasks made before the measurement, per plan, as indices of ``TaskIDs``.
    var seededTasks: [[Int]]
    /// Every event of the measurement has a higher sequence than this.
    var startCursor: Int64 = 0

    func branchIndex(ofPlan plan: Int) -> Int { plan % branches.count }

    /// A user to create and the branch (index; `branches` is the quiet one) and role they are a member with.
    struct Member: Sendable {
        var branch: Int
        var role: String
    }

    /// What to create.
    struct Shape: Sendable {
        var branches: Int
        var plans: Int
        var members: [Member]
        var editorsPerBranch: Int
        var tasksPerPlan: Int
        var concurrency: Int
    }

    /// Creates everything through `rest` (a service-role client), then finds the start cursor: it renames the sentinel
    /// plan and waits until the feed carries that change, so that every setup event is at or before it.
    static func create(_ shape: Shape, ids: TaskIDs, rest: RestClient, log: @escaping @Sendable (String) -> Void) async throws -> Fixture {
        let run = String(UUID().uuidString.prefix(8)).lowercased()
        let branches = (0..<shape.branches).map { _ in UUID() }
        let quietBranch = UUID()
        let sentinelBranch = UUID()
        let plans = (0..<shape.plans).map { _ in UUID() }
        let sentinelPlan = UUID()
        let users = shape.members.map { _ in UUID() }
        let editors = branches.map { _ in (0..<max(1, shape.editorsPerBranch)).map { _ in UUID() } }
        let seeded = (0..<shape.plans).map { plan in (0..<shape.tasksPerPlan).map { plan * shape.tasksPerPlan + $0 } }
        let started = Date()
        let allBranches = branches + [quietBranch, sentinelBranch]
        try await forEachConcurrently(Array(allBranches.enumerated()), limit: shape.concurrency) { pair in
            let (index, id) = pair
            try await rest.expectSuccess(.POST, "/rest/v1/branches", json: #"{"id":"\#(id.lowercased)","name":"bench \#(run) branch \#(index)"}"#)
        }
        let planBranches = plans.indices.map { branches[$0 % branches.count] } + [quietBranch, sentinelBranch]
        try await forEachConcurrently(Array(zip(plans + [UUID(), sentinelPlan], planBranches).enumerated()), limit: shape.concurrency) { item in
            let (index, (id, branch)) = item
            try await rest.expectSuccess(
                .POST,
                "/rest/v1/plans",
                json: #"{"id":"\#(id.lowercased)","branch_id":"\#(branch.lowercased)","title":"bench \#(run) plan \#(index)","#
                    + #""period_start":"2026-12-07","period_end":"2026-12-13"}"#
            )
        }
        log("setup: \(branches.count) branches with \(plans.count) plans, a quiet branch and a sentinel branch")
        var people = zip(users, shape.members).map { ($0, allBranches[$1.branch], $1.role) }
        for (branch, ids) in editors.enumerated() { people += ids.map { ($0, branches[branch], "editor") } }
        try await forEachConcurrently(Array(people.enumerated()), limit: shape.concurrency) { item in
            let (index, (id, branch, role)) = item
            try await rest.expectSuccess(.POST, "/rest/v1/users", json: #"{"id":"\#(id.lowercased)","display_name":"bench \#(run) user \#(index)"}"#)
            try await rest.expectSuccess(.PUT, "/rest/v1/branches/\(branch.lowercased)/members/\(id.lowercased)", json: #"{"role":"\#(role)"}"#)
        }
        log("setup: \(users.count) subscribing users and \(editors.joined().count) writing editors, each a member of one branch")
        let seedJobs = seeded.enumerated().flatMap { plan, tasks in tasks.map { (plan, $0) } }
        try await forEachConcurrently(seedJobs, limit: shape.concurrency) { job in
            let (plan, task) = job
            try await rest.expectSuccess(.POST, "/rest/v1/tasks", json: TaskBody.insert(task: ids.id(task), plan: plans[plan], title: "bench seed"))
        }
        log("setup: \(seedJobs.count) seed tasks in \(String(format: "%.1f", Date().timeIntervalSince(started))) s")

        var fixture = Fixture(
            branches: branches, quietBranch: quietBranch, plans: plans, users: users, editors: editors, sentinelPlan: sentinelPlan,
            seededTasks: seeded)
        guard let startCursor = try await fixture.awaitFeed(rest: rest, timeout: .seconds(120)) else {
            throw BenchError("The change feed did not carry the setup sentinel within 120 s: is the relay running?")
        }
        fixture.startCursor = startCursor
        return fixture
    }

    /// Renames the sentinel plan (which no subscriber watches) and returns the sequence number of that change once the
    /// feed carries it: every write acknowledged before has a lower one. Nil when it did not come within `timeout`.
    func awaitFeed(rest: RestClient, timeout: Duration) async throws -> Int64? {
        let plan = sentinelPlan.lowercased
        let snapshot = try await rest.expectSuccess(.GET, "/rest/v1/plans/\(plan)/snapshot")
        struct Snapshot: Decodable { var cursor: String }
        let head = try JSONDecoder().decode(Snapshot.self, from: Data(snapshot.body.readableBytesView)).cursor.split(separator: "~").first ?? "0"
        let title = "bench sentinel \(UUID().uuidString.prefix(8))"
        try await rest.expectSuccess(.PATCH, "/rest/v1/plans/\(plan)", json: #"{"title":"\#(title)"}"#)
        let reader = FeedReader(rest: rest)
        var cursor = String(head)
        let deadline = ContinuousClock.now + timeout
        while ContinuousClock.now < deadline {
            let page = try await reader.page("/realtime/v1/changes?channel=plan:\(plan)&table=plan&after=\(cursor)&wait=5&limit=1000")
            if let event = page.events.first(where: { $0.record.title == title }), let sequence = event.sequence {
                return sequence
            }
            cursor = page.cursor
        }
        return nil
    }
}

extension UUID {
    /// The uuid in lower case, as PostgreSQL prints it.
    var lowercased: String { uuidString.lowercased() }
}

/// JSON bodies of task writes.
enum TaskBody {
    static func insert(task: UUID, plan: UUID, title: String) -> String {
        #"{"id":"\#(task.lowercased)","plan_id":"\#(plan.lowercased)","title":"\#(title)","#
            + #""starts_at":"2026-12-07T09:00:00Z","ends_at":"2026-12-07T17:00:00Z"}"#
    }
}
