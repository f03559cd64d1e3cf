import AsyncHTTPClient
import Foundation
import HTTPTypes
import NIOCore
import NIOHTTP1
import PostgresNIO
import Testing

@testable import Realtime

/// More than a hundred hostile requests against a live server: each must get a 4xx with a JSON error (a stable code
/// and a message), never a 5xx, a hang or a crash, and none may change a single row.
@Suite(.timeLimit(.minutes(3)))
struct HostileInputTests {
    /// One hostile request and what it must get.
    struct Case: Sendable, CustomStringConvertible {
        var name: String
        var method: HTTPRequest.Method = .get
        var path: String
        var principal: Principal? = nil
        var headers: HTTPFields = [:]
        var body: String? = nil
        /// The status it must get; nil: any 4xx.
        var status: HTTPResponse.Status? = nil
        /// The error code it must get; nil: any.
        var code: String? = nil

        var description: String { "\(name): \(method) \(path.prefix(120))" }
    }

    static func cases(team: Team, plan: UUID, task: UUID, tokens: TokenAuthority) async throws -> [Case] {
        let editor = Principal.user(team.editor)
        var cases: [Case] = []
        func post(_ name: String, _ body: String, status: HTTPResponse.Status? = nil, code: String? = nil, path: String = "/rest/v1/tasks") {
            cases.append(Case(name: name, method: .post, path: path, principal: editor, body: body, status: status, code: code))
        }
        let valid = #"{"plan_id":"\#(plan)","title":"T","starts_at":"2026-11-30T09:00:00Z","ends_at":"2026-11-30T10:00:00Z"}"#
        func withField(_ field: String, _ json: String) -> String {
            valid.replacingOccurrences(
                of: #""\#(field)":"#
                    + (field == "plan_id"
                        ? #""\#(plan)""#
                        : field == "title" ? #""T""# : field == "starts_at" ? #""2026-11-30T09:00:00Z""# : #""2026-11-30T10:00:00Z""#),
                with: #""\#(field)":\#(json)"#)
        }

        // Malformed and truncated JSON.
        for (index, body) in [
            "{", "{\"title\":", "{'title':'T'}", "nul", "[", "{\"a\":1,}", "{\"a\" 1}", "{\"title\":\"\\u12\"}", "", "   ", "{}{}",
            "{\"a\":NaN}", "{\"a\":Infinity}", "1", "\"text\"", "true", "null", "[{}]", "{\"a\":01}", "{\"title\":\"T\"\u{0}}",
        ].enumerated() {
            post("malformed \(index)", body)
        }
        for cut in stride(from: 5, to: valid.utf8.count - 1, by: 12) { post("truncated at \(cut)", String(valid.prefix(cut)), status: .badRequest) }

        // Wrong types, invalid values, unknown fields.
        for (field, json) in [
            ("title", "5"), ("title", "true"), ("title", "[]"), ("title", "{}"), ("title", "null"), ("title", "\"\""),
            ("starts_at", "5"), ("starts_at", "true"), ("starts_at", "\"x\""), ("starts_at", "\"yesterday\""),
            ("starts_at", "\"2026-13-01T00:00:00Z\""), ("starts_at", "\"2026-02-30T00:00:00Z\""), ("starts_at", "\"2026-11-30T25:00:00Z\""),
            ("starts_at", "\"0000-00-00\""), ("starts_at", "\"2026-11-30T09:00:00+99:00\""), ("starts_at", "\"99999999-01-01T00:00:00Z\""),
            ("ends_at", "\"1970-01-01T00:00:00Z\""), ("plan_id", "5"), ("plan_id", "\"not-a-uuid\""), ("plan_id", "\"\""), ("plan_id", "null"),
            ("plan_id", "\"00000000-0000-0000-0000-00000000000g\""),
        ] {
            post("\(field) = \(json)", withField(field, json), status: .unprocessableContent)
        }
        for status in ["\"lost\"", "\"TAKEN\"", "5", "\"taken \"", "\"\""] {
            post("status \(status)", String(valid.dropLast()) + #","status":\#(status)}"#, status: .unprocessableContent)
        }
        for field in ["owner", "__proto__", "", " title", "id2", "created_at"] {
            post("unknown field '\(field)'", String(valid.dropLast()) + #","\#(field)":"x"}"#, status: .unprocessableContent, code: "unknown_field")
        }
        post(
            "deep nesting", String(valid.dropLast()) + #","notes":"# + String(repeating: "[", count: 5000) + String(repeating: "]", count: 5000) + "}"
        )
        post("deep object nesting", String(repeating: #"{"a":"#, count: 3000) + "1" + String(repeating: "}", count: 3000))
        post("huge body", #"{"title":""# + String(repeating: "x", count: 300 * 1024) + #""}"#, status: .contentTooLarge, code: "payload_too_large")
        post("huge plan body", #"{"title":""# + String(repeating: "y", count: 300 * 1024) + #""}"#, status: .contentTooLarge, path: "/rest/v1/plans")
        cases.append(
            Case(
                name: "not JSON", method: .post, path: "/rest/v1/tasks", principal: editor, headers: [.contentType: "text/plain"], body: valid,
                status: .unsupportedMediaType))
        cases.append(
            Case(name: "empty patch", method: .patch, path: "/rest/v1/tasks/\(task)", principal: editor, body: "{}", status: .unprocessableContent))
        cases.append(
            Case(
                name: "patch id", method: .patch, path: "/rest/v1/tasks/\(task)", principal: editor, body: #"{"id":"\#(UUID())"}"#,
                status: .unprocessableContent))

        // Filters: injections in names and operators, unknown columns, too many values.
        for query in [
            "title%3BDROP%20TABLE%20task=eq.1", "title)=eq.1", "%22title%22=eq.1", "title=ilike.x", "title=eq", "title=.x", "id=in.(",
            "id=in.((x))", "id=in.(x)", "colour=eq.red", "status=like.%25", "starts_at=gt.1%3D1", "plan_id=eq.1%20OR%201%3D1",
            "order=title%3Bdrop", "order=title.asc.nullsfirst%3Bx", "limit=1e3", "limit=-5", "offset=abc", "limit=99999999999999999999",
            "id=in.(" + (0...1000).map { _ in UUID().uuidString }.joined(separator: ",") + ")",
            (0..<21).map { "title=neq.t\($0)" }.joined(separator: "&"), "title=not.not.eq.x", "title=is.maybe",
        ] {
            cases.append(Case(name: "filter \(query.prefix(40))", path: "/rest/v1/tasks?\(query)", principal: editor, status: .badRequest))
        }

        // Bad ids in paths.
        for id in ["1", "%27%3B%20DROP%20TABLE%20task%3B--", "00000000-0000-0000-0000-00000000000g", "%00", "null"] {
            cases.append(Case(name: "get id \(id)", path: "/rest/v1/tasks/\(id)", principal: editor, status: .badRequest))
            cases.append(Case(name: "delete id \(id)", method: .delete, path: "/rest/v1/tasks/\(id)", principal: editor, status: .badRequest))
            cases.append(
                Case(name: "patch id \(id)", method: .patch, path: "/rest/v1/tasks/\(id)", principal: editor, body: "{}", status: .badRequest))
        }

        // Tokens: garbage, expired, unsigned, another key's, wrong scheme; a service token from a browser.
        let user = team.editor.uuidString.lowercased()
        let expired = try await tokens.issue(subject: user, role: .authenticated, lifetime: -60)
        let foreign = try await TokenAuthority(secret: "another-secret-another-secret-another-secret")
        let forged = try await foreign.issue(subject: user, role: .serviceRole, lifetime: 60)
        let unsigned =
            Data(#"{"alg":"none","typ":"JWT"}"#.utf8).base64EncodedString().replacingOccurrences(of: "=", with: "") + "."
            + Data(#"{"sub":"service","role":"service_role","exp":9999999999}"#.utf8).base64EncodedString().replacingOccurrences(of: "=", with: "")
            + "."
        for (name, value) in [
            ("garbage token", "Bearer not.a.token"), ("expired token", "Bearer \(expired)"), ("alg none", "Bearer \(unsigned)"),
            ("another key", "Bearer \(forged)"), ("basic scheme", "Basic dXNlcjpwYXNz"), ("bearer only", "Bearer"),
            ("two tokens", "Bearer \(expired) \(forged)"),
        ] {
            for path in ["/rest/v1/tasks", "/realtime/v1/plan/\(plan)", "/realtime/v1/presence/plan/\(plan)"] {
                cases.append(Case(name: "\(name) on \(path.prefix(24))", path: path, headers: [.authorization: value], status: .unauthorized))
            }
        }
        for path in ["/rest/v1/tasks", "/realtime/v1/plan/\(plan)", "/rest/v1/branches"] {
            cases.append(
                Case(
                    name: "service token from a browser on \(path.prefix(24))", path: path, principal: .service(actingUser: nil),
                    headers: [.origin: "https://evil.example"], status: .forbidden, code: "service_role_from_browser"))
        }

        // Cursors that are not cursors.
        for cursor in ["garbage", "-1", "1~", "~", "1e5", "18446744073709551616", "1~x:y:z", "%00"] {
            cases.append(
                Case(
                    name: "Last-Event-ID \(cursor)", path: "/realtime/v1/plan/\(plan)", principal: .user(team.viewer),
                    headers: [.lastEventID: cursor.removingPercentEncoding ?? cursor], status: .badRequest))
            cases.append(
                Case(
                    name: "after=\(cursor)", path: "/realtime/v1/changes?channel=plan:\(plan)&after=\(cursor)", principal: .user(team.viewer),
                    status: .badRequest))
        }
        return cases
    }

    @Test func everyHostileRequestGetsA4xxJSONErrorAndChangesNothing() async throws {
        let server = try await TestServer.make(changeFeed: true)
        try await server.testLive { client in
            let team = try await Team.make(client)
            let plan = try await team.makePlan(client)
            let task = try await team.makeTask(client, plan: plan)
            let cases = try await Self.cases(team: team, plan: plan, task: task, tokens: server.tokens)
            #expect(cases.count >= 100, "only \(cases.count) cases")
            let before = try await Self.fingerprint(server)
            for hostile in cases {
                let reply = try await client.send(hostile.method, hostile.path, as: hostile.principal, json: hostile.body, headers: hostile.headers)
                #expect((400..<500).contains(reply.status.code), "\(hostile) → \(reply.status) \(reply.text.prefix(300))")
                if let status = hostile.status { #expect(reply.status == status, "\(hostile) → \(reply.status) \(reply.text.prefix(300))") }
                let error = reply.object["error"] as? [String: Any]
                #expect(
                    (error?["code"] as? String)?.isEmpty == false && (error?["message"] as? String)?.isEmpty == false,
                    "\(hostile) → \(reply.text.prefix(300))")
                if let code = hostile.code { #expect(reply.errorCode == code, "\(hostile) → \(reply.text.prefix(300))") }
                #expect(reply.headers[.contentType]?.hasPrefix("application/json") == true, "\(hostile)")
            }
            #expect(try await Self.fingerprint(server) == before, "a hostile request changed the data")
            #expect(try await client.send(.get, "/rest/v1/tasks/\(task)", as: .user(team.editor)).status == .ok, "the server still serves")
        }
    }

    @Test func overLongHeadersAndQueriesAreRefusedAndTheServerGoesOn() async throws {
        let server = try await TestServer.make()
        try await server.testLive { client in
            let team = try await Team.make(client)
            let token = try await client.token(for: .user(team.editor))
            for (name, header, query) in [
                ("a 100 KiB header", String(repeating: "h", count: 100 * 1024), ""),
                ("a 100 KiB query", "", String(repeating: "q", count: 100 * 1024)),
                ("a 1 MiB query", "", "title=eq." + String(repeating: "q", count: 1024 * 1024)),
            ] {
                var request = HTTPClientRequest(url: client.baseURL + "/rest/v1/tasks" + (query.isEmpty ? "" : "?" + query))
                request.headers.add(name: "Authorization", value: "Bearer \(token)")
                if !header.isEmpty { request.headers.add(name: "X-Hostile", value: header) }
                let status: UInt?
                do {
                    let response = try await HTTPClient.shared.execute(request, timeout: .seconds(10))
                    status = response.status.code
                } catch {
                    status = nil  // the server closed the connection without an answer: acceptable, as long as it goes on
                }
                if let status { #expect((400..<500).contains(status), "\(name) → \(status)") }
                #expect(try await client.send(.get, "/healthz", as: nil).status == .ok, "the server must go on after \(name)")
            }
        }
    }

    /// A digest of every row of every table, read around the API as the owner.
    static func fingerprint(_ server: TestServer) async throws -> String {
        try await server.withOwnerConnection { connection in
            var digest = ""
            for table in ["branch", "app_user", "branch_member", "plan", "task", "status_history", "client_card", "attachment"] {
                let rows = try await connection.query(
                    PostgresQuery(unsafeSQL: "SELECT coalesce(md5(string_agg(t::text, ',' ORDER BY t::text)), '') FROM \(table) t"),
                    logger: server.logger)
                for try await value in rows.decode(String.self) { digest += "\(table):\(value);" }
            }
            return digest
        }
    }
}
