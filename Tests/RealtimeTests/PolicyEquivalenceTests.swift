import Foundation
import Logging
import NIOCore
import PostgresNIO
import Testing

@testable import Realtime

/// The hub decides in memory who receives an event; PostgreSQL's row-level security decides who may read a row. The
/// two must agree, row by row, for every user and table — judged by running the reads as each user under RLS, not by
/// re-using the server's policy code.
///
/// Every DELETE a principal receives (a plain delete, or a move out of a channel) is held against PostgreSQL too: its
/// `old_record` is the row exactly as the owner read it just before the statement that deleted or moved it, its branch
/// is one the user was then a member of, and the frame holds no value that only the row after the move has.
@Suite(.timeLimit(.minutes(3)))
struct PolicyEquivalenceTests {
    static let tables = ["plan", "task", "status_history", "client_card", "attachment", "branch_member"]

    @Test(arguments: [1, 2, 3])
    func theHubsDecisionIsWhatRowLevelSecurityReturns(seed: UInt64) async throws {
        let server = try await TestServer.make(changeFeed: true)
        var random = SeededRandom(seed: seed)
        let branches = (0..<3).map { _ in UUID() }
        let users = (0..<7).map { _ in UUID() }
        // Random memberships: none, viewer, editor or admin for each user in each branch. The last user is a viewer of
        // the first branch alone, so that every seed has someone whom the moves out of that branch reach as DELETEs.
        var randomRoles: [[String?]] = users.map { _ in branches.map { _ in ["viewer", "editor", "admin", nil, nil].randomElement(using: &random)! } }
        randomRoles[users.count - 1] = ["viewer", nil, nil]
        let roles = randomRoles
        let newPhone = "+1 555 0199 (new)"
        let newTitle = "the moved task's new title"
        try await server.testLive { _ in
            let written = try await server.withOwnerConnection { connection in
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
                var tasks: [(id: UUID, plan: UUID, branch: UUID)] = []
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
                            tasks.append((task, plan, branch))
                            try await Self.attach(connection, branch: branch, column: "task_id", parent: task, logger: log)
                        }
                        try await Self.attach(connection, branch: branch, column: "plan_id", parent: plan, logger: log)
                    }
                    let card = UUID()
                    cards.append(card)
                    try await connection.query(
                        "INSERT INTO client_card (id, branch_id, name, phone) VALUES (\(card), \(branch), 'card', '+1 555 0100')", logger: log)
                    try await Self.attach(connection, branch: branch, column: "client_card_id", parent: card, logger: log)
                }
                // Moves, deletes and membership changes after the rows, each with every row as it was just before it: a
                // task to another plan of its branch with a new title in the same write, a plan (with its tasks, history
                // and attachments) and a client card (with a new phone) to another branch, a task deleted with its
                // history and attachments, a membership removed and one granted.
                var statements: [UInt32: Before] = [:]
                let (movedPlan, _) = plans[0]
                let movedTask = try #require(tasks.first { $0.plan == plans[1].0 })
                let deletedTask = try #require(tasks.last)
                for statement: PostgresQuery in [
                    "UPDATE task SET plan_id = \(movedPlan), title = \(newTitle) WHERE id = \(movedTask.id)",
                    "UPDATE plan SET branch_id = \(branches[1]) WHERE id = \(movedPlan)",
                    "DELETE FROM attachment WHERE client_card_id = \(cards[0])",
                    "UPDATE client_card SET branch_id = \(branches[2]), phone = \(newPhone) WHERE id = \(cards[0])",
                    "DELETE FROM task WHERE id = \(deletedTask.id)",
                    "DELETE FROM branch_member WHERE user_id = \(users[0]) AND branch_id = \(branches[1])",
                    """
                    INSERT INTO branch_member (branch_id, user_id, role) VALUES (\(branches[0]), \(users[1]), 'viewer')
                    ON CONFLICT (branch_id, user_id) DO UPDATE SET role = 'editor'
                    """,
                ] {
                    let (xid, before) = try await Self.run(statement, on: connection, logger: log)
                    statements[xid] = before
                }
                try await connection.query("INSERT INTO client_card (branch_id, name) VALUES (\(branches[0]), 'the last write')", logger: log)
                return (statements: statements, movedTask: movedTask.id, movedCard: cards[0])
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
                        let everything = EventFanOut.DeliveryMask((1 << fanOut.deliveries.count) - 1)
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

