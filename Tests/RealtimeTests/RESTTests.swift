import Foundation
import HTTPTypes
import Testing

@testable import Realtime

/// Every endpoint's happy path, and the errors of bad input, through the router against a real database.
/// One file over 400 lines because it walks the whole REST surface once, endpoint by endpoint.
@Suite struct RESTTests {
    @Test func healthAndReadiness() async throws {
        let server = try await TestServer.make()
        try await server.test { client in
            let health = try await client.send(.get, "/healthz", as: nil)
            #expect(health.status == .ok)
            #expect(health.string("status") == "ok")
            let ready = try await client.send(.get, "/readyz", as: nil)
            #expect(ready.status == .ok)
            #expect(ready.string("status") == "ready")
        }
    }

    @Test func branchesUsersAndMembers() async throws {
        let server = try await TestServer.make()
        try await server.test { client in
            let team = try await Team.make(client)
            let mine = try await client.send(.get, "/rest/v1/branches", as: .user(team.viewer))
            #expect(mine.status == .ok)
            #expect(mine.array.map { $0["id"] as? String } == [team.branch.uuidString.lowercased()])
            let none = try await client.send(.get, "/rest/v1/branches", as: .user(team.outsider))
            #expect(none.array.isEmpty)

            let members = try await client.send(.get, "/rest/v1/branches/\(team.branch)/members", as: .user(team.viewer))
            #expect(members.status == .ok)
            #expect(Set(members.array.compactMap { $0["role"] as? String }) == ["admin", "editor", "viewer"])
            // Each with the display name a fellow member may read (Team names its users after their roles), so that a
            // page can show who is present without presence carrying names.
            #expect(members.array.allSatisfy { $0["display_name"] as? String == $0["role"] as? String }, "\(members.text)")

            // The admin creates a user, adds them, changes their role, and removes them.
            let newcomer = UUID()
            let created = try await client.send(
                .post,
                "/rest/v1/users",
                as: .user(team.admin),
                json: #"{"id":"\#(newcomer)","display_name":"Newcomer"}"#
            )
            #expect(created.status == .created)
            #expect(created.string("created_by") == team.admin.uuidString.lowercased())
            let added = try await client.send(
                .put,
                "/rest/v1/branches/\(team.branch)/members/\(newcomer)",
                as: .user(team.admin),
                json: #"{"role":"viewer"}"#
            )
            #expect(added.status == .created)
            let promoted = try await client.send(
                .put,
                "/rest/v1/branches/\(team.branch)/members/\(newcomer)",
                as: .user(team.admin),
                json: #"{"role":"editor"}"#
            )
            #expect(promoted.status == .ok)
            #expect(promoted.string("role") == "editor")
            let removed = try await client.send(.delete, "/rest/v1/branches/\(team.branch)/members/\(newcomer)", as: .user(team.admin))
            #expect(removed.status == .noContent)
            let again = try await client.send(.delete, "/rest/v1/branches/\(team.branch)/members/\(newcomer)", as: .user(team.admin))
            #expect(again.status == .notFound)

            let unknownUser = try await client.send(
                .put,
                "/rest/v1/branches/\(team.branch)/members/\(UUID())",
                as: .user(team.admin),
                json: #"{"role":"viewer"}"#
            )
            #expect(unknownUser.status == .notFound)
            let badRole = try await client.send(
                .put,
                "/rest/v1/branches/\(team.branch)/members/\(team.viewer)",
                as: .user(team.admin),
                json: #"{"role":"owner"}"#
            )
            #expect(badRole.status == .unprocessableContent)
            #expect(badRole.errorCode == "invalid_value")
        }
    }

