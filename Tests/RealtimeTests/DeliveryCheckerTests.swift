import Foundation
import HTTPTypes
import Logging
import PostgresNIO
import Testing

@testable import Realtime

/// The delivery checker: writers through REST and plain SQL on every table, rows moving between branches, and
/// memberships added and removed while subscribers stream. At the end every subscriber's stream is held against the
/// truth:
/// - **complete, exact, ordered:** it received exactly the events of its branch, in commit order, once each, from its
///   cursor until its user lost the branch — computed here from the event log and the memberships it records, not by
///   the server's fan-out;
/// - **isolated and convergent:** the rows rebuilt from its events are exactly what its user reads of that branch
///   under PostgreSQL's row-level security;
/// - **DELETEs show the row as it was:** every DELETE it received (a plain delete, or a row moving out of its branch)
///   has `record` `{}` and as `old_record` the row in its branch, column by column the last version the stream had of
///   it and the row as the log held it before that event, with no value of the row after a move.
///
/// It runs plain, and with a fault injected while it runs: every database connection of the server killed twice
/// (writers then retry a `503 database_unavailable` with the same `Idempotency-Key`, as clients do), or a transaction
/// held open across most of the writes.
/// One file over 400 lines because the checker and the workload it checks are one thing, read together.
@Suite(.timeLimit(.minutes(4)))
struct DeliveryCheckerTests {
    enum Fault: String, Sendable {
        case none
        /// Every connection of the server (relay, walsender, listeners, pool) terminated at two points of the run.
        case everyConnectionKilled
        /// A transaction that inserts a card early and commits late, while the other writes go on.
        case longTransaction
    }

    struct Case: Sendable, CustomStringConvertible {
        var seed: UInt64
        var fault: Fault
        var description: String { "seed \(seed), fault \(fault.rawValue)" }
    }

    static let tables = ["plan", "task", "status_history", "client_card", "attachment", "branch_member"]

    /// A user's stream of one branch.
    struct Watch: Sendable {
        var user: UUID
        var branch: UUID
        var stream: SSEClient
    }

