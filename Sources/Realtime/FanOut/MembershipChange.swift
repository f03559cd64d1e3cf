import Foundation

/// What a `branch_member` change event does to the membership cache.
struct MembershipChange: Equatable {
    /// One user's membership of one branch.
    struct Member: Hashable {
        var userID: UUID
        var branchID: UUID
    }

    /// The membership that stops existing, if any.
    var removed: Member?
    /// The membership that exists after the change, with its role, if any.
    var added: (member: Member, role: MemberRole)?

    static func == (lhs: MembershipChange, rhs: MembershipChange) -> Bool {
        lhs.removed == rhs.removed && lhs.added?.member == rhs.added?.member && lhs.added?.role == rhs.added?.role
    }

    /// Reads a `branch_member` event; nil if its rows lack `user_id`, `branch_id` or a valid `role`, and for a TRUNCATE.
    ///
    /// An UPDATE's `oldRecord` has only the changed columns, so the old row is the new one overlaid with them.
    init?(_ event: ChangeEvent) {
        guard let record = Self.object(event.record), let oldRecord = Self.object(event.oldRecord) else { return nil }
        switch event.operation {
        case .insert:
            guard let added = Self.membership(record) else { return nil }
            self.added = added
        case .delete:
            guard let removed = Self.membership(oldRecord) else { return nil }
            self.removed = removed.member
        case .update:
            guard let added = Self.membership(record),
                let old = Self.membership(record.merging(oldRecord) { _, old in old })
            else { return nil }
            self.added = added
            if old.member != added.member { removed = old.member }
        case .truncate:
            return nil  // every membership at once: see `HubState.applyTruncate`
        }
    }

    private static func object(_ text: String) -> [String: JSONValue]? {
        try? JSONDecoder().decode([String: JSONValue].self, from: Data(text.utf8))
    }

    private static func membership(_ row: [String: JSONValue]) -> (member: Member, role: MemberRole)? {
        guard let user = row["user_id"]?.stringValue.flatMap(UUID.init(uuidString:)),
            let branch = row["branch_id"]?.stringValue.flatMap(UUID.init(uuidString:)),
            let role = row["role"]?.stringValue.flatMap(MemberRole.init(rawValue:))
        else { return nil }
        return (Member(userID: user, branchID: branch), role)
    }
}
