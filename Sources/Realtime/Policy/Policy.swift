import Foundation

/// A member's role in a branch, from least to most rights.
public enum MemberRole: String, Sendable, Codable, Comparable, CaseIterable {
    case viewer
    case editor
    case admin

    private var rank: Int {
        switch self {
        case .viewer: 1
        case .editor: 2
        case .admin: 3
        }
    }

    public static func < (lhs: MemberRole, rhs: MemberRole) -> Bool { lhs.rank < rhs.rank }
}

/// The branches a user belongs to, with their role in each.
public struct Memberships: Sendable, Equatable {
    public var roles: [UUID: MemberRole]

    public init(_ roles: [UUID: MemberRole] = [:]) { self.roles = roles }

    public func role(in branch: UUID) -> MemberRole? { roles[branch] }
    public var branchIDs: [UUID] { Array(roles.keys) }
    public var isAdminAnywhere: Bool { roles.values.contains(.admin) }
}

/// The kinds of rows the API exposes.
public enum Resource: String, Sendable, CaseIterable {
    case branch
    case appUser = "app_user"
    case branchMember = "branch_member"
    case plan
    case task
    case clientCard = "client_card"
    case statusHistory = "status_history"
    case attachment
}

/// What a request wants to do with a row.
public enum Access: Sendable {
    case read
    case write
}

/// The outcome of a policy check.
public enum PolicyDecision: Sendable, Equatable {
    case allowed
    /// The caller may not even see the branch: answer as if the row did not exist (404).
    case notVisible
    /// The caller sees the branch but their role does not allow this (403).
    case denied(String)
}

/// Who may read or write what: the Swift side of the rules that the migrations also enforce with row-level security.
///
/// - viewers and above read a branch's rows;
/// - editors and above write plans, tasks, client cards and attachments;
/// - status history is written only by a change of a task's status, never directly;
/// - admins manage the members of their branch;
/// - the service role bypasses these rules, except that nobody writes status history directly.
public enum Policy {
    public static func decide(
        _ principal: Principal,
        _ memberships: Memberships,
        _ access: Access,
        _ resource: Resource,
        inBranch branch: UUID
    ) -> PolicyDecision {
        if resource == .statusHistory, access == .write {
            return .denied("Status history is written only by changing a task's status.")
        }
        if principal.isService { return .allowed }
        guard let role = memberships.role(in: branch) else { return .notVisible }
        switch access {
        case .read:
            return .allowed
        case .write:
            let needed: MemberRole
            switch resource {
            case .plan, .task, .clientCard, .attachment: needed = .editor
            case .branch, .branchMember, .appUser, .statusHistory: needed = .admin
            }
            return role >= needed ? .allowed : .denied("Your role in this branch is \(role.rawValue); this needs \(needed.rawValue) or above.")
        }
    }

    /// Creating a branch is for the service role only: a branch has no admin before it exists.
    public static func mayCreateBranch(_ principal: Principal) -> Bool { principal.isService }

    /// Users are created by the service role or by an admin of some branch (who then adds them as members).
    public static func mayCreateUser(_ principal: Principal, _ memberships: Memberships) -> Bool {
        principal.isService || memberships.isAdminAnywhere
    }
}
