import Hummingbird

/// `GET /healthz` (the process answers) and `GET /readyz` (the database answers and every migration is applied).
struct HealthController {
    let database: Database
    let migrations: [MigrationFile]

    func addRoutes(to router: Router<AppRequestContext>) {
        router.get("healthz") { _, _ in Response.json(.ok, #"{"status":"ok"}"#) }
        router.get("readyz") { _, _ in
            if let problem = await database.readiness(migrations: migrations) { throw APIError.notReady("Not ready: \(problem).") }
            return Response.json(.ok, #"{"status":"ready"}"#)
        }
    }
}
