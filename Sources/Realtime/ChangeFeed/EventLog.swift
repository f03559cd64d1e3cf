import Foundation
import Logging
import PostgresNIO

/// The ordered log of committed changes, `realtime.event_log`: the relay appends to it, every node reads it.
///
/// Values arrive from the WAL as text; PostgreSQL itself turns them into the row's JSON (`row_to_json` over
/// `json_populate_record`), so an event's `record` has exactly the shape of the REST API's rows.
public enum EventLog {
    /// The tables of the publication, and how each finds its plan and task (every row names its branch in `branch_id`):
    /// from the registry, ``TableSchema/streamed``.
    static let tables: [String: FeedPlacement] = Dictionary(
        uniqueKeysWithValues: TableSchema.streamed.compactMap { schema in schema.feed.map { (schema.table, $0) } })

    /// The most changes the relay appends in one statement.
    static let maxBatchChanges = 1000

    /// The NOTIFY channel that wakes the tailers after each appended batch.
    public static let wakeUpChannel = "realtime_events"

    /// The statement that wakes the tailers (sent when the transaction that ran it commits).
    static let wakeUpStatement: PostgresQuery = "SELECT pg_notify(\(wakeUpChannel), '')"

    /// Appends the changes of committed transactions (or pieces of one), in order, in the caller's open transaction, with
    /// one statement for the whole batch (one round trip: a statement per change made the relay the bottleneck under
    /// load; the relay keeps a batch to ``maxBatchChanges``). A change already logged (same commit LSN and index,
    /// replayed after a crash) is skipped. Returns the number of changes offered (not counting those of other tables).
    @discardableResult
    static func append(_ transactions: [WALTransaction], on connection: PostgresConnection, logger: Logger) async throws -> Int {
        var batch = AppendBatch()
        for transaction in transactions {
            let lsn = LogicalReplicationStream.formatLSN(transaction.commitLSN)
            for (position, change) in transaction.changes.enumerated() {
                let index = transaction.firstIndex + position
                guard change.schema == "public", let locators = tables[change.table] else { continue }
                guard change.operation != .truncate else {
                    batch.appendTruncate(of: change.table, lsn: lsn, index: index, in: transaction)
                    continue
                }
                let newRow = row(change.columns, change.newValues)
                let oldRow = row(change.columns, change.oldValues)
                let current = change.operation == .delete ? oldRow : newRow
                guard let current else { continue }
                let branch = uuid(current["branch_id"])
                let plan = locators.planColumn.flatMap { uuid(current[$0]) }
                let task = locators.taskColumn.flatMap { uuid(current[$0]) }
                var oldBranch: UUID?
                var oldPlan: UUID?
                var changedColumns: [String] = []
                if change.operation == .update, let oldRow, let newRow {
                    oldBranch = uuid(oldRow["branch_id"]).flatMap { $0 == branch ? nil : $0 }
                    oldPlan = locators.planColumn.flatMap { uuid(oldRow[$0]) }.flatMap { $0 == plan ? nil : $0 }
                    changedColumns = change.columns.filter { oldRow[$0] != newRow[$0] }
                }
                batch.lsns.append(lsn)
                batch.indexes.append(index)
                batch.xids.append(Int64(transaction.xid))
                batch.commitTimes.append(transaction.commitTime)
                batch.tableNames.append(change.table)
                batch.operations.append(change.operation.rawValue)
                batch.places.append(branch: branch, plan: plan, task: task, oldBranch: oldBranch, oldPlan: oldPlan)
                batch.newRows.append(jsonText(newRow ?? [:]))
                batch.oldRows.append(jsonText(oldRow ?? [:]))
                batch.changedColumns.append(JSONValue.text(ofArray: changedColumns))
            }
        }
        guard !batch.lsns.isEmpty else { return 0 }
        var bindings = PostgresBindings()
        bindings.append(batch.lsns)
        bindings.append(batch.indexes)
        bindings.append(batch.xids)
        bindings.append(batch.commitTimes)
        bindings.append(batch.tableNames)
        bindings.append(batch.operations)
        batch.places.bind(into: &bindings)
        bindings.append(batch.newRows)
        bindings.append(batch.oldRows)
        bindings.append(batch.changedColumns)
        let result = try await connection.queryIfOpen(PostgresQuery(unsafeSQL: appendSQL, binds: bindings), logger: logger)
        for try await _ in result {}
        return batch.lsns.count
    }

