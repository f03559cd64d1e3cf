import Hummingbird
import NIOCore
import PostgresNIO
import Prometheus

/// `GET /metrics`: the change feed's figures in Prometheus' text format, with the relay's lag and the hub's subscribers read at
/// each scrape.
struct MetricsController {
    let metrics: FeedMetrics
    let hub: Hub
    let database: Database
    let slot: String

    func addRoutes(to router: Router<AppRequestContext>) {
        router.get("metrics") { _, context in
            let slotState = try? await database.client.rowsIfOpen(
                """
                SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), confirmed_flush_lsn)::float8,
                       pg_wal_lsn_diff(pg_current_wal_lsn(), restart_lsn)::float8
                FROM pg_replication_slots WHERE slot_name = \(slot)
                """,
                logger: context.logger
            ).first?.decode((Double?, Double?).self)
            if let lag = slotState?.0 { metrics.relayLagBytes.set(to: lag) }
            if let retained = slotState?.1 { metrics.slotRetainedWALBytes.set(to: retained) }
            let held = hub.subscribersByHold
            metrics.subscribersAtSocket.set(to: Double(held.atSocket))
            metrics.subscribersReadByTask.set(to: Double(held.readByTask))
            var headers = HTTPFields()
            headers[.contentType] = "text/plain; version=0.0.4; charset=utf-8"
            return Response(status: .ok, headers: headers, body: .init(byteBuffer: ByteBuffer(bytes: metrics.exposition())))
        }
    }
}
