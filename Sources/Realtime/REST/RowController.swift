import Foundation
import Hummingbird
import PostgresNIO

/// `GET`, `POST`, `PATCH` and `DELETE` under `/rest/v1/<table path>` for one table of `TableSchema.exposed`.
struct RowController {
    let schema: TableSchema
    let database: Database
    let maxBodyBytes: Int

    func addRoutes(to group: RouterGroup<AppRequestContext>) {
        group.get(RouterPath(schema.path), use: list)
        group.get(RouterPath("\(schema.path)/:id"), use: get)
        guard schema.writable else { return }
        group.post(RouterPath(schema.path), use: create)
        group.patch(RouterPath("\(schema.path)/:id"), use: update)
        group.delete(RouterPath("\(schema.path)/:id"), use: delete)
    }

    @Sendable func list(request: Request, context: AppRequestContext) async throws -> Response {
        let query = try ListQuery(parameters: request.queryPairs, schema: schema)
        do {
            let rows = try await database.withRequestTransaction(as: context.requirePrincipal()) { transaction in
                try await RowStore(schema: schema, transaction: transaction, memberships: transaction.memberships()).list(query)
            }
            return .json(.ok, rows)
        } catch let error as PSQLError where error.sqlState?.hasPrefix("22") == true {
            throw APIError.invalidFilter("A filter value is not valid for its column: \(error.serverInfo?[.message] ?? "bad value").")
        }
    }

    @Sendable func get(request: Request, context: AppRequestContext) async throws -> Response {
        let id = try context.uuidParameter("id")
        let row = try await database.withRequestTransaction(as: context.requirePrincipal()) { transaction in
            try await RowStore(schema: schema, transaction: transaction, memberships: transaction.memberships()).get(id)
        }
        return .json(.ok, row)
    }

    @Sendable func create(request: Request, context: AppRequestContext) async throws -> Response {
        var request = request
        let (body, bytes) = try await request.jsonObject(limit: maxBodyBytes)
        let idempotency = try Idempotency(request: request, body: bytes)
        let rows = RowWritePlanner.rowsToLocate(in: schema, changing: nil, body: body)
        let notFound = APIError.notFound("The \(schema.table) was not written: a row it depends on is gone.")
        let answer = try await database.write(as: context.requirePrincipal(), locating: rows, idempotency: idempotency, notFound: notFound) {
            try RowWritePlanner(schema: schema, caller: $0).create(body)
        }
        var headers = HTTPFields()
        if answer.replayedStatus != nil { headers[Idempotency.replayedHeader] = "true" }
        return .json(HTTPResponse.Status(code: answer.replayedStatus ?? 201), answer.body, headers: headers)
    }

    @Sendable func update(request: Request, context: AppRequestContext) async throws -> Response {
        let id = try context.uuidParameter("id")
        var request = request
        let (body, _) = try await request.jsonObject(limit: maxBodyBytes)
        let rows = RowWritePlanner.rowsToLocate(in: schema, changing: id, body: body)
        let answer = try await database.write(as: context.requirePrincipal(), locating: rows, notFound: notFound(id)) {
            try RowWritePlanner(schema: schema, caller: $0).update(id, body)
        }
        return .json(.ok, answer.body)
    }

    @Sendable func delete(request: Request, context: AppRequestContext) async throws -> Response {
        let id = try context.uuidParameter("id")
        let rows = RowWritePlanner.rowsToLocate(in: schema, changing: id, body: [:])
        _ = try await database.write(as: context.requirePrincipal(), locating: rows, notFound: notFound(id)) {
            try RowWritePlanner(schema: schema, caller: $0).delete(id)
        }
        return .noContent
    }

    private func notFound(_ id: UUID) -> APIError { .rowNotVisible(schema.table, id) }
}