                // Every DELETE that a principal receives — on any set of the event's channels it may subscribe to, with
                // its memberships as the owner read them just before the statement — shows the row as it was.
                let principals = users.map(Principal.user) + [Principal.service(actingUser: nil)]
                var movesOut: Set<String> = []
                var plainDeletes = 0
                for event in events {
                    let moved = event.operation == .update && event.previousPlace != nil
                    guard let before = written.statements[event.xid] else {
                        #expect(
                            event.operation != .delete && !moved,
                            "seed \(seed): \(event.sequence) \(event.table) \(event.operation) has no row before it")
                        continue
                    }
                    let key = "\(event.table)/\(Self.rowID(event))"
                    let truth = before.rows[key]
                    #expect(truth != nil || (event.operation != .delete && !moved), "seed \(seed): \(key) was not there before \(event.sequence)")
                    let newRow = moved ? Self.object(event.record) : nil
                    for principal in principals {
                        let memberships = principal.isService ? Memberships() : before.memberships(of: principal.userID!)
                        var fanOut = EventFanOut(event)
                        for mask in 1..<(1 << fanOut.deliveries.count) {
                            guard
                                let decision = fanOut.decide(
                                    for: principal, options: SubscriptionOptions(), mask: EventFanOut.DeliveryMask(mask), memberships: memberships)
                            else { continue }
                            let frame = String(
                                buffer: SSEFrame.change(event.placed(as: decision.operation), channels: fanOut.channels(decision.readable)))
                            // The card's new phone reaches only those who may read the branch it moved to.
                            let mayReadNewBranch = principal.isService || memberships.role(in: branches[2]) != nil
                            #expect(
                                !frame.contains(newPhone) || mayReadNewBranch,
                                "seed \(seed), \(principal), channels \(fanOut.channels(decision.readable)): the card's new phone in \(frame)")
                            guard decision.operation == .delete, let truth else { continue }
                            let problems = Self.deleteProblems(
                                frame: frame, truth: truth, newRow: newRow, memberOf: principal.isService ? nil : Set(memberships.branchIDs))
                            #expect(problems.isEmpty, "seed \(seed), \(principal), \(key) at \(event.sequence): \(problems.joined(separator: "; "))")
                            if moved { movesOut.insert(key) } else { plainDeletes += 1 }
                        }
                    }
                    // The check fails the server's old behaviour: a move shown to those it leaves as the row after it.
                    if moved, key == "client_card/\(written.movedCard.uuidString.lowercased())", let truth {
                        var wrong = event.placed(as: .delete)
                        wrong.oldRecord = event.record
                        let problems = Self.deleteProblems(
                            frame: String(buffer: SSEFrame.change(wrong, channels: [.branch(branches[0])])), truth: truth, newRow: newRow,
                            memberOf: [branches[0]])
                        #expect(problems.contains { $0.contains("phone") } && problems.contains { $0.contains("branch_id") }, "\(problems)")
                    }
                }
                #expect(movesOut.contains("client_card/\(written.movedCard.uuidString.lowercased())"), "seed \(seed): \(movesOut)")
                #expect(movesOut.contains("task/\(written.movedTask.uuidString.lowercased())"), "seed \(seed): \(movesOut)")
                #expect(movesOut.contains { $0.hasPrefix("status_history/") } && plainDeletes > 0, "seed \(seed): \(movesOut)")
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

    /// Every row of the tables and the memberships, as the owner read them in a statement's transaction just before it.
    struct Before: Sendable {
        /// Each row's JSON as PostgreSQL makes it (`row_to_json`, as the log's records are), keyed `table/id`.
        var rows: [String: [String: JSONValue]]

        func memberships(of user: UUID) -> Memberships {
            var memberships = Memberships()
            for (key, row) in rows where key.hasPrefix("branch_member/") {
                guard row["user_id"]?.stringValue.flatMap(UUID.init(uuidString:)) == user,
                    let branch = row["branch_id"]?.stringValue.flatMap(UUID.init(uuidString:)),
                    let role = row["role"]?.stringValue.flatMap(MemberRole.init(rawValue:))
                else { continue }
                memberships.roles[branch] = role
            }
            return memberships
        }
    }

    /// Runs a statement in its own transaction, reading every row first; returns the transaction's id (as the log
    /// records it) and the rows.
    static func run(_ statement: PostgresQuery, on connection: PostgresConnection, logger: Logger) async throws -> (UInt32, Before) {
        try await connection.query("BEGIN", logger: logger)
        try await connection.query("SET LOCAL TimeZone = 'UTC'", logger: logger)
        var rows: [String: [String: JSONValue]] = [:]
        for table in tables {
            let result = try await connection.query(PostgresQuery(unsafeSQL: "SELECT id::text, row_to_json(t)::text FROM \(table) t"), logger: logger)
            for try await (id, json) in result.decode((String, String).self) { rows["\(table)/\(id)"] = object(json) }
        }
        try await connection.query(statement, logger: logger)
        var xid: Int64 = 0
        for try await value in try await connection.query("SELECT txid_current() % 4294967296", logger: logger).decode(Int64.self) {
            xid = value
        }
        try await connection.query("COMMIT", logger: logger)
        return (UInt32(xid), Before(rows: rows))
    }

    /// What is wrong with a DELETE frame (a plain delete, or a move out of a channel): its `record` must be `{}` and its
    /// `old_record` the row as it was (`truth`), column by column, in a branch of `memberOf` (nil: any); no value that
    /// only the row after a move has (`newRow`) may appear anywhere in it.
    static func deleteProblems(frame: String, truth: [String: JSONValue], newRow: [String: JSONValue]?, memberOf: Set<UUID>?) -> [String] {
        guard let data = frame.split(separator: "\n").first(where: { $0.hasPrefix("data: ") }).map({ String($0.dropFirst(6)) }),
            let payload = object(data)
        else { return ["no JSON data line in \(frame)"] }
        var problems: [String] = []
        if payload["event"] != .string("DELETE") { problems.append("event \(show(payload["event"])), not DELETE") }
        if payload["record"] != .object([:]) { problems.append("record \(show(payload["record"])), not {}") }
        guard case .object(let old) = payload["old_record"] else { return problems + ["old_record \(show(payload["old_record"])) is not an object"] }
        problems += differences(old, truth).map { "old_record \($0)" }
        if let memberOf, !(old["branch_id"]?.stringValue.flatMap(UUID.init(uuidString:)).map(memberOf.contains) ?? false) {
            problems.append("old_record's branch_id \(show(old["branch_id"])) is not a branch of the user (\(memberOf.map(\.uuidString).sorted()))")
        }
        let before = Set(truth.values.compactMap(\.stringValue))
        for (column, value) in (newRow ?? [:]).sorted(by: { $0.key < $1.key }) {
            guard let text = value.stringValue, !before.contains(text), frame.contains(text) else { continue }
            problems.append("the frame holds \(column) \(show(value)) of the row after the move")
        }
        return problems
    }

    /// The columns in which `got` differs from `expected`, each with both values.
    static func differences(_ got: [String: JSONValue], _ expected: [String: JSONValue]) -> [String] {
        Set(got.keys).union(expected.keys).sorted().compactMap { column in
            got[column] == expected[column] ? nil : "\(column): got \(show(got[column])), expected \(show(expected[column]))"
        }
    }

    static func object(_ text: String) -> [String: JSONValue]? {
        try? JSONDecoder().decode([String: JSONValue].self, from: Data(text.utf8))
    }

    /// A value as JSON text, or `(none)`.
    static func show(_ value: JSONValue?) -> String {
        guard let value, let data = try? JSONEncoder().encode(value) else { return "(none)" }
        return String(decoding: data, as: UTF8.self)
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
