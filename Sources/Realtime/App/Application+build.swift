import Foundation
import Hummingbird
import Logging
import PostgresNIO
import ServiceLifecycle

/// Something to run once migrations are applied and before the server accepts requests (e.g. seeding the demo).
public typealias StartupStep = @Sendable (PostgresClient) async throws -> Void

/// Builds the server: the router with its controllers, the Postgres client and housekeeping as services, and
/// migrations applied before the server starts.
public func buildApplication(
    configuration: Configuration,
    database endpoint: DatabaseEndpoint,
    tokens: TokenAuthority,
    logger: Logger,
    demo: DemoLogin = DemoLogin(),
    afterMigrations: StartupStep? = nil
) throws -> some ApplicationProtocol {
    guard let folder = MigrationFile.locateFolder(configuration.migrationsDirectory) else {
        throw MigrationError.folderUnreadable(configuration.migrationsDirectory ?? "./Migrations")
    }
    let migrations = try MigrationFile.load(from: folder)
    let database = Database(endpoint: endpoint, poolSize: configuration.databasePoolSize, logger: logger)

    let router = Router(context: AppRequestContext.self)
    router.add(middleware: ErrorMiddleware())
    let feedHealth = configuration.changeFeedEnabled ? FeedHealth(maximumLag: .seconds(configuration.readyMaxLagSeconds)) : nil
    HealthController(database: database, migrations: migrations, feed: feedHealth, slot: Relay.slotName(for: endpoint.database)).addRoutes(
        to: router)

    let gate = StartupGate()
    let hub = Hub(bufferLimit: configuration.subscriberBufferLimit, logger: logger)
    let metrics = FeedMetrics(objectives: configuration.sloObjectives)
    let limits = UserRateLimits(configuration: configuration)
    var streams = StreamController(
        hub: hub, database: database, tokens: tokens, metrics: metrics, limits: limits, enabled: configuration.changeFeedEnabled)
    streams.shutdownRetrySpread = configuration.shutdownRetrySpread
    streams.addRoutes(to: router)
    let bus = NodeBus(endpoint: endpoint, nodeID: configuration.nodeID, logger: logger)
    let presence = PresenceService(hub: hub, bus: bus, ttl: .seconds(configuration.presenceTTLSeconds), logger: logger)
    PresenceController(
        presence: presence,
        access: ChannelAccess(hub: hub, database: database),
        tokens: tokens,
        heartbeatLimiter: RateLimiter(rate: configuration.presenceRate, burst: Double(configuration.presenceBurst)),
        broadcastLimiter: RateLimiter(rate: configuration.presenceRate, burst: Double(configuration.presenceBurst))
    ).addRoutes(to: router)
    WebController(files: .bundled(), demo: demo).addRoutes(to: router)
    TableMapController().addRoutes(to: router)
    SLOController(slo: metrics.slo, tokens: tokens, nodeID: configuration.nodeID).addRoutes(to: router)
    MetricsController(metrics: metrics, hub: hub, database: database, slot: Relay.slotName(for: endpoint.database)).addRoutes(to: router)

    let rest = router.group("rest/v1").add(middleware: AuthMiddleware(tokens: tokens)).add(middleware: WriteRateLimitMiddleware(limits: limits))
    SnapshotController(database: database).addRoutes(to: rest)
    for schema in TableSchema.exposed {
        RowController(schema: schema, database: database, maxBodyBytes: configuration.maxBodyBytes).addRoutes(to: rest)
    }
    AdminController(database: database, maxBodyBytes: configuration.maxBodyBytes).addRoutes(to: rest)

    let tailer = Tailer(
        client: database.client,
        endpoint: endpoint,
        gate: gate,
        logger: logger,
        prepare: {
            let head = try await FeedBootstrap.load(into: hub, client: database.client, logger: logger)
            feedHealth?.bootstrapped()
            return head
        },
        read: { feedHealth?.tailerRead() },
        deliver: { events in
            metrics.recordFanOut(of: events)
            hub.publish(events)
        }
    )
    var services: [any Service] = [
        database.client,
        Maintenance(client: database.client, logger: logger, gate: gate, eventRetention: .seconds(configuration.eventRetentionHours * 3600)),
        presence,
    ]
    if configuration.changeFeedEnabled {
        if configuration.runsRelay { services.append(Relay(endpoint: endpoint, gate: gate, logger: logger)) }
        services += [tailer, FeedHousekeeping(hub: hub, keepaliveInterval: .seconds(configuration.keepaliveSeconds))]
    }

    var app = Application(
        responder: ShallowConnectionResponder(inner: router.buildResponder()),
        server: try ServerTransport.builder(
            for: configuration,
            limits: ConnectionLimits(total: configuration.maxConnections, perAddress: configuration.maxConnectionsPerAddress)
        ),
        configuration: .init(address: .hostname(configuration.host, port: configuration.port), serverName: "realtime"),
        services: services,
        logger: logger
    )
    app.beforeServerStarts {
        let applied = try await Migrator(files: migrations, logger: logger).migrate(client: database.client)
        logger.info("migrations are up to date", metadata: ["applied_now": "\(applied.count)", "total": "\(migrations.count)"])
        if configuration.changeFeedEnabled {
            // The slot must exist before the first request is served: a change committed before the slot is created
            // is never decoded, so it would never reach the event log.
            let stream = LogicalReplicationStream(
                conninfo: LogicalReplicationStream.conninfo(for: endpoint),
                slot: Relay.slotName(for: endpoint.database),
                publication: Relay.publicationName,
                logger: logger
            )
            let created = try await stream.ensureSlot(nudge: {
                // A checkpoint logs the running transactions, which slot creation waits for.
                _ = try? await database.client.rowsIfOpen("CHECKPOINT", logger: logger)
            })
            if created {
                logger.info("created the replication slot", metadata: ["slot": "\(stream.slot)"])
                try await MembershipHistory.reconcile(logger: logger) { try await database.client.rowsIfOpen($0, logger: logger) }
            }
        }
        try await afterMigrations?(database.client)
        gate.open()
    }
    return app
}

/// Applies the migrations to a database and returns the names applied now (for `realtime migrate`).
public func runMigrations(configuration: Configuration, endpoint: DatabaseEndpoint, logger: Logger) async throws -> [String] {
    guard let folder = MigrationFile.locateFolder(configuration.migrationsDirectory) else {
        throw MigrationError.folderUnreadable(configuration.migrationsDirectory ?? "./Migrations")
    }
    let migrator = Migrator(files: try MigrationFile.load(from: folder), logger: logger)
    let database = Database(endpoint: endpoint, poolSize: 2, logger: logger)
    return try await withThrowingTaskGroup(of: Void.self) { group in
        group.addTask { await database.client.run() }
        defer { group.cancelAll() }
        return try await migrator.migrate(client: database.client)
    }
}
