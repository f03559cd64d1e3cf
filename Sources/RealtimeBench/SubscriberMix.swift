/// Who the realtime subscribers are: a mix of viewers, editors and admins, on plan and branch channels, some of them
/// outsiders (members of the quiet branch only, which is never written to), and some also asking for a branch they
/// may not see (a negative control, which must be refused with 404 before any frame).
///
/// Subscriber `i` is decided by `i` alone, so a run is the same every time:
/// - every `outsiderEvery`-th is an outsider watching the quiet branch: every event of the writes must be withheld;
/// - otherwise every `branchEvery`-th watches the branch of plan `i mod P` (everything of that branch, nothing of the
///   others), and the rest watch plan `i mod P`;
/// - its role comes from the role mix; it is a member of the branch it watches only;
/// - every `negativeEvery`-th also asks for the next written branch, where it is no member.
struct SubscriberMix: Sendable {
    var plans: Int
    var branches: Int
    var roles: RoleMix
    var branchShare: Double
    var outsiderShare: Double
    var negativeShare: Double

    /// One subscriber: the user's membership, and the channel it watches.
    struct Subscriber: Sendable {
        var member: Fixture.Member
        var scope: ChannelScope
        var isOutsider: Bool
        var hasNegativeControl: Bool

        var kind: String { (isOutsider ? "outsider" : member.role) + (scope.isBranch ? " branch" : " plan") }
    }

    func subscribers(_ count: Int) -> [Subscriber] {
        let outsiderEvery = Self.every(outsiderShare)
        let branchEvery = Self.every(branchShare)
        let negativeEvery = Self.every(negativeShare)
        return (0..<count).map { index in
            let plan = index % plans
            let role = roles.role(for: index)
            let negative = index % negativeEvery == 0 && branches >= 2
            if index % outsiderEvery == outsiderEvery - 1 {
                return Subscriber(
                    member: .init(branch: branches, role: role), scope: .branch(branches), isOutsider: true, hasNegativeControl: negative)
            }
            let branch = plan % branches
            let scope: ChannelScope = index % branchEvery == branchEvery / 2 ? .branch(branch) : .plan(plan)
            return Subscriber(member: .init(branch: branch, role: role), scope: scope, isOutsider: false, hasNegativeControl: negative)
        }
    }

    /// 1 in how many for a share (never, for 0).
    private static func every(_ share: Double) -> Int {
        share > 0 ? max(1, Int((1 / share).rounded())) : Int.max
    }
}

extension ChannelScope {
    var isBranch: Bool {
        if case .branch = self { return true }
        return false
    }
}

/// How often each role is given to subscribers, in percent.
struct RoleMix: Sendable, Codable {
    var viewer = 80
    var editor = 15
    var admin = 5

    /// Parses `viewer=80,editor=15,admin=5`.
    init(parsing text: String) throws {
        for (name, value) in try percentPairs(text, option: "--roles") {
            switch name {
            case "viewer": viewer = value
            case "editor": editor = value
            case "admin": admin = value
            default: throw BenchError("--roles knows viewer, editor and admin; got '\(name)'.")
            }
        }
        guard viewer + editor + admin > 0 else { throw BenchError("--roles must not be all zero.") }
    }

    /// The role of subscriber `index`: spread evenly over the subscribers (and so over the plans).
    func role(for index: Int) -> String {
        let total = viewer + editor + admin
        let position = (index &* 37) % total
        return position < admin ? "admin" : position < admin + editor ? "editor" : "viewer"
    }
}
