import CLibPQ
import Foundation
import Logging
import Synchronization

#if canImport(Glibc)
    import Glibc
#elseif canImport(Musl)
    import Musl
#elseif canImport(Darwin)
    import Darwin
#endif

/// Small wrappers around libpq calls; every function blocks and must run on a thread of its own.
enum LibPQ {
    static func connect(_ conninfo: String) throws(ReplicationError) -> OpaquePointer {
        guard let connection = PQconnectdb(conninfo) else { throw ReplicationError("libpq could not allocate a connection") }
        guard PQstatus(connection) == CONNECTION_OK else {
            let error = connectionError(connection, "could not connect")
            PQfinish(connection)
            throw error
        }
        return connection
    }

    /// Runs a command that must end with `status`.
    static func execute(_ command: String, on connection: OpaquePointer, expecting status: ExecStatusType) throws(ReplicationError) {
        let result = PQexec(connection, command)
        defer { PQclear(result) }
        try check(result, on: connection, expecting: status, command: command)
    }

    /// Runs a command that returns rows; returns them as text (nil: NULL).
    static func query(_ command: String, on connection: OpaquePointer) throws(ReplicationError) -> [[String?]] {
        let result = PQexec(connection, command)
        defer { PQclear(result) }
        try check(result, on: connection, expecting: PGRES_TUPLES_OK, command: command)
        return (0..<PQntuples(result)).map { row in
            (0..<PQnfields(result)).map { column in
                PQgetisnull(result, row, column) == 1 ? nil : String(cString: PQgetvalue(result, row, column))
            }
        }
    }

    private static func check(
        _ result: OpaquePointer?,
        on connection: OpaquePointer,
        expecting status: ExecStatusType,
        command: String
    ) throws(ReplicationError) {
        guard let result else { throw connectionError(connection, "\(command) failed") }
        guard PQresultStatus(result) == status else { throw resultError(result, connection: connection, context: "\(command) failed") }
    }

    static func resultError(_ result: OpaquePointer, connection: OpaquePointer, context: String) -> ReplicationError {
        // PG_DIAG_SQLSTATE is 'C', PG_DIAG_MESSAGE_PRIMARY 'M' (postgres_ext.h).
        let sqlState = PQresultErrorField(result, Int32(UInt8(ascii: "C"))).map { String(cString: $0) }
        var message = PQresultErrorField(result, Int32(UInt8(ascii: "M"))).map { String(cString: $0) } ?? ""
        if message.isEmpty { message = PQresultErrorMessage(result).map { String(cString: $0) } ?? "" }
        if message.isEmpty { message = String(cString: PQresStatus(PQresultStatus(result))) }
        return ReplicationError("\(context): \(trimmed(message))", sqlState: sqlState)
    }

    static func connectionError(_ connection: OpaquePointer, _ context: String) -> ReplicationError {
        let message = PQerrorMessage(connection).map { trimmed(String(cString: $0)) } ?? ""
        return ReplicationError(message.isEmpty ? context : "\(context): \(message)")
    }

    /// The server ended the COPY: its final result says why.
    static func endOfCopyError(_ connection: OpaquePointer) -> ReplicationError {
        var error = ReplicationError("the server ended the replication stream")
        while let result = PQgetResult(connection) {
            if PQresultStatus(result) == PGRES_FATAL_ERROR {
                error = resultError(result, connection: connection, context: "the server ended the replication stream")
            }
            PQclear(result)
        }
        return error
    }

    private static func trimmed(_ text: String) -> String {
        text.trimmingCharacters(in: .whitespacesAndNewlines)
    }
}
