import Foundation
import Logging
import PostgresNIO
import ServiceLifecycle

/// What the fan-out must know before it follows the log: every membership and every plan's branch.
enum FeedBootstrap {
    /// Reads the memberships as they were at the log's head, with that head, in one statement (the log's own record of
    /// them, so not one grant is known before its event), then the plans: events after the head update the caches
    /// again, so nothing is lost between the reads.
    static func load(into hub: Hub, client: PostgresClient, logger: Logger) async throws -> Int64 {
        let (head, memberships) = try await MembershipHistory.current(client: client, logger: logger)
        var plans: [UUID: UUID] = [:]
        for row in try await client.rowsIfOpen("SELECT id, branch_id FROM plan", logger: logger) {
            let (plan, branch) = try row.decode((UUID, UUID).self)
            plans[plan] = branch
        }
        hub.setMemberships(memberships)
        hub.setPlanBranches(plans)
        logger.info("change feed ready", metadata: ["head": "\(head)", "users": "\(memberships.count)", "plans": "\(plans.count)"])
        return head
    }
}

/// Periodic work of the fan-out: ends streams whose token expired and sends keepalives. Ends the hub on shutdown.
struct FeedHousekeeping: Service {
    let hub: Hub
    var keepaliveInterval: Duration
    var sweepInterval: Duration = .seconds(1)

    func run() async throws {
        var sinceKeepalive = Duration.zero
        while !Task.isShuttingDownGracefully && !Task.isCancelled {
            do {
                try await cancelWhenGracefulShutdown { try await Task.sleep(for: sweepInterval) }
            } catch {
                break
            }
            hub.sweep()
            sinceKeepalive += sweepInterval
            if sinceKeepalive >= keepaliveInterval {
                hub.sendKeepalives()
                sinceKeepalive = .zero
            }
        }
        hub.shutdown()
    }
}
