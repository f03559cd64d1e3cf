import Foundation
import Logging
import PostgresNIO

/// One user's memberships across the positions of the event log, for replaying it: a user receives an event only if,
/// at that event's sequence, they were a member of its branch.
///
/// Loaded from `realtime.membership_interval` (kept by the log's own trigger, so it agrees with the log on every node)
/// together with the log head it accounts for; `branch_member` events after that head are applied as a replay reads
/// them (``apply(_:)``), so a replay that runs ahead of what was loaded still sees every grant and revocation in order.
struct MembershipHistory: Sendable, Equatable {
    /// One membership from the event that granted it (included) to the event that ended it (excluded).
    struct Interval: Sendable, Equatable {
        var branchID: UUID
        var role: MemberRole
        var from: Int64
        var until: Int64?

        func holds(at sequence: Int64) -> Bool { from <= sequence && until.map { sequence < $0 } ?? true }
    }

    let userID: UUID
    private(set) var intervals: [Interval]
    /// The newest sequence the intervals account for.
    private(set) var coveredThrough: Int64

    init(userID: UUID, intervals: [Interval], coveredThrough: Int64) {
        self.userID = userID
        self.intervals = intervals
        self.coveredThrough = coveredThrough
    }

    /// The user's memberships at an event's position.
    func memberships(at sequence: Int64) -> Memberships {
        var memberships = Memberships()
        for interval in intervals where interval.holds(at: sequence) { memberships.roles[interval.branchID] = interval.role }
        return memberships
    }

    /// Applies a `branch_member` event (or a TRUNCATE of it) read after ``coveredThrough``; returns the branches this
    /// user stopped being a member of, if any. Other events, and events already accounted for, change nothing.
    @discardableResult
    mutating func apply(_ event: ChangeEvent) -> Set<UUID> {
        guard event.table == TableSchema.branchMember.table, event.sequence > coveredThrough else { return [] }
        coveredThrough = event.sequence
        var ended = Set<UUID>()
        if event.operation == .truncate {
            for index in intervals.indices where intervals[index].until == nil {
                intervals[index].until = event.sequence
                ended.insert(intervals[index].branchID)
            }
            return ended
        }
        guard let change = MembershipChange(event) else { return [] }
        if let removed = change.removed, removed.userID == userID {
            end(branch: removed.branchID, at: event.sequence)
            ended.insert(removed.branchID)
        }
        if let (member, role) = change.added, member.userID == userID {
            end(branch: member.branchID, at: event.sequence)
            ended.remove(member.branchID)
            intervals.append(Interval(branchID: member.branchID, role: role, from: event.sequence, until: nil))
        }
        return ended
    }

    private mutating func end(branch: UUID, at sequence: Int64) {
        for index in intervals.indices where intervals[index].branchID == branch && intervals[index].until == nil {
            intervals[index].until = sequence
        }
    }

    /// The user's intervals that still matter for events after `cursor`, and the log head they account for, read in one
    /// statement (one snapshot), so that the two agree.
    static func load(userID: UUID, after cursor: Int64, client: PostgresClient, logger: Logger) async throws -> MembershipHistory {
        let rows = try await client.rowsIfOpen(loadStatement(userID: userID, after: cursor), logger: logger)
        var head: Int64 = 0
        var intervals: [Interval] = []
        for row in rows {
            let (rowHead, branch, role, from, until) = try row.decode((Int64, UUID?, String?, Int64?, Int64?).self)
            head = rowHead
            guard let branch, let from, let role = role.flatMap(MemberRole.init(rawValue:)) else { continue }
            intervals.append(Interval(branchID: branch, role: role, from: from, until: until))
        }
        return MembershipHistory(userID: userID, intervals: intervals, coveredThrough: head)
    }

    /// The statement of ``load(userID:after:client:logger:)``.
    static func loadStatement(userID: UUID, after cursor: Int64) -> PostgresQuery {
        """
        SELECT h.head, i.branch_id, i.role, i.from_seq, i.until_seq
        FROM (SELECT seq AS head FROM realtime.log_head) h
        LEFT JOIN realtime.membership_interval i
               ON i.user_id = \(userID) AND (i.until_seq IS NULL OR i.until_seq > \(cursor))
        """
    }

    /// For a replication slot just created: logs, as `branch_member` events, every difference between the memberships
    /// the log knows and the table (`realtime.reconcile_memberships()` of migration 0004), and wakes the tailers.
    ///
    /// - Parameter run: runs one statement and returns its rows (on the pool, or on the relay's own connection).
    static func reconcile(logger: Logger, _ run: (PostgresQuery) async throws -> [PostgresRow]) async throws {
        let appended = try await run("SELECT realtime.reconcile_memberships()").first?.decode(Int.self) ?? 0
        guard appended > 0 else { return }
        _ = try await run(EventLog.wakeUpStatement)
        logger.notice("logged memberships made while there was no replication slot", metadata: ["events": "\(appended)"])
    }

    /// Every membership that holds at the log's head, and that head, read in one statement: what the fan-out starts
    /// from, exactly as the log left it.
    static func current(client: PostgresClient, logger: Logger) async throws -> (head: Int64, memberships: [UUID: Memberships]) {
        let rows = try await client.rowsIfOpen(
            """
            SELECT h.head, i.user_id, i.branch_id, i.role
            FROM (SELECT seq AS head FROM realtime.log_head) h
            LEFT JOIN realtime.membership_interval i ON i.until_seq IS NULL
            """,
            logger: logger
        )
        var head: Int64 = 0
        var memberships: [UUID: Memberships] = [:]
        for row in rows {
            let (rowHead, user, branch, role) = try row.decode((Int64, UUID?, UUID?, String?).self)
            head = rowHead
            guard let user, let branch, let role = role.flatMap(MemberRole.init(rawValue:)) else { continue }
            memberships[user, default: Memberships()].roles[branch] = role
        }
        return (head, memberships)
    }
}
