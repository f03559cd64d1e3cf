import Foundation
import HTTPTypes
import Logging
import Testing

@testable import Realtime

@Suite struct ListQueryTests {
    @Test func parsesFiltersOrderAndPaging() throws {
        let planID = UUID()
        let query = try ListQuery(
            parameters: [
                ("plan_id", "eq.\(planID)"), ("status", "in.(taken,\"done\")"), ("client_card_id", "not.is.null"),
                ("order", "starts_at.desc,title"), ("limit", "50"), ("offset", "10"),
            ],
            schema: .task
        )
        #expect(
            query.filters == [
                .init(column: "plan_id", negated: false, op: .eq, values: [planID.uuidString]),
                .init(column: "status", negated: false, op: .in, values: ["taken", "done"]),
                .init(column: "client_card_id", negated: true, op: .is, values: ["null"]),
            ]
        )
        #expect(query.order == [.init(column: "starts_at", descending: true), .init(column: "title", descending: false)])
        #expect(query.limit == 50)
        #expect(query.offset == 10)
    }

    @Test func defaults() throws {
        let query = try ListQuery(parameters: [], schema: .plan)
        #expect(query.limit == 100)
        #expect(query.offset == 0)
        #expect(query.filters.isEmpty)
    }

    @Test(arguments: [
        ("nope", "eq.1", "invalid_filter"),
        ("title", "like.x", "invalid_filter"),
        ("title", "eq", "invalid_filter"),
        ("plan_id", "eq.123", "invalid_filter"),
        ("status", "eq.lost", "invalid_filter"),
        ("starts_at", "gt.tomorrow", "invalid_filter"),
        ("status", "in.(taken", "invalid_filter"),
        ("title", "is.true", "invalid_filter"),
        ("limit", "1001", "invalid_parameter"),
        ("limit", "x", "invalid_parameter"),
        ("offset", "-5", "invalid_parameter"),
        ("order", "title.up", "invalid_parameter"),
        ("order", "a,b,c,d", "invalid_parameter"),
    ])
    func rejects(name: String, value: String, code: String) {
        #expect(throws: APIError.self) { try ListQuery(parameters: [(name, value)], schema: .task) }
        do {
            _ = try ListQuery(parameters: [(name, value)], schema: .task)
        } catch {
            #expect(error.code == code)
            #expect(error.status == .badRequest)
        }
    }

    @Test func splitsQuotedLists() throws {
        #expect(try ListQuery.splitList(#"a, b ,"c,d","e\"f""#) == ["a", "b", "c,d", #"e"f"#])
        #expect(try ListQuery.splitList("") == [])
    }
}
