import Foundation
import Logging
import PostgresNIO
import Testing

@testable import Realtime

/// The hub decides in memory who receives an event; PostgreSQL's row-level security decides who may read a row. The
/// two must agree, row by row, for every user and table — judged by running the reads as each user under RLS, not by
/// re-using the server's policy code.
@Suite(.timeLimit(.minutes(3)))
struct PolicyEquivalenceTests {
    static let tables = ["plan", "task", "status_history", "client_card", "attachment", "branch_member"]

    @Test(arguments: [1, 2, 3])
    func theHubsDecisionIsWhatRowLevelSecurityReturns(seed: UInt64) async throws {
        let server = try await TestServer.make(changeFeed: true)
        var random = SeededRandom(seed: seed)
        let branches = (0..<3).map { _ in UUID() }
        let users = (0..<6).map { _ in UUID() }
        // Random memberships: none, viewer, editor or admin for each user in each branch.
        let roles: [[String?]] = users.map { _ in branches.map { _ in ["viewer", "editor", "admin", nil, nil].randomElement(using: &random)! } }
        try await server.testLive { _ in
            try await server.withOwnerConnection { connection in
                let log = server.logger
                for (index, branch) in branches.enumerated() {
                    try await connection.query("INSERT INTO branch (id, name) VALUES (\(branch), \("branch \(index)"))", logger: log)
                }
                for user in users { try await connection.query("INSERT INTO app_user (id, display_name) VALUES (\(user), 'u')", logger: log) }
                for (userIndex, user) in users.enumerated() {
                    for (branchIndex, branch) in branches.enumerated() {
                        guard let role = roles[userIndex][branchIndex] else { continue }
                        try await connection.query(
                            "INSERT INTO branch_member (branch_id, user_id, role) VALUES (\(branch), \(user), \(role))", logger: log)
                    }
                }
                // Rows of every table in every branch.
                var plans: [(UUID, UUID)] = []
                var cards: [UUID] = []
                for branch in branches {
                    for planIndex in 0..<2 {
                        let plan = UUID()
                        plans.append((plan, branch))
                        try await connection.query(
                            """
                            INSERT INTO plan (id, branch_id, title, period_start, period_end)
                            VALUES (\(plan), \(branch), \("plan \(planIndex)"), current_date, current_date + 6)
                            """, logger: log)
                        for taskIndex in 0..<3 {
                            let task = UUID()
                            try await connection.query(
                                """
                                INSERT INTO task (id, branch_id, plan_id, title, starts_at, ends_at)
                                VALUES (\(task), \(branch), \(plan), \("task \(taskIndex)"), now(), now() + interval '1 hour')
                                """, logger: log)
                            try await connection.query("UPDATE task SET status = 'done' WHERE id = \(task)", logger: log)
                            try await Self.attach(connection, branch: branch, column: "task_id", parent: task, logger: log)
                        }
                        try await Self.attach(connection, branch: branch, column: "plan_id", parent: plan, logger: log)
                    }
                    let card = UUID()
                    cards.append(card)
                    try await connection.query("INSERT INTO client_card (id, branch_id, name) VALUES (\(card), \(branch), 'card')", logger: log)
                    try await Self.attach(connection, branch: branch, column: "client_card_id", parent: card, logger: log)
                }
                // Moves and membership changes after the rows: a plan (with its tasks, history and attachments) and a
                // client card to another branch, a membership removed and one granted.
                let (movedPlan, _) = plans[0]
                try await connection.query("UPDATE plan SET branch_id = \(branches[1]) WHERE id = \(movedPlan)", logger: log)
                try await connection.query("DELETE FROM attachment WHERE client_card_id = \(cards[0])", logger: log)
                try await connection.query("UPDATE client_card SET branch_id = \(branches[2]) WHERE id = \(cards[0])", logger: log)
                try await connection.query(
                    "DELETE FROM branch_member WHERE user_id = \(users[0]) AND branch_id = \(branches[1])", logger: log)
                try await connection.query(
                    """
                    INSERT INTO branch_member (branch_id, user_id, role) VALUES (\(branches[0]), \(users[1]), 'viewer')
                    ON CONFLICT (branch_id, user_id) DO UPDATE SET role = 'editor'
                    """, logger: log)
                try await connection.query("INSERT INTO client_card (branch_id, name) VALUES (\(branches[0]), 'the last write')", logger: log)
            }

            let database = Database(endpoint: server.endpoint, poolSize: 3, logger: server.logger)
            try await withThrowingTaskGroup(of: Void.self) { group in
                group.addTask { await database.client.run() }
                defer { group.cancelAll() }
                let events = try await Self.allEvents(database, until: "the last write")

                // The hub learns memberships and plans from the feed alone, as on a live node.
                let hub = Hub()
                hub.publish(events)
                var latest: [String: ChangeEvent] = [:]
                for event in events { latest["\(event.table)/\(Self.rowID(event))"] = event }

                for principal in users.map(Principal.user) + [Principal.service(actingUser: nil)] {
                    var fromHub: [String: Set<String>] = [:]
                    let memberships = principal.userID.map { hub.memberships(of: $0) } ?? Memberships()
                    for event in latest.values where event.operation != .delete && Self.tables.contains(event.table) {
                        var fanOut = EventFanOut(event)
                        let everything = UInt8((1 << fanOut.deliveries.count) - 1)
                        let decision = fanOut.decide(for: principal, options: SubscriptionOptions(), mask: everything, memberships: memberships)
                        if let decision, decision.operation != .delete { fromHub[event.table, default: []].insert(Self.rowID(event)) }
                    }
                    let fromRLS = try await database.withRequestTransaction(as: principal) { transaction in
                        var visible: [String: Set<String>] = [:]
                        for table in Self.tables {
                            let rows = try await transaction.query(PostgresQuery(unsafeSQL: "SELECT id::text FROM \(table)"))
                            let ids = try rows.map { try $0.decode(String.self) }
                            if !ids.isEmpty { visible[table] = Set(ids) }
                        }
                        return visible
                    }
                    #expect(fromHub == fromRLS, "seed \(seed), \(principal): the hub and RLS disagree")
                    #expect(!fromRLS.isEmpty || principal.userID != nil, "the service role sees every row")
                }
            }
        }
    }

