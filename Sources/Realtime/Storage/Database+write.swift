import Foundation
import Logging
import PostgresNIO

/// What a planned write came to.
struct WriteAnswer: Sendable {
    /// The row's JSON (a create, an update), the deleted id, or a replayed answer's body.
    var body: String
    /// The status stored with an `Idempotency-Key` and replayed; nil for a write made now.
    var replayedStatus: Int?
}

extension Database {
    /// A REST write of a row in two round trips on one connection.
    ///
    /// The first reads, as the connecting role, the caller's memberships and the branch of each row in `rows`; `plan`
    /// decides the Swift policy with them (its clear errors end the request here, with nothing written) and builds the
    /// statement. The second is `CALL realtime.commit_write` (migration 0008), which runs it in one transaction as the
    /// caller, under row-level security, with the `Idempotency-Key`'s claim and record and the stale check around it,
    /// and commits before it answers: an answer is a committed write, and a refusal at the commit (a deferred
    /// constraint) is the call's own error.
    ///
    /// A serialization failure or deadlock is retried (up to three attempts in all). `notFound` is the answer when the
    /// row is gone by the second round trip.
    func write(
        as principal: Principal,
        locating rows: [RowLocation],
        idempotency: Idempotency? = nil,
        notFound: APIError,
        _ plan: (CallerView) throws -> PlannedWrite
    ) async throws -> WriteAnswer {
        var attempt = 1
        while true {
            do {
                return try await client.withConnection { connection in
                    let caller = try await Self.readCaller(principal, locating: rows, on: connection, logger: logger)
                    let write = try plan(caller)
                    return try await Self.apply(write, as: principal, idempotency: idempotency, notFound: notFound, on: connection, logger: logger)
                }
            } catch let error as PSQLError where attempt < 3 && ["40001", "40P01"].contains(error.sqlState) {
                attempt += 1
                logger.debug("retrying a write after \(error.sqlState ?? "")", metadata: ["attempt": "\(attempt)"])
            }
        }
    }

    /// The caller's memberships and where the named rows lie, in one call of `realtime.read_caller` (migration 0009)
    /// outside any transaction, as the connecting role: the same prepared statement for every write, so PostgreSQL
    /// neither parses nor plans it again.
    private static func readCaller(
        _ principal: Principal,
        locating rows: [RowLocation],
        on connection: PostgresConnection,
        logger: Logger
    ) async throws -> CallerView {
        let read = ReadCaller(userID: principal.userIDSetting, tables: rows.map(\.table), ids: rows.map(\.id))
        guard let (membershipsJSON, branchesJSON) = try await connection.rowsIfOpen(read, logger: logger).first else {
            throw APIError.notReady("The database did not answer who is asking.")
        }
        let memberships = try memberships(fromJSON: membershipsJSON, of: principal)
        let found = try JSONDecoder().decode([UUID?].self, from: Data(branchesJSON.utf8))
        guard found.count == rows.count else { throw APIError.notReady("The database did not locate every row named.") }
        var branches: [RowLocation: UUID?] = [:]
        for (location, branch) in zip(rows, found) { branches.updateValue(branch, forKey: location) }
        return CallerView(principal: principal, memberships: memberships, located: branches)
    }

    /// Runs a planned write through `realtime.commit_write`, and turns its outcomes into the API's answers.
    private static func apply(
        _ write: PlannedWrite,
        as principal: Principal,
        idempotency: Idempotency?,
        notFound: APIError,
        on connection: PostgresConnection,
        logger: Logger
    ) async throws -> WriteAnswer {
        let call = CommitWrite(
            role: principal.databaseRole, userID: principal.userIDSetting, principal: principal.key, idempotencyKey: idempotency?.key,
            requestHash: idempotency?.requestHash, staleCheck: write.staleCheck, statement: write.statement,
            values: JSONText.encode(write.values))
        do {
            guard let (replayed, stored, answer) = try await connection.rowsIfOpen(call, logger: logger).first else {
                throw APIError.notReady("The database did not answer the write.")
            }
            return WriteAnswer(body: answer, replayedStatus: replayed ? stored : nil)
        } catch let error as PSQLError {
            switch error.sqlState {
            case "RT404": throw notFound
            case "RT409": throw APIError.staleUpdate(current: error.serverInfo?[.detail] ?? "{}")
            case "RT422": throw APIError.idempotencyKeyReused
            default: throw error
            }
        }
    }
}

/// The call of `realtime.read_caller`, prepared once per connection.
private struct ReadCaller: PostgresPreparedStatement {
    static let name = "realtime_read_caller"
    static let sql = "SELECT memberships, branches FROM realtime.read_caller($1, $2, $3)"
    static let bindingDataTypes: [PostgresDataType] = [.text, .textArray, .uuidArray]
    typealias Row = (String, String)

    var userID: String
    var tables: [String]
    var ids: [UUID]

    func makeBindings() throws -> PostgresBindings {
        var bindings = PostgresBindings()
        bindings.append(userID)
        bindings.append(tables)
        bindings.append(ids)
        return bindings
    }

    func decodeRow(_ row: PostgresRow) throws -> Row { try row.decode(Row.self) }
}

/// The call of `realtime.commit_write`, prepared once per connection: the same text for every write. (A procedure's
/// CALL, not a function's SELECT: only a procedure may commit before it answers; see migration 0008.)
private struct CommitWrite: PostgresPreparedStatement {
    static let name = "realtime_commit_write"
    static let sql = "CALL realtime.commit_write($1, $2, $3, $4, $5, 201, $6, $7, $8::json)"
    static let bindingDataTypes: [PostgresDataType] = [.text, .text, .text, .text, .text, .text, .text, .text]
    typealias Row = (Bool, Int?, String)

    var role: String
    var userID: String
    var principal: String
    var idempotencyKey: String?
    var requestHash: String?
    var staleCheck: String?
    var statement: String
    /// The statement's values as a JSON array (PostgresNIO binds no arrays with NULL elements).
    var values: String

    func makeBindings() throws -> PostgresBindings {
        var bindings = PostgresBindings()
        for value in [role, userID, principal, idempotencyKey, requestHash, staleCheck, statement, values] {
            if let value { bindings.append(value) } else { bindings.appendNull() }
        }
        return bindings
    }

    func decodeRow(_ row: PostgresRow) throws -> Row { try row.decode(Row.self) }
}
