import Foundation
import Logging
import ServiceLifecycle

/// Presence and broadcast on one node: applies heartbeats, leaves and broadcasts to the local hub and tells the other
/// nodes through the ``NodeBus``; applies theirs; and expires entries nobody heartbeats any more.
///
/// Every node keeps the whole presence of the cluster and expires it on its own clock, so an entry of a node that died
/// disappears everywhere within the TTL.
public final class PresenceService: Service, Sendable {
    /// The default time an entry lives without a heartbeat.
    public static let defaultTTL = Duration.seconds(30)

    public let hub: Hub
    public let bus: NodeBus
    public let ttl: Duration
    let logger: Logger
    var sweepInterval: Duration { min(.seconds(1), ttl / 4) }

    public init(hub: Hub, bus: NodeBus, ttl: Duration = defaultTTL, logger: Logger) {
        self.hub = hub
        self.bus = bus
        self.ttl = ttl
        self.logger = logger
    }

    /// How often clients should heartbeat: a third of the TTL, so that two lost heartbeats in a row are survived.
    public var heartbeatInterval: Duration { ttl / 3 }

    public var nodeID: String { bus.nodeID }

    /// A user's heartbeat received by this node; returns the entry as stored.
    public func heartbeat(user: UUID, plan: UUID, state: PresenceState, now: Date = Date()) -> PresenceEntry {
        let entry = PresenceEntry(planID: plan, userID: user, state: state, onlineSince: now, lastSeen: now, node: nodeID)
        let stored = hub.presenceHeartbeat(entry)
        bus.publish(.heartbeat(stored))
        return stored
    }

    /// A user leaves a plan (DELETE, or page hidden).
    public func leave(user: UUID, plan: UUID) {
        if hub.presenceLeave(plan: plan, user: user) != nil { bus.publish(.leave(plan: plan, user: user, from: nodeID)) }
    }

    /// A broadcast received by this node.
    public func broadcast(_ message: BroadcastMessage) {
        hub.broadcast(message)
        bus.publish(.broadcast(message, from: nodeID))
    }

    /// Applies another node's message.
    func receive(_ message: EphemeralMessage) {
        switch message.kind {
        case .heartbeat:
            if let entry = message.entry() { hub.presenceHeartbeat(entry) }
        case .leave:
            if let plan = message.plan, let user = message.user { hub.presenceLeave(plan: plan, user: user) }
        case .broadcast:
            if let broadcast = message.broadcastMessage { hub.broadcast(broadcast) }
        case .hello:
            for entry in hub.presences(heldBy: nodeID) { bus.publish(.heartbeat(entry)) }
        }
    }

    public func run() async throws {
        await withTaskGroup(of: Void.self) { group in
            group.addTask {
                await self.bus.run(receive: { self.receive($0) })
                self.logger.debug("node bus stopped")
            }
            group.addTask {
                while (try? await cancelWhenGracefulShutdown { try await Task.sleep(for: self.sweepInterval) }) != nil {
                    self.hub.expirePresence(ttl: self.ttl)
                }
                self.logger.debug("presence sweeper stopped")
            }
            await group.next()
            group.cancelAll()
        }
    }
}