    /// The columns of a batch, one array each, unnested by ``appendSQL`` in order.
    private struct AppendBatch {
        var lsns: [String] = []
        var indexes: [Int] = []
        var xids: [Int64] = []
        var commitTimes: [Date] = []
        var tableNames: [String] = []
        var operations: [String] = []
        var places = PlaceColumns()
        var newRows: [String] = []
        var oldRows: [String] = []
        /// Each an array of column names as JSON text.
        var changedColumns: [String] = []

        /// A TRUNCATE: an event of the table with no row and no place.
        mutating func appendTruncate(of table: String, lsn: String, index: Int, in transaction: WALTransaction) {
            lsns.append(lsn)
            indexes.append(index)
            xids.append(Int64(transaction.xid))
            commitTimes.append(transaction.commitTime)
            tableNames.append(table)
            operations.append(ChangeEvent.Operation.truncate.rawValue)
            places.append(branch: nil, plan: nil, task: nil, oldBranch: nil, oldPlan: nil)
            newRows.append("{}")
            oldRows.append("{}")
            changedColumns.append("[]")
        }
    }

    /// The locating columns of a batch (``appendSQL``'s `$7`…`$11`): uuid text, or "" for none.
    private struct PlaceColumns {
        var branches: [String] = []
        var plans: [String] = []
        var tasks: [String] = []
        /// For a moved row, its branch and plan before the change where they differ.
        var oldBranches: [String] = []
        var oldPlans: [String] = []

        mutating func append(branch: UUID?, plan: UUID?, task: UUID?, oldBranch: UUID?, oldPlan: UUID?) {
            branches.append(branch?.uuidString ?? "")
            plans.append(plan?.uuidString ?? "")
            tasks.append(task?.uuidString ?? "")
            oldBranches.append(oldBranch?.uuidString ?? "")
            oldPlans.append(oldPlan?.uuidString ?? "")
        }

        func bind(into bindings: inout PostgresBindings) {
            for column in [branches, plans, tasks, oldBranches, oldPlans] { bindings.append(column) }
        }
    }

    /// A row's JSON as the REST API shows it: PostgreSQL turns the WAL's text values into the table's types.
    private static func typedRecord(_ json: String) -> String {
        "CASE c.table_name "
            + tables.keys.sorted().map { "WHEN '\($0)' THEN row_to_json(json_populate_record(NULL::public.\(identifier($0)), \(json)))" }
            .joined(separator: " ") + " END"
    }

    /// A change's plan: the row's own, or for a table placed by its task's plan (``FeedPlacement/planOfTask``) that
    /// task's plan as it is now (a task deleted with it leaves the change on its branch's channel only).
    private static var planExpression: String {
        let byTask = TableSchema.streamed.filter { $0.feed?.planOfTask == true }.map { "'\($0.table)'" }
        guard !byTask.isEmpty else { return "NULLIF(c.plan, '')::uuid" }
        return """
            coalesce(NULLIF(c.plan, '')::uuid, CASE WHEN c.table_name IN (\(byTask.joined(separator: ", "))) \
            THEN (SELECT t.plan_id FROM public.task t WHERE t.id = NULLIF(c.task, '')::uuid) END)
            """
    }

    /// One INSERT for a batch: the arrays unnested in order (the identity column numbers rows in that order, so `seq`
    /// follows commit order), each record typed by its table, an UPDATE's old record cut to the columns that changed.
    private static let appendSQL = """
        INSERT INTO realtime.event_log (commit_lsn, tx_index, xid, commit_time, table_name, op, branch_id, plan_id, task_id,
                                        old_branch_id, old_plan_id, record, old_record)
        SELECT c.lsn::pg_lsn, c.tx_index, c.xid, c.commit_time, c.table_name, c.op,
               NULLIF(c.branch, '')::uuid, \(planExpression), NULLIF(c.task, '')::uuid,
               NULLIF(c.old_branch, '')::uuid, NULLIF(c.old_plan, '')::uuid,
               CASE WHEN c.op IN ('DELETE', 'TRUNCATE') THEN '{}'::json ELSE \(typedRecord("c.new_row::json")) END,
               CASE c.op
                   WHEN 'INSERT' THEN '{}'::json
                   WHEN 'TRUNCATE' THEN '{}'::json
                   WHEN 'DELETE' THEN \(typedRecord("c.old_row::json"))
                   ELSE coalesce((SELECT json_object_agg(key, value) FROM json_each(\(typedRecord("c.old_row::json")))
                                  WHERE key IN (SELECT json_array_elements_text(c.changed::json))), '{}'::json)
               END
        FROM unnest($1::text[], $2::int[], $3::bigint[], $4::timestamptz[], $5::text[], $6::text[], $7::text[], $8::text[],
                    $9::text[], $10::text[], $11::text[], $12::text[], $13::text[], $14::text[])
             WITH ORDINALITY AS c(lsn, tx_index, xid, commit_time, table_name, op, branch, plan, task, old_branch, old_plan,
                                  new_row, old_row, changed, position)
        ORDER BY c.position
        ON CONFLICT ON CONSTRAINT event_log_position_key DO NOTHING
        """