    @Test func planTaskLifecycleWithStatusHistory() async throws {
        let server = try await TestServer.make()
        try await server.test { client in
            let team = try await Team.make(client)
            let editor = Principal.user(team.editor)
            let plan = try await team.makePlan(client)
            let task = try await team.makeTask(client, plan: plan)

            let fetched = try await client.send(.get, "/rest/v1/tasks/\(task)", as: .user(team.viewer))
            #expect(fetched.status == .ok)
            #expect(fetched.string("status") == "taken")
            #expect(fetched.string("branch_id") == team.branch.uuidString.lowercased())
            #expect(fetched.string("updated_by") == team.editor.uuidString.lowercased())

            for status in ["done", "posted", "edited"] {
                let changed = try await client.send(.patch, "/rest/v1/tasks/\(task)", as: editor, json: #"{"status":"\#(status)"}"#)
                #expect(changed.status == .ok)
                #expect(changed.string("status") == status)
            }
            let retitled = try await client.send(.patch, "/rest/v1/tasks/\(task)", as: editor, json: #"{"title":"Renamed"}"#)
            #expect(retitled.string("title") == "Renamed")

            let history = try await client.send(
                .get,
                "/rest/v1/status_history?task_id=eq.\(task)&order=changed_at.asc",
                as: .user(team.viewer)
            )
            #expect(history.status == .ok)
            let transitions = history.array.map { "\($0["from_status"] as? String ?? "-")>\($0["to_status"] as? String ?? "?")" }
            #expect(transitions == ["->taken", "taken>done", "done>posted", "posted>edited"])
            let one = try await client.send(
                .get,
                "/rest/v1/status_history/\(history.array[1]["id"] as? String ?? "")",
                as: .user(team.viewer)
            )
            #expect(one.string("to_status") == "done")
            #expect(one.string("changed_by") == team.editor.uuidString.lowercased())

            let listed = try await client.send(.get, "/rest/v1/tasks?plan_id=eq.\(plan)&status=in.(edited,done)", as: .user(team.viewer))
            #expect(listed.array.count == 1)

            let planReply = try await client.send(.patch, "/rest/v1/plans/\(plan)", as: editor, json: #"{"title":"Next week"}"#)
            #expect(planReply.string("title") == "Next week")

            #expect(try await client.send(.delete, "/rest/v1/tasks/\(task)", as: editor).status == .noContent)
            #expect(try await client.send(.get, "/rest/v1/tasks/\(task)", as: editor).status == .notFound)
            #expect(try await client.send(.delete, "/rest/v1/plans/\(plan)", as: editor).status == .noContent)
            #expect(try await client.send(.get, "/rest/v1/plans", as: editor).array.isEmpty)
        }
    }

    @Test func clientCardsAndAttachments() async throws {
        let server = try await TestServer.make()
        try await server.test { client in
            let team = try await Team.make(client)
            let editor = Principal.user(team.editor)
            let plan = try await team.makePlan(client)
            let card = try await client.send(
                .post,
                "/rest/v1/client_cards",
                as: editor,
                json: #"{"branch_id":"\#(team.branch)","name":"Ada","phone":"+998 90 000 00 00","notes":null}"#
            )
            #expect(card.status == .created)
            let cardID = try #require(card.string("id"))
            let task = try await client.send(
                .post,
                "/rest/v1/tasks",
                as: editor,
                json: #"{"plan_id":"\#(plan)","title":"Visit","starts_at":"2026-11-30T09:00:00Z","ends_at":"2026-11-30T10:00:00Z","#
                    + #""client_card_id":"\#(cardID)"}"#
            )
            #expect(task.status == .created)
            #expect(task.string("client_card_id") == cardID)

            let attachment = try await client.send(
                .post,
                "/rest/v1/attachments",
                as: editor,
                json: #"{"client_card_id":"\#(cardID)","file_name":"id.pdf","content_type":"application/pdf","byte_size":1234,"#
                    + #""storage_url":"s3://bucket/id.pdf"}"#
            )
            #expect(attachment.status == .created)
            #expect(attachment.string("branch_id") == team.branch.uuidString.lowercased())
            let attachmentID = try #require(attachment.string("id"))
            let renamed = try await client.send(.patch, "/rest/v1/attachments/\(attachmentID)", as: editor, json: #"{"file_name":"passport.pdf"}"#)
            #expect(renamed.string("file_name") == "passport.pdf")
            let byCard = try await client.send(.get, "/rest/v1/attachments?client_card_id=eq.\(cardID)", as: .user(team.viewer))
            #expect(byCard.array.count == 1)

            let updatedCard = try await client.send(.patch, "/rest/v1/client_cards/\(cardID)", as: editor, json: #"{"notes":"Prefers mornings"}"#)
            #expect(updatedCard.string("notes") == "Prefers mornings")

            // Deleting the card removes its attachments and clears the task's reference.
            #expect(try await client.send(.delete, "/rest/v1/client_cards/\(cardID)", as: editor).status == .noContent)
            #expect(try await client.send(.get, "/rest/v1/attachments/\(attachmentID)", as: editor).status == .notFound)
            let taskAfter = try await client.send(.get, "/rest/v1/tasks/\(task.string("id") ?? "")", as: editor)
            #expect(taskAfter.object["client_card_id"] is NSNull)
        }
    }

    /// A write that fails in the database (here a CHECK) leaves its Idempotency-Key unclaimed: the retry fails the same
    /// way, not as a reused key, and a corrected request under a new key is written once.
    @Test func aFailedWriteLeavesItsIdempotencyKeyFree() async throws {
        let server = try await TestServer.make()
        try await server.test { client in
            let team = try await Team.make(client)
            let plan = try await team.makePlan(client)
            var headers = HTTPFields()
            headers[HTTPField.Name("Idempotency-Key")!] = "backwards-1"
            let body = #"{"plan_id":"\#(plan)","title":"Backwards","starts_at":"2026-11-30T10:00:00Z","ends_at":"2026-11-30T09:00:00Z"}"#
            for _ in 0..<2 {
                let reply = try await client.send(.post, "/rest/v1/tasks", as: .user(team.editor), json: body, headers: headers)
                #expect(reply.status == .unprocessableContent)
                #expect(reply.errorCode == "constraint_violation")
            }
            let tasks = try await client.send(.get, "/rest/v1/tasks?plan_id=eq.\(plan)", as: .user(team.editor))
            #expect(tasks.array.isEmpty)
        }
    }

    @Test func idempotentPostWritesOnce() async throws {
        let server = try await TestServer.make()
        try await server.test { client in
            let team = try await Team.make(client)
            let plan = try await team.makePlan(client)
            var headers = HTTPFields()
            headers[HTTPField.Name("Idempotency-Key")!] = "offline-op-17"
            let body = #"{"plan_id":"\#(plan)","title":"Queued","starts_at":"2026-11-30T09:00:00Z","ends_at":"2026-11-30T10:00:00Z"}"#
            let first = try await client.send(.post, "/rest/v1/tasks", as: .user(team.editor), json: body, headers: headers)
            let second = try await client.send(.post, "/rest/v1/tasks", as: .user(team.editor), json: body, headers: headers)
            #expect(first.status == .created)
            #expect(second.status == .created)
            #expect(second.text == first.text)
            #expect(second.headers[HTTPField.Name("Idempotent-Replayed")!] == "true")
            let tasks = try await client.send(.get, "/rest/v1/tasks?plan_id=eq.\(plan)", as: .user(team.editor))
            #expect(tasks.array.count == 1)

            let different = try await client.send(
                .post,
                "/rest/v1/tasks",
                as: .user(team.editor),
                json: body.replacingOccurrences(of: "Queued", with: "Other"),
                headers: headers
            )
            #expect(different.status == .conflict)
            #expect(different.errorCode == "idempotency_key_reused")

            // The same key from another user is another key.
            let admin = try await client.send(.post, "/rest/v1/tasks", as: .user(team.admin), json: body, headers: headers)
            #expect(admin.status == .created)
            #expect(admin.string("id") != first.string("id"))

            // A client-made id that already exists is a duplicate.
            let id = try #require(first.string("id"))
            let duplicate = try await client.send(
                .post,
                "/rest/v1/tasks",
                as: .user(team.editor),
                json: #"{"id":"\#(id)","plan_id":"\#(plan)","title":"Again","starts_at":"2026-11-30T09:00:00Z","ends_at":"2026-11-30T10:00:00Z"}"#
            )
            #expect(duplicate.status == .conflict)
            #expect(duplicate.errorCode == "duplicate")
        }
    }

    @Test func lastWriteWinsByUpdatedAt() async throws {
        let server = try await TestServer.make()
        try await server.test { client in
            let team = try await Team.make(client)
            let plan = try await team.makePlan(client)
            let task = try await team.makeTask(client, plan: plan)
            let editor = Principal.user(team.editor)

            // An edit made offline, before the stored row's last change, is refused with the current row.
            let stale = try await client.send(
                .patch,
                "/rest/v1/tasks/\(task)",
                as: editor,
                json: #"{"title":"Old edit","updated_at":"2020-01-01T00:00:00Z"}"#
            )
            #expect(stale.status == .conflict)
            #expect(stale.errorCode == "stale_update")
            let current = try #require(stale.object["current"] as? [String: Any])
            #expect(current["title"] as? String == "Shift")

            // An edit newer than the stored row wins and stamps its own time.
            let fresh = try await client.send(
                .patch,
                "/rest/v1/tasks/\(task)",
                as: editor,
                json: #"{"title":"New edit","updated_at":"\#(ISO8601DateFormatter().string(from: Date().addingTimeInterval(2)))"}"#
            )
            #expect(fresh.status == .ok)
            #expect(fresh.string("title") == "New edit")

            // A client clock in the future is clamped to the server's time.
            let future = try await client.send(
                .patch,
                "/rest/v1/tasks/\(task)",
                as: editor,
                json: #"{"title":"From the future","updated_at":"2999-01-01T00:00:00Z"}"#
            )
            #expect(future.status == .ok)
            let stamped = try #require(future.string("updated_at"))
            #expect(!stamped.hasPrefix("2999"))
            let later = try await client.send(.patch, "/rest/v1/tasks/\(task)", as: editor, json: #"{"title":"Later"}"#)
            #expect(later.status == .ok)
        }
    }

    @Test func validationErrors() async throws {
        let server = try await TestServer.make()
        try await server.test { client in
            let team = try await Team.make(client)
            let other = try await Team.make(client, name: "Other")
            let plan = try await team.makePlan(client)
            let otherPlan = try await other.makePlan(client)
            let editor = Principal.user(team.editor)
            func task(_ overrides: [String: Any]) -> String {
                var fields: [String: Any] = [
                    "plan_id": plan.uuidString, "title": "T", "starts_at": "2026-11-30T09:00:00Z", "ends_at": "2026-11-30T10:00:00Z",
                ]
                fields.merge(overrides) { _, new in new }
                return String(decoding: try! JSONSerialization.data(withJSONObject: fields), as: UTF8.self)
            }
            let cases: [(String, String, String)] = [
                ("/rest/v1/tasks", task(["colour": "red"]), "unknown_field"),
                ("/rest/v1/tasks", task(["created_at": "2026-01-01T00:00:00Z"]), "unknown_field"),
                ("/rest/v1/tasks", task(["status": "lost"]), "invalid_value"),
                ("/rest/v1/tasks", task(["title": 42]), "invalid_value"),
                ("/rest/v1/tasks", task(["starts_at": "2026-11-30T10:00:00Z", "ends_at": "2026-11-30T09:00:00Z"]), "constraint_violation"),
                ("/rest/v1/tasks", #"{"plan_id":"\#(plan)","title":"T","starts_at":"2026-11-30T10:00:00Z"}"#, "missing_field"),
                ("/rest/v1/tasks", task(["starts_at": "yesterday"]), "invalid_value"),
                ("/rest/v1/tasks", task(["branch_id": other.branch.uuidString]), "plan_in_other_branch"),
                ("/rest/v1/tasks", task(["plan_id": otherPlan.uuidString]), "invalid_reference"),
                ("/rest/v1/tasks", task(["plan_id": UUID().uuidString]), "invalid_reference"),
                ("/rest/v1/tasks", task(["title": String(repeating: "x", count: 501)]), "constraint_violation"),
                ("/rest/v1/tasks", task(["title": "nul\u{0}byte"]), "invalid_value"),
                (
                    "/rest/v1/plans", #"{"branch_id":"\#(team.branch)","title":"P","period_start":"2026-12-06","period_end":"2026-11-30"}"#,
                    "constraint_violation"
                ),
                ("/rest/v1/attachments", #"{"file_name":"a","content_type":"b","byte_size":1,"storage_url":"u"}"#, "constraint_violation"),
                (
                    "/rest/v1/attachments", #"{"plan_id":"\#(plan)","file_name":"a","content_type":"b","byte_size":1.5,"storage_url":"u"}"#,
                    "invalid_value"
                ),
            ]
            for (path, body, code) in cases {
                let reply = try await client.send(.post, path, as: editor, json: body)
                #expect(reply.status == .unprocessableContent, "\(body) -> \(reply.text)")
                #expect(reply.errorCode == code, "\(body) -> \(reply.text)")
            }
            let task = try await team.makeTask(client, plan: plan)
            let move = try await client.send(.patch, "/rest/v1/tasks/\(task)", as: editor, json: #"{"plan_id":"\#(otherPlan)"}"#)
            #expect(move.status == .unprocessableContent)
            let readOnly = try await client.send(.patch, "/rest/v1/tasks/\(task)", as: editor, json: #"{"branch_id":"\#(other.branch)"}"#)
            #expect(readOnly.errorCode == "unknown_field")
            let empty = try await client.send(.patch, "/rest/v1/tasks/\(task)", as: editor, json: "{}")
            #expect(empty.status == .unprocessableContent)
            // Nothing of the refused writes landed.
            let all = try await client.send(.get, "/rest/v1/tasks", as: editor)
            #expect(all.array.count == 1)
        }
    }

    @Test func malformedRequests() async throws {
        let server = try await TestServer.make(maxBodyBytes: 4096)
        try await server.test { client in
            let team = try await Team.make(client)
            let editor = Principal.user(team.editor)
            let badJSON = try await client.send(.post, "/rest/v1/plans", as: editor, json: "{not json")
            #expect(badJSON.status == .badRequest)
            #expect(badJSON.errorCode == "invalid_json")
            let notObject = try await client.send(.post, "/rest/v1/plans", as: editor, json: "[1,2]")
            #expect(notObject.errorCode == "invalid_json")
            var text = HTTPFields()
            text[.contentType] = "text/plain"
            let wrongType = try await client.send(.post, "/rest/v1/plans", as: editor, json: "{}", headers: text)
            #expect(wrongType.status == .unsupportedMediaType)
            #expect(wrongType.errorCode == "unsupported_media_type")
            let large = try await client.send(
                .post,
                "/rest/v1/plans",
                as: editor,
                json: #"{"title":"\#(String(repeating: "x", count: 5000))"}"#
            )
            #expect(large.status == .contentTooLarge)
            #expect(large.errorCode == "payload_too_large")

            let queries: [(String, String)] = [
                ("/rest/v1/tasks?colour=eq.red", "invalid_filter"),
                ("/rest/v1/tasks?status=like.x", "invalid_filter"),
                ("/rest/v1/tasks?plan_id=eq.nope", "invalid_filter"),
                ("/rest/v1/tasks?starts_at=gt.notadate", "invalid_filter"),
                ("/rest/v1/tasks?status=in.taken", "invalid_filter"),
                ("/rest/v1/tasks?limit=1001", "invalid_parameter"),
                ("/rest/v1/tasks?limit=0", "invalid_parameter"),
                ("/rest/v1/tasks?offset=-1", "invalid_parameter"),
                ("/rest/v1/tasks?order=colour.asc", "invalid_parameter"),
                ("/rest/v1/tasks?order=title.sideways", "invalid_parameter"),
                ("/rest/v1/tasks/not-a-uuid", "invalid_parameter"),
                ("/rest/v1/tasks?" + (0..<21).map { "title=eq.t\($0)" }.joined(separator: "&"), "invalid_filter"),
            ]
            for (path, code) in queries {
                let reply = try await client.send(.get, path, as: editor)
                #expect(reply.status == .badRequest, "\(path) -> \(reply.text)")
                #expect(reply.errorCode == code, "\(path) -> \(reply.text)")
            }
            let unknown = try await client.send(.get, "/rest/v1/nothing", as: editor)
            #expect(unknown.status == .notFound)
            #expect(unknown.errorCode == "not_found")
        }
    }

    @Test func tokensAreChecked() async throws {
        let server = try await TestServer.make()
        try await server.test { client in
            let missing = try await client.send(.get, "/rest/v1/plans", as: nil)
            #expect(missing.status == .unauthorized)
            #expect(missing.errorCode == "missing_token")
            #expect(missing.headers[.wwwAuthenticate]?.hasPrefix("Bearer") == true)

            func withToken(_ token: String) async throws -> TestServer.Client.Reply {
                var headers = HTTPFields()
                headers[.authorization] = "Bearer \(token)"
                return try await client.send(.get, "/rest/v1/plans", as: nil, headers: headers)
            }
            let garbage = try await withToken("not.a.token")
            #expect(garbage.status == .unauthorized)
            #expect(garbage.errorCode == "invalid_token")

            let user = UUID().uuidString.lowercased()
            let expired = try await server.tokens.issue(subject: user, role: .authenticated, lifetime: -60)
            let expiredReply = try await withToken(expired)
            #expect(expiredReply.errorCode == "token_expired")
            #expect(expiredReply.headers[.wwwAuthenticate]?.contains("invalid_token") == true)

            let foreign = try await TokenAuthority(secret: "another-secret-another-secret-another-secret")
            let forged = try await foreign.issue(subject: user, role: .authenticated, lifetime: 60)
            #expect(try await withToken(forged).errorCode == "invalid_token")

            // An unsigned token ("alg":"none") is refused before any verification.
            let header = Data(#"{"alg":"none","typ":"JWT"}"#.utf8).base64EncodedString().replacingOccurrences(of: "=", with: "")
            let payload = Data(#"{"sub":"\#(user)","role":"service_role","exp":9999999999}"#.utf8).base64EncodedString()
                .replacingOccurrences(of: "=", with: "")
            #expect(try await withToken("\(header).\(payload).").errorCode == "invalid_token")

            let valid = try await server.tokens.issue(subject: user, role: .authenticated, lifetime: 60)
            #expect(try await withToken(valid).status == .ok)
        }
    }
}