    static func attach(_ connection: PostgresConnection, branch: UUID, column: String, parent: UUID, logger: Logger) async throws {
        try await connection.query(
            PostgresQuery(
                unsafeSQL: """
                    INSERT INTO attachment (branch_id, \(column), file_name, content_type, byte_size, storage_url)
                    VALUES ($1, $2, 'a.pdf', 'application/pdf', 10, 'https://files.example/a.pdf')
                    """,
                binds: {
                    var binds = PostgresBindings()
                    binds.append(branch)
                    binds.append(parent)
                    return binds
                }()
            ),
            logger: logger
        )
    }

    /// Every event in the log, once the one whose record holds `marker` has arrived.
    static func allEvents(_ database: Database, until marker: String) async throws -> [ChangeEvent] {
        let deadline = ContinuousClock.now + .seconds(60)
        while true {
            var events: [ChangeEvent] = []
            while true {
                let batch = try await EventLog.read(
                    after: events.last?.sequence ?? 0, limit: 1000, client: database.client, logger: database.logger)
                events += batch
                if batch.count < 1000 { break }
            }
            if events.contains(where: { $0.record.contains(marker) }) { return events }
            if ContinuousClock.now > deadline { throw FaultTimeout(what: "the last write in the event log", timeout: .seconds(60)) }
            try await Task.sleep(for: .milliseconds(100))
        }
    }

    /// The id of the event's row, from the record (or, for a DELETE, the old record).
    static func rowID(_ event: ChangeEvent) -> String {
        let text = event.record.isEmpty || event.record == "{}" ? event.oldRecord : event.record
        let object = (try? JSONSerialization.jsonObject(with: Data(text.utf8))) as? [String: Any]
        return object?["id"] as? String ?? "?"
    }
}

/// A small deterministic generator (SplitMix64), so that a failing seed can be run again.
struct SeededRandom: RandomNumberGenerator {
    var state: UInt64

    init(seed: UInt64) { state = seed }

    mutating func next() -> UInt64 {
        state &+= 0x9E37_79B9_7F4A_7C15
        var value = state
        value = (value ^ (value >> 30)) &* 0xBF58_476D_1CE4_E5B9
        value = (value ^ (value >> 27)) &* 0x94D0_49BB_1331_11EB
        return value ^ (value >> 31)
    }
}
