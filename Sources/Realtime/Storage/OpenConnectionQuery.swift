import Logging
import NIOCore
import PostgresNIO

/// A statement was not sent because its database connection had closed (e.g. its backend was terminated).
public struct DatabaseConnectionClosed: Error, CustomStringConvertible, Sendable {
    public var description: String { "the database connection closed" }
}

extension PostgresConnection {
    /// Runs a statement like `query(_:logger:)`, but fails at once with ``DatabaseConnectionClosed``, rather than waiting
    /// forever, when the connection has closed.
    ///
    /// PostgresNIO loses a statement written after the connection's channel closed and took its handlers down: nothing
    /// ever answers it, so its caller would wait forever, a pooled connection would stay leased, and the pool's shutdown
    /// would wait for that lease too. So the statement is written from the connection's own event loop, right after
    /// checking that the channel is open. On the event loop the check and the write cannot interleave with the channel
    /// closing, and PostgresNIO fails a statement written to a channel that is closing but still has its handlers.
    @discardableResult
    @concurrent
    func queryIfOpen(_ query: PostgresQuery, logger: Logger) async throws -> PostgresRowSequence {
        try await withTaskExecutorPreference(EventLoopTaskExecutor(eventLoop)) {
            eventLoop.assertInEventLoop()
            guard !isClosed else { throw DatabaseConnectionClosed() }
            return try await self.query(query, logger: logger)
        }
    }

    /// Runs a prepared statement (prepared on this connection the first time) like `queryIfOpen(_:logger:)`: failing at
    /// once when the connection has closed. Returns all its rows.
    @concurrent
    func rowsIfOpen<Statement: PostgresPreparedStatement>(_ statement: Statement, logger: Logger) async throws -> [Statement.Row] {
        try await withTaskExecutorPreference(EventLoopTaskExecutor(eventLoop)) {
            eventLoop.assertInEventLoop()
            guard !isClosed else { throw DatabaseConnectionClosed() }
            var rows: [Statement.Row] = []
            for try await row in try await self.execute(statement, logger: logger) { rows.append(row) }
            return rows
        }
    }

    /// All rows of a statement run with `queryIfOpen(_:logger:)`.
    @discardableResult
    func rowsIfOpen(_ query: PostgresQuery, logger: Logger) async throws -> [PostgresRow] {
        try await queryIfOpen(query, logger: logger).collect()
    }
}

extension PostgresClient {
    /// All rows of one statement, run on a pooled connection with `PostgresConnection.queryIfOpen(_:logger:)`, so that a
    /// connection lost meanwhile fails the statement and goes back to the pool instead of staying leased forever.
    @discardableResult
    func rowsIfOpen(_ query: PostgresQuery, logger: Logger) async throws -> [PostgresRow] {
        try await withConnection { connection in try await connection.rowsIfOpen(query, logger: logger) }
    }
}

/// Runs a task's jobs on one NIO event loop, so that they are ordered with that loop's channel events.
final class EventLoopTaskExecutor: TaskExecutor {
    let eventLoop: any EventLoop

    init(_ eventLoop: any EventLoop) {
        self.eventLoop = eventLoop
    }

    func enqueue(_ job: consuming ExecutorJob) {
        let job = UnownedJob(job)
        eventLoop.execute { job.runSynchronously(on: self.asUnownedTaskExecutor()) }
    }
}
