/// The SQL type of a column, as far as the API needs to know it.
public enum ColumnKind: Sendable, Equatable {
    case uuid
    case text
    case timestamp
    case date
    case integer
    /// Text limited to a fixed set of values.
    case oneOf([String])

    /// The PostgreSQL type name used to cast bound parameters.
    var sqlType: String {
        switch self {
        case .uuid: "uuid"
        case .text, .oneOf: "text"
        case .timestamp: "timestamptz"
        case .date: "date"
        case .integer: "bigint"
        }
    }
}

/// One column of a table exposed by the API.
public struct Column: Sendable {
    /// How a write may touch this column.
    public enum Writability: Sendable {
        /// Set by the server or the database only.
        case readOnly
        /// Accepted when the row is created; fixed afterwards.
        case onCreate
        /// Accepted on create and on update.
        case always
    }

    public var name: String
    public var kind: ColumnKind
    public var nullable: Bool
    public var writability: Writability
    /// Must be present in a create body.
    public var requiredOnCreate: Bool

    public init(_ name: String, _ kind: ColumnKind, nullable: Bool = false, _ writability: Writability = .readOnly, required: Bool = false) {
        self.name = name
        self.kind = kind
        self.nullable = nullable
        self.writability = writability
        self.requiredOnCreate = required
    }
}

/// A column whose value names a row of another table in the same branch.
public struct Reference: Sendable {
    public var column: String
    public var table: String
    /// The error when the referenced row lives in another branch.
    public var otherBranchError: APIError
}

/// Where a streamed table's rows go: every row on its branch's channel (`branch_id`), and on its plan's channel too
/// when `planColumn` names the row's plan.
public struct FeedPlacement: Sendable, Equatable {
    /// The column naming the row's plan (`id` for a plan itself); nil when the rows stream on their branch only.
    public var planColumn: String?
    /// The column naming the row's task, which a subscription's `task_id` filter matches; nil when there is none.
    public var taskColumn: String?
    /// When the row names no plan but a task (an attachment of a task): its task's plan places it, as the relay finds it
    /// when it logs the change.
    public var planOfTask = false
}

/// The one registry of tables: for each, its REST path, its columns and which may be written, its policy resource, the
/// columns that locate it (branch, plan, task, references) and whether and where its changes stream.
///
/// Everything else derives from it: the REST routes (``exposed``), the policy resource, the event log's locating
/// columns (``streamed``), the channels a row streams on, and the error messages that list tables. `RegistryTests`
/// fails when the migrations' catalog, the OpenAPI document or the browser client's table map disagree with it.
public struct TableSchema: Sendable {
    /// The SQL table name, e.g. `client_card`.
    public var table: String
    /// The URL path segment, e.g. `client_cards`.
    public var path: String
    public var resource: Resource
    public var columns: [Column]
    /// References to rows that fix this row's branch; on create, branch_id may be derived from them.
    public var references: [Reference]
    /// Whether the API accepts writes (status history is read-only).
    public var writable: Bool
    /// Columns of which a new row must set exactly one (an attachment's parent).
    public var exactlyOneOf: [String] = []
    /// Where its changes stream; nil for a table that does not stream.
    public var feed: FeedPlacement?
    /// What a broken named CHECK constraint of the table means, as the API's `422 constraint_violation` says it.
    public var checkMessages: [String: String] = [:]

    public func column(_ name: String) -> Column? { columns.first { $0.name == name } }

    /// The status values of a task.
    public static let taskStatuses = ["taken", "done", "posted", "edited"]

    private static let stamps: [Column] = [
        Column("created_at", .timestamp),
        Column("updated_at", .timestamp, .always),
        Column("updated_by", .uuid, nullable: true),
    ]

    public static let plan = TableSchema(
        table: "plan",
        path: "plans",
        resource: .plan,
        columns: [
            Column("id", .uuid, .onCreate),
            Column("branch_id", .uuid, .onCreate, required: true),
            Column("title", .text, .always, required: true),
            Column("period_start", .date, .always, required: true),
            Column("period_end", .date, .always, required: true),
        ] + stamps,
        references: [],
        writable: true,
        feed: FeedPlacement(planColumn: "id", taskColumn: nil),
        checkMessages: ["plan_period_check": "period_end must not be before period_start."]
    )