    /// The columns every read of the log selects, in the order `event(from:)` decodes them.
    static let selectColumns = """
        seq, xid, table_name, op, to_char(commit_time AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"'), commit_time,
        branch_id, plan_id, old_branch_id, old_plan_id, record::text, old_record::text
        """

    /// Decodes one row selected with `selectColumns`.
    static func event(from row: PostgresRow) throws -> ChangeEvent {
        let (sequence, xid, table, op, timestamp, time, branch, plan, oldBranch, oldPlan, record, oldRecord) = try row.decode(
            (Int64, Int64, String, String, String, Date, UUID?, UUID?, UUID?, UUID?, String, String).self
        )
        let place = RowPlace(branch: branch, plan: plan)
        // The log keeps only what changed of a moved row's place (nil for a column that kept its value).
        let moved = oldBranch != nil || oldPlan != nil
        return ChangeEvent(
            sequence: sequence,
            xid: UInt32(truncatingIfNeeded: xid),
            table: table,
            operation: ChangeEvent.Operation(rawValue: op) ?? .update,
            commitTimestamp: timestamp,
            commitTime: time,
            place: place,
            previousPlace: moved ? RowPlace(branch: oldBranch ?? branch, plan: oldPlan ?? plan) : nil,
            record: record,
            oldRecord: oldRecord
        )
    }

    /// Events after `cursor`, in order, at most `limit`.
    public static func read(after cursor: Int64, limit: Int, client: PostgresClient, logger: Logger) async throws -> [ChangeEvent] {
        let rows = try await client.rowsIfOpen(tailRead(after: cursor, limit: limit), logger: logger)
        return try rows.map(event(from:))
    }

    /// The statement of ``read(after:limit:client:logger:)``.
    static func tailRead(after cursor: Int64, limit: Int) -> PostgresQuery {
        PostgresQuery(
            unsafeSQL: """
                SELECT \(selectColumns) FROM realtime.event_log
                WHERE seq > $1 AND seq <= (SELECT seq FROM realtime.log_head) ORDER BY seq LIMIT $2
                """,
            binds: bindings(cursor, limit)
        )
    }

    /// The events of some channels after `cursor`, in order, at most `limit`, and how far the log was read: a replay
    /// (resume, poll) reads only its own channels' events, through the log's indexes, so its work grows with what the
    /// caller may see, not with the whole log of every branch.
    ///
    /// A channel's events are those whose row is, or was before a move, in its branch or plan. With them come the
    /// `branch_member` events of `memberBranches` (the subscription's branches, so that a replay applies every grant
    /// and revocation in order) and every TRUNCATE. `readThrough` is the newest sequence that no further read after
    /// `cursor` can add to: the last event when `limit` were found, else the committed head the read was bounded by.
    static func read(
        after cursor: Int64,
        limit: Int,
        channels: Set<Channel>,
        memberBranches: Set<UUID>,
        client: PostgresClient,
        logger: Logger
    ) async throws -> (events: [ChangeEvent], readThrough: Int64) {
        let head = try await newestSequence(client: client, logger: logger)
        let query = channelRead(after: cursor, through: head, limit: limit, channels: channels, memberBranches: memberBranches)
        let rows = try await client.rowsIfOpen(query, logger: logger)
        let events = try rows.map(event(from:))
        let readThrough = events.count >= limit ? events.last?.sequence ?? cursor : max(head, events.last?.sequence ?? cursor, cursor)
        return (events, readThrough)
    }

