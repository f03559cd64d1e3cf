/// The tables whose changes stream to subscribers: the exposed tables plus `branch_member`.
public enum StreamedTables {
    /// `branch_member` as it appears in change events (it is not served by the generic row controller).
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
        writable: false
    )

    /// Every streamed table, in a fixed order.
    public static let all: [TableSchema] = TableSchema.exposed + [branchMember]

    /// The names of the streamed tables.
    public static let names: [String] = all.map(\.table)

    private static let byName: [String: TableSchema] = Dictionary(uniqueKeysWithValues: all.map { ($0.table, $0) })

    /// The schema of a streamed table, or nil for any other name.
    public static func schema(_ table: String) -> TableSchema? { byName[table] }
}