    public static let task = TableSchema(
        table: "task",
        path: "tasks",
        resource: .task,
        columns: [
            Column("id", .uuid, .onCreate),
            Column("branch_id", .uuid, .onCreate),
            Column("plan_id", .uuid, .always, required: true),
            Column("title", .text, .always, required: true),
            Column("starts_at", .timestamp, .always, required: true),
            Column("ends_at", .timestamp, .always, required: true),
            Column("status", .oneOf(taskStatuses), .always),
            Column("client_card_id", .uuid, nullable: true, .always),
        ] + stamps,
        references: [
            Reference(column: "plan_id", table: "plan", otherBranchError: .planInOtherBranch),
            Reference(
                column: "client_card_id",
                table: "client_card",
                otherBranchError: .invalidReference("The client card belongs to another branch than the task.")
            ),
        ],
        writable: true,
        feed: FeedPlacement(planColumn: "plan_id", taskColumn: "id"),
        checkMessages: ["task_period_check": "ends_at must be after starts_at."]
    )

    public static let clientCard = TableSchema(
        table: "client_card",
        path: "client_cards",
        resource: .clientCard,
        columns: [
            Column("id", .uuid, .onCreate),
            Column("branch_id", .uuid, .onCreate, required: true),
            Column("name", .text, .always, required: true),
            Column("phone", .text, nullable: true, .always),
            Column("notes", .text, nullable: true, .always),
        ] + stamps,
        references: [],
        writable: true,
        feed: FeedPlacement(planColumn: nil, taskColumn: nil)
    )

    public static let attachment = TableSchema(
        table: "attachment",
        path: "attachments",
        resource: .attachment,
        columns: [
            Column("id", .uuid, .onCreate),
            Column("branch_id", .uuid, .onCreate),
            Column("plan_id", .uuid, nullable: true, .onCreate),
            Column("task_id", .uuid, nullable: true, .onCreate),
            Column("client_card_id", .uuid, nullable: true, .onCreate),
            Column("file_name", .text, .always, required: true),
            Column("content_type", .text, .always, required: true),
            Column("byte_size", .integer, .always, required: true),
            Column("storage_url", .text, .always, required: true),
        ] + stamps,
        references: ["plan", "task", "client_card"].map {
            Reference(
                column: "\($0)_id",
                table: $0,
                otherBranchError: .invalidReference("An attachment's parent must be in the attachment's branch.")
            )
        },
        writable: true,
        exactlyOneOf: ["plan_id", "task_id", "client_card_id"],
        feed: FeedPlacement(planColumn: "plan_id", taskColumn: "task_id", planOfTask: true),
        checkMessages: ["attachment_one_parent_check": "An attachment has exactly one parent: plan_id, task_id or client_card_id."]
    )

    public static let statusHistory = TableSchema(
        table: "status_history",
        path: "status_history",
        resource: .statusHistory,
        columns: [
            Column("id", .uuid),
            Column("branch_id", .uuid),
            Column("plan_id", .uuid),
            Column("task_id", .uuid),
            Column("from_status", .oneOf(taskStatuses), nullable: true),
            Column("to_status", .oneOf(taskStatuses)),
            Column("changed_at", .timestamp),
            Column("changed_by", .uuid, nullable: true),
        ] + stamps,
        references: [],
        writable: false,
        feed: FeedPlacement(planColumn: "plan_id", taskColumn: "task_id")
    )

    /// Who is a member of which branch: its changes stream (the fan-out and every replay learn memberships from
    /// them), but it is written and read through `/rest/v1/branches/{id}/members`, not the generic row controller.
    public static let branchMember = TableSchema(
        table: "branch_member",
        path: "branch_members",
        resource: .branchMember,
        columns: [
            Column("id", .uuid),
            Column("branch_id", .uuid),
            Column("user_id", .uuid),
            Column("role", .oneOf(MemberRole.allCases.map(\.rawValue))),
            Column("created_at", .timestamp),
            Column("updated_at", .timestamp),
            Column("updated_by", .uuid, nullable: true),
        ],
        references: [],
        writable: false,
        feed: FeedPlacement(planColumn: nil, taskColumn: nil)
    )

    /// The tables served under `/rest/v1/<path>` by the generic row controller.
    public static let exposed: [TableSchema] = [plan, task, clientCard, attachment, statusHistory]

    /// The tables whose changes stream to subscribers (the publication `realtime_changes`), in a fixed order.
    public static let streamed: [TableSchema] = (exposed + [branchMember]).filter { $0.feed != nil }

    /// The names of the streamed tables.
    public static let streamedNames: [String] = streamed.map(\.table)

    private static let streamedByName: [String: TableSchema] = Dictionary(uniqueKeysWithValues: streamed.map { ($0.table, $0) })

    /// A streamed table by name, or nil for any other name.
    public static func streamed(_ table: String) -> TableSchema? { streamedByName[table] }

    /// The streamed tables whose rows also stream on their plan's channel.
    public static let planScopedTables: Set<String> = Set(streamed.filter { $0.feed?.planColumn != nil }.map(\.table))
}