    /// The statement of ``read(after:limit:channels:memberBranches:client:logger:)``.
    static func channelRead(
        after cursor: Int64,
        through head: Int64,
        limit: Int,
        channels: Set<Channel>,
        memberBranches: Set<UUID>
    ) -> PostgresQuery {
        var branches: [UUID] = []
        var plans: [UUID] = []
        for channel in channels {
            switch channel {
            case .branch(let id): branches.append(id)
            case .plan(let id): plans.append(id)
            case .presence: break
            }
        }
        var bindings = PostgresBindings()
        bindings.append(cursor)
        bindings.append(limit)
        bindings.append(branches)
        bindings.append(plans)
        bindings.append(Array(memberBranches))
        bindings.append(head)
        return PostgresQuery(unsafeSQL: channelReadSQL, binds: bindings)
    }

    /// One ordered, limited index scan per channel and per locating column, bounded by the committed head `$6` (so
    /// that no scan walks the rows of a transaction still being logged), each returning whole rows, merged in
    /// sequence order (an event found twice, e.g. a move within a subscription's channels, counted once): see
    /// ``read(after:limit:channels:memberBranches:client:logger:)``.
    private static let channelReadSQL = """
        SELECT DISTINCT ON (seq) \(selectColumns) FROM (
            SELECT e.* FROM unnest($3::uuid[]) AS c(id), LATERAL (
                SELECT * FROM realtime.event_log WHERE branch_id = c.id AND seq > $1 AND seq <= $6 ORDER BY seq LIMIT $2) e
            UNION ALL SELECT e.* FROM unnest($3::uuid[]) AS c(id), LATERAL (
                SELECT * FROM realtime.event_log WHERE old_branch_id = c.id AND seq > $1 AND seq <= $6 ORDER BY seq LIMIT $2) e
            UNION ALL SELECT e.* FROM unnest($4::uuid[]) AS c(id), LATERAL (
                SELECT * FROM realtime.event_log WHERE plan_id = c.id AND seq > $1 AND seq <= $6 ORDER BY seq LIMIT $2) e
            UNION ALL SELECT e.* FROM unnest($4::uuid[]) AS c(id), LATERAL (
                SELECT * FROM realtime.event_log WHERE old_plan_id = c.id AND seq > $1 AND seq <= $6 ORDER BY seq LIMIT $2) e
            UNION ALL SELECT e.* FROM unnest($5::uuid[]) AS c(id), LATERAL (
                SELECT * FROM realtime.event_log
                WHERE branch_id = c.id AND table_name = 'branch_member' AND seq > $1 AND seq <= $6 ORDER BY seq LIMIT $2) e
            UNION ALL (SELECT * FROM realtime.event_log WHERE op = 'TRUNCATE' AND seq > $1 AND seq <= $6 ORDER BY seq LIMIT $2)
        ) found
        ORDER BY seq
        LIMIT $2
        """

    /// The newest sequence number in the log (0 when empty).
    public static func newestSequence(client: PostgresClient, logger: Logger) async throws -> Int64 {
        let rows = try await client.rowsIfOpen(PostgresQuery(unsafeSQL: newestSequenceSQL), logger: logger)
        return try rows.first?.decode(Int64.self) ?? 0
    }

    /// The statement of ``newestSequence(client:logger:)``.
    static let newestSequenceSQL = "SELECT seq FROM realtime.log_head"

    /// The oldest retained sequence number, or nil when the log is empty.
    public static func oldestSequence(client: PostgresClient, logger: Logger) async throws -> Int64? {
        let rows = try await client.rowsIfOpen(
            "SELECT min(seq) FROM realtime.event_log WHERE seq <= (SELECT seq FROM realtime.log_head)", logger: logger)
        return try rows.first?.decode(Int64?.self) ?? nil
    }

    private static func row(_ columns: [String], _ values: [String?]?) -> [String: String?]? {
        guard let values else { return nil }
        var row: [String: String?] = [:]
        for (column, value) in zip(columns, values) { row[column] = value }
        return row
    }

    private static func uuid(_ value: String??) -> UUID? {
        guard case .some(.some(let text)) = value else { return nil }
        return UUID(uuidString: text)
    }

    private static func jsonText(_ row: [String: String?]) -> String {
        var object: [String: JSONValue] = [:]
        for (key, value) in row { object[key] = value.map(JSONValue.string) ?? .null }
        return JSONValue.text(of: object)
    }

    private static func bindings(_ cursor: Int64, _ limit: Int) -> PostgresBindings {
        var bindings = PostgresBindings()
        bindings.append(cursor)
        bindings.append(limit)
        return bindings
    }
}