    @Test(arguments: [
        Case(seed: 7, fault: .none), Case(seed: 8, fault: .none), Case(seed: 9, fault: .everyConnectionKilled),
        Case(seed: 10, fault: .longTransaction),
    ])
    func everySubscriberGetsExactlyWhatItMaySeeInCommitOrderAndConverges(_ check: Case) async throws {
        let seed = check.seed
        let server = try await TestServer.make(changeFeed: true)
        var random = SeededRandom(seed: seed)
        let branches = (0..<3).map { _ in UUID() }
        let users = (0..<5).map { _ in UUID() }
        // Every user is a member somewhere; some of several branches.
        var initial: [(UUID, UUID, String)] = []
        for user in users {
            for branch in branches where Int.random(in: 0..<3, using: &random) > 0 || branch == branches[users.firstIndex(of: user)! % 3] {
                initial.append((branch, user, ["viewer", "editor", "admin"].randomElement(using: &random)!))
            }
        }
        let operations = (0..<120).map { _ in UInt64.random(in: 0...UInt64.max, using: &random) }
        let memberships = initial
        try await server.testLive { client in
            let service = Principal.service(actingUser: nil)
            for (index, branch) in branches.enumerated() {
                _ = try await client.send(.post, "/rest/v1/branches", as: service, json: #"{"id":"\#(branch)","name":"B\#(index)"}"#)
            }
            for user in users { _ = try await client.send(.post, "/rest/v1/users", as: service, json: #"{"id":"\#(user)","display_name":"u"}"#) }
            for (branch, user, role) in memberships {
                let reply = try await client.send(.put, "/rest/v1/branches/\(branch)/members/\(user)", as: service, json: #"{"role":"\#(role)"}"#)
                try #require(reply.status.code < 300, "\(reply.text)")
            }
            var plans: [UUID: [UUID]] = [:]
            for branch in branches {
                for _ in 0..<2 {
                    let plan = UUID()
                    let reply = try await client.send(
                        .post, "/rest/v1/plans", as: service,
                        json: #"{"id":"\#(plan)","branch_id":"\#(branch)","title":"P","period_start":"2026-11-30","period_end":"2026-12-06"}"#)
                    try #require(reply.status == .created, "\(reply.text)")
                    plans[branch, default: []].append(plan)
                }
            }
            // Every stream starts from the same cursor: a marker committed after the setup, once it is in the log.
            let start = try await Self.waitForLogged(server, xid: try await Self.commitMarker(server, plan: plans[branches[0]]![0]))

            var watches: [Watch] = []
            for (branch, user, _) in memberships {
                let stream = try await ChangeFeedTests.open(
                    client, "/realtime/v1/branch/\(branch)", as: .user(user), lastEventID: "\(start)")
                watches.append(Watch(user: user, branch: branch, stream: stream))
            }

            // The writers: random operations of every table, through REST or SQL.
            let plansOf = plans
            let removed = try await server.withOwnerConnection { connection in
                var random = SeededRandom(seed: seed &* 31)
                var removed: [(UUID, UUID)] = []
                var tasks: [(id: UUID, branch: UUID)] = []
                var cards: [(id: UUID, branch: UUID)] = []
                var attachments: [UUID] = []
                let (commitLong, longCommitter) = AsyncStream.makeStream(of: Void.self)
                var longTransaction: Task<UUID, any Error>?
                for (step, roll) in operations.enumerated() {
                    switch (check.fault, step) {
                    case (.everyConnectionKilled, 30), (.everyConnectionKilled, 80):
                        let victims = try await ChangeFeedFaultTests.serverConnections(server)
                        let killed = try await ChangeFeedFaultTests.terminate(victims, server)
                        #expect(!killed.isEmpty, "step \(step): no connection of the server was killed")
                    case (.longTransaction, 10):
                        let branch = branches[0]
                        longTransaction = Task {
                            try await server.withOwnerConnection { long in
                                let id = UUID()
                                try await long.query("BEGIN", logger: server.logger)
                                try await long.query(
                                    "INSERT INTO client_card (id, branch_id, name) VALUES (\(id), \(branch), 'long')", logger: server.logger)
                                for await _ in commitLong { break }
                                try await long.query("COMMIT", logger: server.logger)
                                return id
                            }
                        }
                    case (.longTransaction, 100):
                        longCommitter.yield()
                        let id = try await #require(longTransaction).value
                        cards.append((id, branches[0]))
                    default: break
                    }
                    let branch = branches[Int(roll % 3)]
                    let plan = plansOf[branch]![Int((roll >> 8) % 2)]
                    let viaSQL = (roll >> 16) % 2 == 0
                    switch (roll >> 20) % 9 {
                    case 0, 1:
                        let id = UUID()
                        if viaSQL {
                            try await connection.query(
                                """
                                INSERT INTO task (id, branch_id, plan_id, title, starts_at, ends_at)
                                VALUES (\(id), \(branch), \(plan), \("t\(step)"), now(), now() + interval '1 hour')
                                """, logger: server.logger)
                        } else {
                            let reply = try await Self.write(
                                client,
                                .post, "/rest/v1/tasks", as: service,
                                json:
                                    #"{"id":"\#(id)","plan_id":"\#(plan)","title":"t\#(step)","starts_at":"2026-11-30T09:00:00Z","ends_at":"2026-11-30T10:00:00Z"}"#
                            )
                            try #require(reply.status == .created, "\(reply.text)")
                        }
                        tasks.append((id, branch))
                    case 2:
                        guard let (id, _) = tasks.randomElement(using: &random) else { continue }
                        let status = ["taken", "done", "posted", "edited"].randomElement(using: &random)!
                        if viaSQL {
                            try await connection.query(
                                "UPDATE task SET status = \(status), title = \("s\(step)") WHERE id = \(id)", logger: server.logger)
                        } else {
                            _ = try await Self.write(client, .patch, "/rest/v1/tasks/\(id)", as: service, json: #"{"status":"\#(status)"}"#)
                        }
                    case 3:
                        guard !tasks.isEmpty else { continue }
                        let (id, _) = tasks.remove(at: Int.random(in: 0..<tasks.count, using: &random))
                        try await connection.query("DELETE FROM task WHERE id = \(id)", logger: server.logger)
                    case 4:
                        let id = UUID()
                        try await connection.query(
                            "INSERT INTO client_card (id, branch_id, name) VALUES (\(id), \(branch), 'c')", logger: server.logger)
                        cards.append((id, branch))
                    case 5:
                        // A card (cards have no attachments here) moves to another branch, with a new phone in the
                        // same write: those of the branch it leaves must see neither.
                        guard !cards.isEmpty else { continue }
                        let index = Int.random(in: 0..<cards.count, using: &random)
                        let to = branches.filter { $0 != cards[index].branch }.randomElement(using: &random)!
                        try await connection.query(
                            "UPDATE client_card SET branch_id = \(to), phone = \("phone \(step)") WHERE id = \(cards[index].id)",
                            logger: server.logger)
                        cards[index].branch = to
                    case 6:
                        guard let (task, taskBranch) = tasks.randomElement(using: &random) else { continue }
                        let id = UUID()
                        try await connection.query(
                            """
                            INSERT INTO attachment (id, branch_id, task_id, file_name, content_type, byte_size, storage_url)
                            VALUES (\(id), \(taskBranch), \(task), 'f.pdf', 'application/pdf', 1, 'https://files.example/f')
                            """, logger: server.logger)
                        attachments.append(id)
                    case 7:
                        guard !attachments.isEmpty else { continue }
                        let id = attachments.remove(at: Int((roll >> 32) % UInt64(attachments.count)))
                        try await connection.query("DELETE FROM attachment WHERE id = \(id)", logger: server.logger)
                    default:
                        try await connection.query("UPDATE plan SET title = \("p\(step)") WHERE id = \(plan)", logger: server.logger)
                    }
                    // Memberships change mid-stream: one removed at a third, one granted at two thirds.
                    if step == operations.count / 3, let (branch, user, _) = memberships.first {
                        let reply = try await Self.write(client, .delete, "/rest/v1/branches/\(branch)/members/\(user)", as: service)
                        try #require(reply.status.code < 300, "\(reply.text)")
                        removed.append((branch, user))
                    }
                    if step == 2 * operations.count / 3,
                        let (branch, user) = branches.flatMap({ b in users.map { (b, $0) } }).first(where: { pair in
                            !memberships.contains { $0.0 == pair.0 && $0.1 == pair.1 }
                        })
                    {
                        _ = try await Self.write(
                            client, .put, "/rest/v1/branches/\(branch)/members/\(user)", as: service, json: #"{"role":"viewer"}"#)
                    }
                }
                return removed
            }

            // The end of the writes: a last transaction committed after all of them. The log is in commit order, so once
            // it holds this one it holds every write before it (judged by the log itself, not by positions in the WAL).
            let marker = try await Self.commitMarker(server, plan: plans[branches[0]]![0])
            let end = try await Self.waitForLogged(server, xid: marker)
            let database = Database(endpoint: server.endpoint, poolSize: 3, logger: server.logger)
            try await withThrowingTaskGroup(of: Void.self) { group in
                group.addTask { await database.client.run() }
                defer { group.cancelAll() }
                let log = try await Self.events(database, after: 0)
                let history = LogHistory(log)
                var checkedDeletes = DeleteCheck()
                for watch in watches {
                    let expected = Self.expected(for: watch, in: log, after: start, memberships: memberships)
                    try await watch.stream.waitFor("seq \(end) or the end of the stream", timeout: .seconds(30)) { frames in
                        frames.contains { Int64($0.id ?? "") ?? 0 >= (expected.last ?? 0) } || watch.stream.isFinished
                    }
                    let received = watch.stream.changes.compactMap { Int64($0.id ?? "") }
                    let revoked = removed.contains { $0.0 == watch.branch && $0.1 == watch.user }
                    let differing = Set(received).symmetricDifference(expected).sorted().compactMap { sequence in
                        log.first { $0.sequence == sequence }.map {
                            "\($0.sequence) \($0.table) \($0.operation) \($0.place.branch?.uuidString ?? "-")"
                        }
                    }
                    let context =
                        "seed \(seed): user \(watch.user) on branch \(watch.branch) (finished: \(watch.stream.isFinished), last: \(watch.stream.frames.last?.event ?? "-")): received \(received), expected \(expected); differing: \(differing); the writes ended at \(end), the log read ends at \(log.last?.sequence ?? 0)"
                    if revoked {
                        // Revocation drops what its stream had not written yet: nothing of the branch goes out after the
                        // removal commits. What did go out is the start of the expected sequence, in order, once each.
                        #expect(expected.starts(with: received), "\(context)")
                    } else {
                        #expect(received == expected, "\(context)")
                    }
                    #expect(
                        watch.stream.frames.contains { $0.event == "revoked" } == revoked,
                        "seed \(seed): a stream ends revoked exactly when its user lost the branch")

                    // Every DELETE it received (before any revocation too) shows the row as it was.
                    let deletes = Self.checkDeletes(in: watch.stream.changes, branch: watch.branch, history: history)
                    #expect(
                        deletes.problems.isEmpty,
                        "seed \(seed): user \(watch.user) on branch \(watch.branch):\n\(deletes.problems.joined(separator: "\n"))")
                    checkedDeletes.add(deletes)

                    // Convergent and isolated: the rows rebuilt from the stream are what the user reads under RLS.
                    guard !revoked else { continue }
                    let initialRows = try await Self.rowsUnderRLS(database, as: .user(watch.user), branch: watch.branch, asOf: start, log: log)
                    var rebuilt = initialRows
                    for frame in watch.stream.changes {
                        guard let table = frame.table else { continue }
                        let id = (frame.operation == "DELETE" ? frame.oldRecord["id"] : frame.record["id"]) as? String ?? "?"
                        if frame.operation == "DELETE" { rebuilt[table, default: []].remove(id) } else { rebuilt[table, default: []].insert(id) }
                    }
                    rebuilt = rebuilt.filter { !$0.value.isEmpty }
                    let truth = try await Self.rowsUnderRLS(database, as: .user(watch.user), branch: watch.branch, asOf: nil, log: log)
                    #expect(rebuilt == truth, "seed \(seed): user \(watch.user) on branch \(watch.branch) did not converge")
                }
                for watch in watches { watch.stream.close() }
                #expect(
                    checkedDeletes.movesOut > 0 && checkedDeletes.plain > 0 && checkedDeletes.againstStream > 0,
                    "seed \(seed): the DELETEs checked are too few to tell: \(checkedDeletes)")
            }
        }
    }

    /// The check of DELETE frames fails the server's old behaviour (a move shown to those it leaves as the row after
    /// it) and passes the new (the row as it was).
    @Test func theDeleteCheckTellsARowAfterAMoveFromTheRowAsItWas() {
        let (from, to, card) = (UUID(), UUID(), UUID())
        let id = card.uuidString.lowercased()
        let before = #"{"id":"\#(id)","branch_id":"\#(from.uuidString.lowercased())","name":"c","phone":"old phone"}"#
        let after = #"{"id":"\#(id)","branch_id":"\#(to.uuidString.lowercased())","name":"c","phone":"new phone"}"#
        let time = Date()
        let insert = ChangeEvent(
            sequence: 1, table: "client_card", operation: .insert, commitTimestamp: "t", commitTime: time, place: RowPlace(branch: from),
            record: before, oldRecord: "{}")
        let move = ChangeEvent(
            sequence: 2, table: "client_card", operation: .update, commitTimestamp: "t", commitTime: time, place: RowPlace(branch: to),
            previousPlace: RowPlace(branch: from), record: after,
            oldRecord: #"{"branch_id":"\#(from.uuidString.lowercased())","phone":"old phone"}"#)
        let history = LogHistory([insert, move])
        func frames(_ shown: ChangeEvent) -> [SSEClient.Frame] {
            [insert, shown].map { event in
                SSEClient.Frame(
                    id: "\(event.sequence)", event: "postgres_changes", data: SSEFrame.changeJSON(event, channels: [.branch(from)], id: nil))
            }
        }

        let right = Self.checkDeletes(in: frames(move.placed(as: .delete)), branch: from, history: history)
        #expect(right.problems.isEmpty && right.movesOut == 1 && right.againstStream == 1, "\(right)")

        var wrong = move.placed(as: .delete)
        wrong.oldRecord = move.record
        let problems = Self.checkDeletes(in: frames(wrong), branch: from, history: history).problems
        for expected in ["branch_id", "phone", "not the stream's branch", "the stream last had", "the log held", "of the row after the move"] {
            #expect(problems.contains { $0.contains(expected) }, "'\(expected)' not in \(problems)")
        }
    }

    /// Each row's last version in the log before each event: the record of its latest INSERT or UPDATE.
    struct LogHistory {
        var events: [Int64: ChangeEvent] = [:]
        var rowBefore: [Int64: [String: JSONValue]] = [:]

        init(_ log: [ChangeEvent]) {
            var last: [String: [String: JSONValue]] = [:]
            for event in log {
                events[event.sequence] = event
                if event.operation == .truncate {
                    last = last.filter { !$0.key.hasPrefix("\(event.table)/") }
                    continue
                }
                let key = "\(event.table)/\(PolicyEquivalenceTests.rowID(event))"
                rowBefore[event.sequence] = last[key]
                last[key] = event.operation == .delete ? nil : PolicyEquivalenceTests.object(event.record)
            }
        }
    }

    /// What the DELETE frames of a stream showed, and what was wrong with them.
    struct DeleteCheck: CustomStringConvertible {
        var problems: [String] = []
        /// DELETEs of rows moving out of the branch, and of rows deleted.
        var movesOut = 0
        var plain = 0
        /// DELETEs of rows the stream had seen before.
        var againstStream = 0

        mutating func add(_ other: DeleteCheck) {
            problems += other.problems
            movesOut += other.movesOut
            plain += other.plain
            againstStream += other.againstStream
        }

        var description: String { "\(movesOut) moves out, \(plain) deletes, \(againstStream) of rows the stream had seen; problems: \(problems)" }
    }

    /// Checks the DELETE frames of a stream of `branch`: `record` `{}`, and `old_record` the row as it was — in this
    /// branch; column by column the last version the stream had of it (the record of its latest INSERT or UPDATE); the
    /// row as the log held it before the event (or, for a row the log has no earlier version of, the DELETE's own old
    /// row as logged); and no value that only the row after a move has.
    static func checkDeletes(in frames: [SSEClient.Frame], branch: UUID, history: LogHistory) -> DeleteCheck {
        var check = DeleteCheck()
        var seen: [String: [String: JSONValue]] = [:]
        for frame in frames {
            guard let table = frame.table, let payload = PolicyEquivalenceTests.object(frame.data) else { continue }
            let record = Self.fields(payload["record"])
            guard frame.operation == "DELETE" else {
                let key = "\(table)/\(record["id"]?.stringValue ?? "?")"
                seen[key, default: [:]].merge(record) { _, new in new }
                continue
            }
            let old = Self.fields(payload["old_record"])
            let key = "\(table)/\(old["id"]?.stringValue ?? "?")"
            var problems: [String] = []
            if !record.isEmpty { problems.append("record is \(PolicyEquivalenceTests.show(payload["record"])), not {}") }
            if old["branch_id"]?.stringValue.flatMap(UUID.init(uuidString:)) != branch {
                problems.append("old_record's branch_id \(PolicyEquivalenceTests.show(old["branch_id"])) is not the stream's branch")
            }
            if let last = seen.removeValue(forKey: key) {
                check.againstStream += 1
                problems += PolicyEquivalenceTests.differences(old, last).map { "old_record is not what the stream last had: \($0)" }
            }
            if let event = Int64(frame.id ?? "").flatMap({ history.events[$0] }) {
                let moved = event.operation == .update
                if moved { check.movesOut += 1 } else { check.plain += 1 }
                let logged = history.rowBefore[event.sequence] ?? (moved ? nil : PolicyEquivalenceTests.object(event.oldRecord))
                if let logged {
                    problems += PolicyEquivalenceTests.differences(old, logged).map { "old_record is not the row the log held before: \($0)" }
                    let asItWas = Set(logged.values.compactMap(\.stringValue))
                    let after = moved ? PolicyEquivalenceTests.object(event.record) ?? [:] : [:]
                    for (column, value) in after.sorted(by: { $0.key < $1.key }) {
                        guard let text = value.stringValue, !asItWas.contains(text), frame.data.contains(text) else { continue }
                        problems.append("the frame holds \(column) \(PolicyEquivalenceTests.show(value)) of the row after the move")
                    }
                } else {
                    problems.append("the log holds no version of the row before \(event.sequence)")
                }
            } else {
                problems.append("its id is no event of the log")
            }
            check.problems += problems.map { "DELETE \(frame.id ?? "-") of \(key): \($0)" }
        }
        return check
    }

    /// The fields of a JSON object value; none for anything else.
    static func fields(_ value: JSONValue?) -> [String: JSONValue] {
        guard case .object(let fields) = value else { return [:] }
        return fields
    }

    /// A write through REST as the service role that, like a client, retries a `503 database_unavailable` (its
    /// database connection was killed) with the same `Idempotency-Key`.
    static func write(
        _ client: TestServer.Client,
        _ method: HTTPRequest.Method,
        _ path: String,
        as principal: Principal,
        json: String? = nil
    ) async throws -> TestServer.Client.Reply {
        var headers = HTTPFields()
        headers[HTTPField.Name("Idempotency-Key")!] = UUID().uuidString
        for attempt in 1...20 {
            let reply = try await client.send(method, path, as: principal, json: json, headers: method == .post ? headers : [:])
            guard reply.status == .serviceUnavailable else { return reply }
            #expect(reply.errorCode == "database_unavailable", "\(reply.text)")
            try await Task.sleep(for: .milliseconds(100 * attempt))
        }
        throw FaultTimeout(what: "\(method) \(path) to succeed after the database came back", timeout: .seconds(21))
    }

    /// The sequences a stream must carry: every event of its branch (where the row is, or was for a DELETE or a move
    /// away) after the cursor, while its user is a member — replaying the log's own membership events.
    static func expected(for watch: Watch, in log: [ChangeEvent], after start: Int64, memberships: [(UUID, UUID, String)]) -> [Int64] {
        var member = Set(memberships.map { "\($0.1)/\($0.0)" })
        var result: [Int64] = []
        let key = "\(watch.user)/\(watch.branch)"
        for event in log {
            if event.table == "branch_member", let row = MembershipRow(event) {
                if event.operation == .delete { member.remove("\(row.user)/\(row.branch)") } else { member.insert("\(row.user)/\(row.branch)") }
                if event.sequence > start && event.operation == .delete && "\(row.user)/\(row.branch)" == key { return result }
            }
            guard event.sequence > start, member.contains(key) else { continue }
            let old = event.previousPlace?.branch ?? event.place.branch
            if event.place.branch == watch.branch || old == watch.branch { result.append(event.sequence) }
        }
        return result
    }

    struct MembershipRow {
        var user: UUID
        var branch: UUID
        init?(_ event: ChangeEvent) {
            let text = event.operation == .delete ? event.oldRecord : event.record
            guard let object = (try? JSONSerialization.jsonObject(with: Data(text.utf8))) as? [String: Any],
                let user = (object["user_id"] as? String).flatMap(UUID.init(uuidString:)),
                let branch = (object["branch_id"] as? String).flatMap(UUID.init(uuidString:))
            else { return nil }
            self.user = user
            self.branch = branch
        }
    }

    /// Ids of the branch's rows, per table, that the user reads under RLS now — or, `asOf` a cursor, the rows that
    /// existed then (those now readable whose first event came later are left out; none is deleted before the start).
    static func rowsUnderRLS(_ database: Database, as principal: Principal, branch: UUID, asOf: Int64?, log: [ChangeEvent]) async throws
        -> [String: Set<String>]
    {
        if let asOf {
            // Before the writers started, the branches held their plans and memberships, put there by inserts.
            var rows: [String: Set<String>] = [:]
            for event in log where event.sequence <= asOf && event.place.branch == branch {
                switch event.operation {
                case .insert: rows[event.table, default: []].insert(PolicyEquivalenceTests.rowID(event))
                case .delete: rows[event.table]?.remove(PolicyEquivalenceTests.rowID(event))
                case .update, .truncate: break
                }
            }
            return rows.filter { !$0.value.isEmpty }
        }
        return try await database.withRequestTransaction(as: principal) { transaction in
            var visible: [String: Set<String>] = [:]
            for table in tables {
                let rows = try await transaction.query(
                    PostgresQuery(
                        unsafeSQL: "SELECT id::text FROM \(table) WHERE branch_id = $1",
                        binds: {
                            var binds = PostgresBindings()
                            binds.append(branch)
                            return binds
                        }()))
                let ids = try rows.map { try $0.decode(String.self) }
                if !ids.isEmpty { visible[table] = Set(ids) }
            }
            return visible
        }
    }

    static func events(_ database: Database, after cursor: Int64) async throws -> [ChangeEvent] {
        var events: [ChangeEvent] = []
        while true {
            let batch = try await EventLog.read(after: events.last?.sequence ?? cursor, limit: 1000, client: database.client, logger: database.logger)
            events += batch
            if batch.count < 1000 { return events }
        }
    }

    /// Commits a change of a plan's title, and returns its transaction id (as the log records it).
    static func commitMarker(_ server: TestServer, plan: UUID) async throws -> Int64 {
        try await server.withOwnerConnection { connection in
            try await connection.query("BEGIN", logger: server.logger)
            try await connection.query("UPDATE plan SET title = 'end of the writes' WHERE id = \(plan)", logger: server.logger)
            var xid: Int64 = 0
            for try await value in try await connection.query("SELECT txid_current() % 4294967296", logger: server.logger).decode(Int64.self) {
                xid = value
            }
            try await connection.query("COMMIT", logger: server.logger)
            return xid
        }
    }

    /// Waits until the event log holds an event of transaction `xid`, and returns its sequence.
    static func waitForLogged(_ server: TestServer, xid: Int64) async throws -> Int64 {
        try await server.withOwnerConnection { connection in
            let deadline = ContinuousClock.now + .seconds(60)
            while ContinuousClock.now < deadline {
                let rows = try await connection.query("SELECT max(seq) FROM realtime.event_log WHERE xid = \(xid)", logger: server.logger)
                for try await sequence in rows.decode(Int64?.self) { if let sequence { return sequence } }
                try await Task.sleep(for: .milliseconds(50))
            }
            throw FaultTimeout(what: "transaction \(xid) to reach the event log", timeout: .seconds(60))
        }
    }
}
