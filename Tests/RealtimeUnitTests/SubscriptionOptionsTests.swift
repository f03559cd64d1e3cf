import Foundation
import HTTPTypes
import NIOCore
import Synchronization
import Testing

@testable import Realtime

@Suite struct SubscriptionOptionsTests {
    @Test func parsesTablesEventsAndFilters() throws {
        let options = try SubscriptionOptions(parameters: [
            ("table", "task,status_history"), ("event", "INSERT"), ("event", "update"), ("filter", "status=in.(taken,done)"),
            ("channel", "ignored"),
        ])
        #expect(options.tables == ["task", "status_history"])
        #expect(options.operations == [.insert, .update])
        #expect(options.filters == [ListQuery.Filter(column: "status", negated: false, op: .in, values: ["taken", "done"])])
        #expect(try SubscriptionOptions(parameters: [("event", "*")]).operations == nil)
        #expect(SubscriptionOptions().tables == nil)
    }

    @Test(arguments: [
        ("table", "tasks", "invalid_parameter"),
        ("table", "app_user", "invalid_parameter"),
        ("table", ",", "invalid_parameter"),
        ("event", "TRUNCATE", "invalid_parameter"),
        ("filter", "status", "invalid_filter"),
        ("filter", "=eq.done", "invalid_filter"),
        ("filter", "nope=eq.1", "invalid_filter"),
        ("filter", "status=eq.lost", "invalid_filter"),
        ("filter", "status=like.done", "invalid_filter"),
        ("filter", "plan_id=eq.not-a-uuid", "invalid_filter"),
    ])
    func refusesBadOptions(name: String, value: String, code: String) {
        #expect {
            try SubscriptionOptions(parameters: [(name, value)])
        } throws: { error in
            (error as? APIError)?.code == code && (error as? APIError)?.status == .badRequest
        }
    }

    @Test func aFilterColumnMustBeInATableInScope() throws {
        #expect(throws: APIError.self) { try SubscriptionOptions(parameters: [("table", "client_card"), ("filter", "status=eq.done")]) }
        _ = try SubscriptionOptions(parameters: [("table", "client_card,task"), ("filter", "status=eq.done")])
        _ = try SubscriptionOptions(parameters: [("filter", "role=eq.admin")])
    }

    @Test func allowsAtMostTwentyFilters() throws {
        let filters = (0..<SubscriptionOptions.maxFilters).map { _ in ("filter", "status=neq.done") }
        _ = try SubscriptionOptions(parameters: filters)
        #expect(throws: APIError.self) { try SubscriptionOptions(parameters: filters + [("filter", "status=neq.done")]) }
    }

    @Test func tableAndEventOptionsSelectEvents() throws {
        let options = try SubscriptionOptions(parameters: [("table", "task"), ("event", "DELETE")])
        let task = Fixture.task(1, .delete, branch: Fixture.branchA, plan: Fixture.planA)
        #expect(options.matches(task, operation: .delete))
        #expect(!options.matches(task, operation: .insert))
        #expect(!options.matches(Fixture.event(2, "plan", .delete, branch: Fixture.branchA), operation: .delete))
    }

    private func matches(_ filter: String, _ record: String, table: String = "task", operation: ChangeEvent.Operation = .insert) throws -> Bool {
        let options = try SubscriptionOptions(parameters: [("filter", filter)])
        let event = Fixture.event(
            1,
            table,
            operation,
            branch: Fixture.branchA,
            record: operation == .delete ? "{}" : record,
            oldRecord: operation == .delete ? record : "{}"
        )
        return options.matches(event, operation: operation)
    }

    @Test func comparisonOperators() throws {
        let row = #"{"status":"done","title":"b","byte_size":1000,"client_card_id":null}"#
        #expect(try matches("status=eq.done", row))
        #expect(try !matches("status=eq.taken", row))
        #expect(try matches("status=neq.taken", row))
        #expect(try !matches("status=neq.done", row))
        #expect(try matches("title=lt.c", row))
        #expect(try !matches("title=lt.b", row))
        #expect(try matches("title=lte.b", row))
        #expect(try matches("title=gt.a", row))
        #expect(try !matches("title=gt.b", row))
        #expect(try matches("title=gte.b", row))
        #expect(try !matches("title=gte.c", row))
        #expect(try matches("status=in.(taken,done)", row))
        #expect(try !matches("status=in.(taken,posted)", row))
        #expect(try matches("status=not.in.(taken,posted)", row))
        #expect(try !matches("status=not.eq.done", row))
    }

    @Test func numbersCompareAsNumbers() throws {
        let row = #"{"byte_size":1000}"#
        #expect(try matches("byte_size=gt.200", row, table: "attachment"))
        #expect(try !matches("byte_size=lt.200", row, table: "attachment"))
        #expect(try matches("byte_size=eq.1000", row, table: "attachment"))
        #expect(try matches("byte_size=in.(5,1000)", row, table: "attachment"))
    }

    @Test func nullMatchesOnlyIsNull() throws {
        let row = #"{"client_card_id":null}"#
        #expect(try matches("client_card_id=is.null", row))
        #expect(try !matches("client_card_id=not.is.null", row))
        #expect(try !matches("client_card_id=eq.\(UUID().uuidString)", row))
        #expect(try !matches("client_card_id=not.eq.\(UUID().uuidString)", row))
        #expect(try matches("client_card_id=is.null", "{}"))
        let set = #"{"client_card_id":"\#(Fixture.taskA.lowercased)"}"#
        #expect(try matches("client_card_id=not.is.null", set))
        #expect(try matches("client_card_id=eq.\(Fixture.taskA.uuidString)", set))
    }

    @Test func timestampsCompareAsInstants() throws {
        let row = #"{"starts_at":"2024-05-01T10:00:00.5+00:00"}"#
        #expect(try matches("starts_at=eq.2024-05-01T12:00:00.500+02:00", row))
        #expect(try matches("starts_at=gt.2024-05-01T11:00:00+02:00", row))
        #expect(try !matches("starts_at=gt.2024-05-01 10:00:00.500001Z", row))
        #expect(try matches("starts_at=lt.2024-05-01 10:00:00.500001Z", row))
        #expect(try matches("starts_at=gte.2024-05-01T06:00-04", row))
        #expect(try !matches("starts_at=lte.2024-05-01T06:00-04", row))
    }

    @Test func aTableWithoutTheColumnDoesNotMatch() throws {
        #expect(try !matches("status=not.is.null", #"{"status":"done"}"#, table: "client_card"))
        #expect(try !matches("status=is.null", "{}", table: "client_card"))
    }

    @Test func aDeleteIsFilteredOnTheOldRow() throws {
        #expect(try matches("status=eq.done", #"{"status":"done"}"#, operation: .delete))
        let options = try SubscriptionOptions(parameters: [("filter", "status=eq.done")])
        let event = Fixture.event(1, "task", .delete, branch: Fixture.branchA, record: #"{"status":"taken"}"#, oldRecord: #"{"status":"done"}"#)
        #expect(options.matches(event, operation: .delete))
        // A move-out DELETE is filtered on the row as it was before the move, as the channel it leaves knew it.
        let moveOut = Fixture.event(2, "task", .update, branch: Fixture.branchA, record: #"{"status":"done"}"#, oldRecord: #"{"status":"taken"}"#)
        #expect(!options.matches(moveOut, operation: .delete))
        let doneBefore = Fixture.event(3, "task", .update, branch: Fixture.branchA, record: #"{"status":"taken"}"#, oldRecord: #"{"status":"done"}"#)
        #expect(options.matches(doneBefore, operation: .delete))
    }

    @Test func readsTimestampShapes() {
        let reference = Instant(iso8601: "2024-05-01T10:00:00Z")
        #expect(reference != nil)
        #expect(Instant(iso8601: "2024-05-01 12:00:00+02") == reference)
        #expect(Instant(iso8601: "2024-05-01T05:30:00-0430") == reference)
        #expect(Instant(iso8601: "2024-05-01T10:00z") == reference)
        #expect(Instant(iso8601: "1970-01-01T00:00:00.000000001Z") == Instant(seconds: 0, nanoseconds: 1))
        #expect(Instant(iso8601: "1969-12-31T23:59:59Z") == Instant(seconds: -1, nanoseconds: 0))
        #expect(Instant(iso8601: "2000-03-01T00:00:00Z")?.seconds == 951_868_800)
        for bad in ["2024-05-01", "2024-05-01T10:00:00", "2024-13-01T10:00Z", "2024-05-01T10:00:00.Z", "2024-05-01T10:00:00.1234567890Z", "x"] {
            #expect(Instant(iso8601: bad) == nil, "\(bad)")
        }
    }
}
