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
        let rows = RowStore.rowsToLocate(in: schema, changing: nil, body: body)
        return try await database.withIdempotentCreate(as: context.requirePrincipal(), idempotency, locating: rows) { transaction in
            try await RowStore(schema: schema, transaction: transaction, memberships: transaction.memberships()).create(body)
        }
    }

    @Sendable func update(request: Request, context: AppRequestContext) async throws -> Response {
        let id = try context.uuidParameter("id")
        var request = request
        let (body, _) = try await request.jsonObject(limit: maxBodyBytes)
        let rows = RowStore.rowsToLocate(in: schema, changing: id, body: body)
        let row = try await database.withRequestTransaction(as: context.requirePrincipal(), locating: rows) { transaction in
            try await RowStore(schema: schema, transaction: transaction, memberships: transaction.memberships()).update(id, body)
        }
        return .json(.ok, row)
    }

    @Sendable func delete(request: Request, context: AppRequestContext) async throws -> Response {
        let id = try context.uuidParameter("id")
        let rows = RowStore.rowsToLocate(in: schema, changing: id, body: [:])
        try await database.withRequestTransaction(as: context.requirePrincipal(), locating: rows) { transaction in
            try await RowStore(schema: schema, transaction: transaction, memberships: transaction.memberships()).delete(id)
        }
        return .noContent
    }
}

extension Database {
    /// Runs a create in a request transaction, honouring an `Idempotency-Key`: 201 with the new row, or the replay of
    /// the first answer given to that key.
    func withIdempotentCreate(
        as principal: Principal,
        _ idempotency: Idempotency?,
        locating rows: [RowLocation] = [],
        _ create: @escaping (RequestTransaction) async throws -> String
    ) async throws -> Response {
        let (status, body, replayed) = try await withRequestTransaction(as: principal, locating: rows) { transaction in
            if let idempotency, let stored = try await idempotency.claim(in: transaction) {
                return (stored.status, stored.body, true)
            }
            let row = try await create(transaction)
            try await idempotency?.record(status: 201, body: row, in: transaction)
            return (201, row, false)
        }
        var headers = HTTPFields()
        if replayed { headers[Idempotency.replayedHeader] = "true" }
        return .json(HTTPResponse.Status(code: status), body, headers: headers)
    }
}
