import Foundation
import NIOCore
import NIOHTTP1

/// The branches, plans, users and memberships one realtime scenario creates for itself through the REST API, and the
/// event-log position after which its own writes begin.
struct Fixture: Sendable {
    /// Branch ids; plan `p` is in branch `p % branches.count`.
    var branches: [UUID]
    var plans: [UUID]
    /// One user per subscriber, a viewer of the branch of that subscriber's plan.
    var users: [UUID]
    /// A plan in branch 0 that no subscriber watches, renamed to mark a point in the feed (see ``awaitFeed(rest:timeout:)``).
    var sentinelPlan: UUID
    /// Tasks made before the measurement, per plan, so that updates and deletes have rows from the first second.
    var seededTasks: [[UUID]]
    /// Every event of the measurement has a higher sequence than this.
    var startCursor: Int64 = 0

    func branchIndex(ofPlan plan: Int) -> Int { plan % branches.count }

    /// What to create.
    struct Shape: Sendable {
        var branches: Int
        var plans: Int
        var users: Int
        var tasksPerPlan: Int
        var concurrency: Int
    }

    /// Creates everything through `rest` (a service-role client), then finds the start cursor: it renames the sentinel
    /// plan and waits until the feed carries that change, so that every setup event is at or before it.
    static func create(_ shape: Shape, rest: RestClient, log: @escaping @Sendable (String) -> Void) async throws -> Fixture {
        let run = String(UUID().uuidString.prefix(8)).lowercased()
        let branches = (0..<shape.branches).map { _ in UUID() }
        let plans = (0..<shape.plans).map { _ in UUID() }
        let sentinelPlan = UUID()
        let users = (0..<shape.users).map { _ in UUID() }
        let seeded = plans.map { _ in (0..<shape.tasksPerPlan).map { _ in UUID() } }
        let started = Date()

        try await forEachConcurrently(Array(branches.enumerated()), limit: shape.concurrency) { pair in
            let (index, id) = pair
            try await rest.expectSuccess(.POST, "/rest/v1/branches", json: #"{"id":"\#(id.lowercased)","name":"bench \#(run) branch \#(index)"}"#)
        }
        try await forEachConcurrently(Array((plans + [sentinelPlan]).enumerated()), limit: shape.concurrency) { pair in
            let (index, id) = pair
            let branch = branches[index % branches.count]
            try await rest.expectSuccess(
                .POST,
                "/rest/v1/plans",
                json: #"{"id":"\#(id.lowercased)","branch_id":"\#(branch.lowercased)","title":"bench \#(run) plan \#(index)","#
                    + #""period_start":"2026-12-07","period_end":"2026-12-13"}"#
            )
        }
        log("setup: \(branches.count) branches, \(plans.count) plans")
        try await forEachConcurrently(Array(users.enumerated()), limit: shape.concurrency) { pair in
            let (index, id) = pair
            try await rest.expectSuccess(.POST, "/rest/v1/users", json: #"{"id":"\#(id.lowercased)","display_name":"bench \#(run) user \#(index)"}"#)
            let branch = branches[(index % plans.count) % branches.count]
            try await rest.expectSuccess(.PUT, "/rest/v1/branches/\(branch.lowercased)/members/\(id.lowercased)", json: #"{"role":"viewer"}"#)
        }
        log("setup: \(users.count) users, each a viewer of one branch")
        let seedJobs = seeded.enumerated().flatMap { plan, tasks in tasks.map { (plan, $0) } }
        try await forEachConcurrently(seedJobs, limit: shape.concurrency) { job in
            let (plan, task) = job
            try await rest.expectSuccess(.POST, "/rest/v1/tasks", json: TaskBody.insert(task: task, plan: plans[plan], title: "bench seed"))
        }
        log("setup: \(seedJobs.count) seed tasks in \(String(format: "%.1f", Date().timeIntervalSince(started))) s")

        var fixture = Fixture(branches: branches, plans: plans, users: users, sentinelPlan: sentinelPlan, seededTasks: seeded)
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
