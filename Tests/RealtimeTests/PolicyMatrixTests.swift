import Foundation
import Hummingbird
import Logging
import PostgresNIO
import Testing

@testable import Realtime

/// Who may read and write what: the whole policy matrix through the REST API, then once more with plain SQL as the
/// request roles, to show that row-level security alone holds the line when no Swift policy is involved.
///
/// Every test runs on its own server and database, with two branches: "home", whose rows are tried, and "other",
/// whose admin is one of the callers.
/// One file over 400 lines because it is one matrix: every role × table × operation, through REST and through SQL.
@Suite struct PolicyMatrixTests {
    typealias Reply = TestServer.Client.Reply

    // MARK: - The matrix

    /// Who makes a request.
    enum Caller: String, CaseIterable, Sendable, CustomTestStringConvertible {
        case viewer, editor, admin
        /// A user who is a member of no branch.
        case outsider
        /// The admin of the other branch, and nothing in the home branch.
        case otherBranchAdmin
        case service
        /// The service role on a request that carries an `Origin` header.
        case serviceFromBrowser

        var testDescription: String { rawValue }
        var isHomeMember: Bool { [.viewer, .editor, .admin].contains(self) }
    }

    /// The answer a caller must get.
    enum Outcome: Sendable, Equatable, CustomStringConvertible {
        /// 200; a list holds the home branch's rows.
        case ok
        /// 201
        case created
        /// 204
        case noContent
        /// The home branch does not exist for this caller: a list holds none of its rows, and one row is 404 `not_found`,
        /// exactly as for an id that exists nowhere.
        case invisible
        /// 403 `forbidden`: the caller sees the branch but their role does not allow this.
        case forbidden
        /// 403 `service_role_from_browser`
        case fromBrowser

        var description: String {
            switch self {
            case .ok: "200"
            case .created: "201"
            case .noContent: "204"
            case .invisible: "404 not_found"
            case .forbidden: "403 forbidden"
            case .fromBrowser: "403 service_role_from_browser"
            }
        }

        /// Whether the request changes the database.
        var writes: Bool { [.ok, .created, .noContent].contains(self) }
    }

    /// The rights of a caller on the rows of plans, tasks, client cards and attachments of the home branch.
    struct DataRights: Sendable {
        var list, get, create, update, delete: Outcome
    }

    static func dataRights(_ caller: Caller) -> DataRights {
        switch caller {
        case .viewer: DataRights(list: .ok, get: .ok, create: .forbidden, update: .forbidden, delete: .forbidden)
        case .editor, .admin, .service: DataRights(list: .ok, get: .ok, create: .created, update: .ok, delete: .noContent)
        case .outsider, .otherBranchAdmin:
            DataRights(list: .invisible, get: .invisible, create: .invisible, update: .invisible, delete: .invisible)
        case .serviceFromBrowser:
            DataRights(list: .fromBrowser, get: .fromBrowser, create: .fromBrowser, update: .fromBrowser, delete: .fromBrowser)
        }
    }

    /// The rights of a caller on status history (reads only: nobody writes it through the API).
    static func historyRights(_ caller: Caller) -> Outcome {
        switch caller {
        case .viewer, .editor, .admin, .service: .ok
        case .outsider, .otherBranchAdmin: .invisible
        case .serviceFromBrowser: .fromBrowser
        }
    }

    /// The rights of a caller on the home branch's members, on branches and on users.
    struct AdminRights: Sendable {
        /// GET /branches/{home}/members
        var listMembers: Outcome
        /// PUT a new member
        var addMember: Outcome
        /// PUT a new role for an existing member
        var changeRole: Outcome
        /// DELETE a member
        var removeMember: Outcome
        /// PUT themselves in as admin; nil for callers that are no user
        var makeSelfAdmin: Outcome?
        /// GET /branches (`.ok`: the home branch is listed, `.invisible`: it is not)
        var listBranches: Outcome
        /// POST /branches
        var createBranch: Outcome
        /// POST /users
        var createUser: Outcome
    }

    static func adminRights(_ caller: Caller) -> AdminRights {
        switch caller {
        case .viewer, .editor:
            AdminRights(
                listMembers: .ok, addMember: .forbidden, changeRole: .forbidden, removeMember: .forbidden, makeSelfAdmin: .forbidden,
                listBranches: .ok, createBranch: .forbidden, createUser: .forbidden
            )
        case .admin:
            AdminRights(
                listMembers: .ok, addMember: .created, changeRole: .ok, removeMember: .noContent, makeSelfAdmin: nil,
                listBranches: .ok, createBranch: .forbidden, createUser: .created
            )
        case .outsider:
            AdminRights(
                listMembers: .invisible, addMember: .invisible, changeRole: .invisible, removeMember: .invisible,
                makeSelfAdmin: .invisible, listBranches: .invisible, createBranch: .forbidden, createUser: .forbidden
            )
        case .otherBranchAdmin:
            // An admin anywhere may create users (and then add them to their own branch).
            AdminRights(
                listMembers: .invisible, addMember: .invisible, changeRole: .invisible, removeMember: .invisible,
                makeSelfAdmin: .invisible, listBranches: .invisible, createBranch: .forbidden, createUser: .created
            )
        case .service:
            AdminRights(
                listMembers: .ok, addMember: .created, changeRole: .ok, removeMember: .noContent, makeSelfAdmin: nil,
                listBranches: .ok, createBranch: .created, createUser: .created
            )
        case .serviceFromBrowser:
            AdminRights(
                listMembers: .fromBrowser, addMember: .fromBrowser, changeRole: .fromBrowser, removeMember: .fromBrowser,
                makeSelfAdmin: nil, listBranches: .fromBrowser, createBranch: .fromBrowser, createUser: .fromBrowser
            )
        }
    }

    /// The tables of branch data served by the generic row controller.
    enum DataTable: String, CaseIterable, Sendable, CustomTestStringConvertible {
        case plans
        case tasks
        case clientCards = "client_cards"
        case attachments

        var testDescription: String { rawValue }
        var path: String { "/rest/v1/\(rawValue)" }

        var sqlTable: String {
            switch self {
            case .plans: "plan"
            case .tasks: "task"
            case .clientCards: "client_card"
            case .attachments: "attachment"
            }
        }

        /// A text column that an update changes.
        var editableColumn: String {
            switch self {
            case .plans, .tasks: "title"
            case .clientCards: "name"
            case .attachments: "file_name"
            }
        }

        /// A create body for a new row of `branch`, whose parent rows (if any) are `parents`.
        func createBody(id: UUID, branch: UUID, parents: World.Rows) -> String {
            switch self {
            case .plans:
                #"{"id":"\#(id)","branch_id":"\#(branch)","title":"New plan","period_start":"2026-12-07","period_end":"2026-12-13"}"#
            case .tasks:
                #"{"id":"\#(id)","plan_id":"\#(parents.plan)","title":"New task","starts_at":"2026-12-01T09:00:00Z","ends_at":"2026-12-01T10:00:00Z"}"#
            case .clientCards:
                #"{"id":"\#(id)","branch_id":"\#(branch)","name":"New card","phone":"+1 555 0100"}"#
            case .attachments:
                #"{"id":"\#(id)","task_id":"\#(parents.task)","file_name":"brief.pdf","content_type":"application/pdf","byte_size":1024,"storage_url":"https://files.example/brief.pdf"}"#
            }
        }

        /// What a non-member gets for a create into the home branch. A plan or client card names its branch: 403.
        /// A task or attachment takes its branch from a parent row the caller cannot see, so the answer is the one
        /// for a parent that does not exist at all (422 `invalid_reference`): the parent's existence does not leak.
        var createWhenInvisible: (status: HTTPResponse.Status, code: String) {
            switch self {
            case .plans, .clientCards: (.forbidden, "forbidden")
            case .tasks, .attachments: (.unprocessableContent, "invalid_reference")
            }
        }
    }

    // MARK: - REST: plans, tasks, client cards, attachments

    @Test(arguments: Caller.allCases, DataTable.allCases)
    func dataTable(_ caller: Caller, _ table: DataTable) async throws {
        let server = try await TestServer.make()
        try await server.test { client in
            let world = try await World.make(client)
            let rights = Self.dataRights(caller)
            let who = world.principal(caller)
            let headers = world.headers(caller)
            let row = world.homeRows.id(of: table)
            let label = "\(caller) \(table)"

            // List: the home branch's rows, or none of them.
            let filtered = try await client.send(.get, "\(table.path)?branch_id=eq.\(world.home.branch)", as: who, headers: headers)
            let unfiltered = try await client.send(.get, table.path, as: who, headers: headers)
            switch rights.list {
            case .ok:
                #expect(filtered.status == .ok, "\(label) list: \(filtered.text)")
                #expect(Self.ids(filtered).contains(row), "\(label) list misses the home row: \(filtered.text)")
                #expect(Self.branches(filtered) == [world.home.branch], "\(label) list: \(filtered.text)")
                #expect(Self.ids(unfiltered).contains(row), "\(label) unfiltered list: \(unfiltered.text)")
            case .invisible:
                #expect(filtered.status == .ok, "\(label) list: \(filtered.text)")
                #expect(filtered.array.isEmpty, "\(label) list shows home rows: \(filtered.text)")
                #expect(unfiltered.status == .ok, "\(label) unfiltered list: \(unfiltered.text)")
                #expect(!Self.branches(unfiltered).contains(world.home.branch), "\(label) unfiltered list: \(unfiltered.text)")
                if caller == .otherBranchAdmin {
                    // The list works for them: it holds their own branch's row.
                    #expect(Self.ids(unfiltered).contains(world.otherRows.id(of: table)), "\(label) own rows: \(unfiltered.text)")
                }
            default:
                Self.expect(filtered, rights.list, "\(label) list")
                Self.expect(unfiltered, rights.list, "\(label) unfiltered list")
            }

            // Get one.
            let one = try await client.send(.get, "\(table.path)/\(row)", as: who, headers: headers)
            Self.expect(one, rights.get, "\(label) get")
            if rights.get == .ok { #expect(one.string("id") == row.pgText, "\(label) get: \(one.text)") }
            if rights.get == .invisible {
                let nowhere = try await client.send(.get, "\(table.path)/\(UUID())", as: who, headers: headers)
                Self.expectSameAnswer(one, nowhere, "\(label) get")
            }

            // Create in the home branch.
            let newID = UUID()
            let body = table.createBody(id: newID, branch: world.home.branch, parents: world.homeRows)
            let created = try await client.send(.post, table.path, as: who, json: body, headers: headers)
            if rights.create == .invisible {
                let expected = table.createWhenInvisible
                #expect(created.status == expected.status && created.errorCode == expected.code, "\(label) create: \(created.text)")
            } else {
                Self.expect(created, rights.create, "\(label) create")
            }
            if rights.create == .created { #expect(created.string("branch_id") == world.home.branch.pgText, "\(created.text)") }
            #expect(try await Owner(server: server).count(table.sqlTable, id: newID) == (rights.create == .created ? 1 : 0), "\(label) create wrote?")

            // Update a row of the home branch.
            let victim = try await world.makeHomeRow(table, client)
            let update = try await client.send(
                .patch,
                "\(table.path)/\(victim)",
                as: who,
                json: #"{"\#(table.editableColumn)":"changed by \#(caller)"}"#,
                headers: headers
            )
            Self.expect(update, rights.update, "\(label) update")
            if rights.update == .invisible {
                let nowhere = try await client.send(.patch, "\(table.path)/\(UUID())", as: who, json: #"{"\#(table.editableColumn)":"x"}"#)
                Self.expectSameAnswer(update, nowhere, "\(label) update")
            }
            let stored = try await Owner(server: server).text(table.editableColumn, of: table.sqlTable, id: victim)
            #expect((stored == "changed by \(caller)") == rights.update.writes, "\(label) update stored \(stored ?? "nil")")

            // Delete it.
            let delete = try await client.send(.delete, "\(table.path)/\(victim)", as: who, headers: headers)
            Self.expect(delete, rights.delete, "\(label) delete")
            if rights.delete == .invisible {
                let nowhere = try await client.send(.delete, "\(table.path)/\(UUID())", as: who, headers: headers)
                Self.expectSameAnswer(delete, nowhere, "\(label) delete")
            }
            #expect(try await Owner(server: server).count(table.sqlTable, id: victim) == (rights.delete.writes ? 0 : 1), "\(label) delete")
        }
    }

    // MARK: - REST: status history

    @Test(arguments: Caller.allCases)
    func statusHistory(_ caller: Caller) async throws {
        let server = try await TestServer.make()
        try await server.test { client in
            let world = try await World.make(client)
            let rights = Self.historyRights(caller)
            let who = world.principal(caller)
            let headers = world.headers(caller)
            let task = world.homeRows.task
            let history = world.homeRows.history
            let label = "\(caller) status_history"

            let list = try await client.send(.get, "/rest/v1/status_history?task_id=eq.\(task)", as: who, headers: headers)
            let unfiltered = try await client.send(.get, "/rest/v1/status_history", as: who, headers: headers)
            switch rights {
            case .ok:
                #expect(list.status == .ok && Self.ids(list) == [history], "\(label) list: \(list.text)")
                #expect(Self.ids(unfiltered).contains(history), "\(label) unfiltered list: \(unfiltered.text)")
            case .invisible:
                #expect(list.status == .ok && list.array.isEmpty, "\(label) list: \(list.text)")
                #expect(unfiltered.status == .ok, "\(label) unfiltered list: \(unfiltered.text)")
                #expect(!Self.branches(unfiltered).contains(world.home.branch), "\(label) unfiltered list: \(unfiltered.text)")
            default:
                Self.expect(list, rights, "\(label) list")
                Self.expect(unfiltered, rights, "\(label) unfiltered list")
            }

            let one = try await client.send(.get, "/rest/v1/status_history/\(history)", as: who, headers: headers)
            Self.expect(one, rights, "\(label) get")
            if rights == .ok { #expect(one.string("to_status") == "taken" && one.object["from_status"] is NSNull, "\(one.text)") }

            // Nobody writes status history through the API: there is no such route, whatever the role.
            let body =
                #"{"branch_id":"\#(world.home.branch)","plan_id":"\#(world.homeRows.plan)","task_id":"\#(task)","from_status":"taken","to_status":"done"}"#
            let writes = [
                ("POST", try await client.send(.post, "/rest/v1/status_history", as: who, json: body, headers: headers)),
                (
                    "PATCH",
                    try await client.send(.patch, "/rest/v1/status_history/\(history)", as: who, json: #"{"to_status":"done"}"#, headers: headers)
                ),
                ("DELETE", try await client.send(.delete, "/rest/v1/status_history/\(history)", as: who, headers: headers)),
            ]
            for (method, reply) in writes {
                #expect(!(200..<300).contains(reply.status.code), "\(label) \(method) answered \(reply.status): \(reply.text)")
                #expect([404, 405].contains(reply.status.code), "\(label) \(method) answered \(reply.status): \(reply.text)")
            }
            let rows = try await server.withOwnerConnection { connection in
                try await Self.strings(
                    "SELECT coalesce(from_status, '-') || '>' || to_status FROM status_history WHERE task_id = \(task)",
                    on: connection
                )
            }
            #expect(rows == ["->taken"], "\(label): history was written: \(rows)")
        }
    }

    // MARK: - REST: members, branches, users

    @Test(arguments: Caller.allCases)
    func membersBranchesAndUsers(_ caller: Caller) async throws {
        let server = try await TestServer.make()
        try await server.test { client in
            let world = try await World.make(client)
            let rights = Self.adminRights(caller)
            let who = world.principal(caller)
            let headers = world.headers(caller)
            let home = world.home
            let members = "/rest/v1/branches/\(home.branch)/members"
            let label = "\(caller) members"

            // List the members.
            let list = try await client.send(.get, members, as: who, headers: headers)
            Self.expect(list, rights.listMembers, "\(label) list")
            if rights.listMembers == .ok {
                let users = Set(list.array.compactMap { ($0["user_id"] as? String).flatMap(UUID.init(uuidString:)) })
                #expect(users == [home.admin, home.editor, home.viewer, world.extraMember], "\(label) list: \(list.text)")
            }
            if rights.listMembers == .invisible {
                let nowhere = try await client.send(.get, "/rest/v1/branches/\(UUID())/members", as: who, headers: headers)
                Self.expectSameAnswer(list, nowhere, "\(label) list")
            }

            // Add a member.
            let add = try await client.send(.put, "\(members)/\(world.candidate)", as: who, json: #"{"role":"viewer"}"#, headers: headers)
            Self.expect(add, rights.addMember, "\(label) add")
            #expect(
                try await Owner(server: server).role(of: world.candidate, in: home.branch) == (rights.addMember.writes ? "viewer" : nil),
                "\(label) add")

            // Change a member's role (a promotion, so a refused one is no privilege escalation either).
            let change = try await client.send(.put, "\(members)/\(world.extraMember)", as: who, json: #"{"role":"admin"}"#, headers: headers)
            Self.expect(change, rights.changeRole, "\(label) change role")
            #expect(
                try await Owner(server: server).role(of: world.extraMember, in: home.branch) == (rights.changeRole.writes ? "admin" : "viewer"),
                "\(label) change role")

            // Make oneself admin of the home branch.
            if let makeSelfAdmin = rights.makeSelfAdmin, let me = who.userID {
                let before = try await Owner(server: server).role(of: me, in: home.branch)
                let reply = try await client.send(.put, "\(members)/\(me)", as: who, json: #"{"role":"admin"}"#, headers: headers)
                Self.expect(reply, makeSelfAdmin, "\(label) make self admin")
                #expect(try await Owner(server: server).role(of: me, in: home.branch) == before, "\(label) make self admin changed the role")
            }

            // Remove a member.
            let remove = try await client.send(.delete, "\(members)/\(world.extraMember)", as: who, headers: headers)
            Self.expect(remove, rights.removeMember, "\(label) remove")
            let removed = try await Owner(server: server).role(of: world.extraMember, in: home.branch) == nil
            #expect(removed == rights.removeMember.writes, "\(label) remove")

            // List branches.
            let branches = try await client.send(.get, "/rest/v1/branches", as: who, headers: headers)
            let listed = Set(Self.ids(branches))
            switch rights.listBranches {
            case .ok:
                #expect(branches.status == .ok && listed.contains(home.branch), "\(label) branches: \(branches.text)")
                #expect(listed.contains(world.other.branch) == (caller == .service), "\(label) branches: \(branches.text)")
            case .invisible:
                #expect(branches.status == .ok && !listed.contains(home.branch), "\(label) branches: \(branches.text)")
                #expect(listed.contains(world.other.branch) == (caller == .otherBranchAdmin), "\(label) branches: \(branches.text)")
            default:
                Self.expect(branches, rights.listBranches, "\(label) branches")
            }

            // Create a branch.
            let branchID = UUID()
            let branch = try await client.send(.post, "/rest/v1/branches", as: who, json: #"{"id":"\#(branchID)","name":"New"}"#, headers: headers)
            Self.expect(branch, rights.createBranch, "\(label) create branch")
            #expect(try await Owner(server: server).count("branch", id: branchID) == (rights.createBranch.writes ? 1 : 0), "\(label) create branch")

            // Create a user.
            let userID = UUID()
            let user = try await client.send(.post, "/rest/v1/users", as: who, json: #"{"id":"\#(userID)","display_name":"New"}"#, headers: headers)
            Self.expect(user, rights.createUser, "\(label) create user")
            #expect(try await Owner(server: server).count("app_user", id: userID) == (rights.createUser.writes ? 1 : 0), "\(label) create user")
        }
    }

    // MARK: - REST: tokens and origins

    @Test func everyRouteWantsAToken() async throws {
        let server = try await TestServer.make()
        try await server.test { client in
            let world = try await World.make(client)
            let rows = world.homeRows
            let routes: [(HTTPRequest.Method, String)] = [
                (.get, "/rest/v1/plans"), (.get, "/rest/v1/plans/\(rows.plan)"), (.post, "/rest/v1/plans"),
                (.patch, "/rest/v1/plans/\(rows.plan)"), (.delete, "/rest/v1/plans/\(rows.plan)"),
                (.get, "/rest/v1/tasks/\(rows.task)"), (.get, "/rest/v1/client_cards/\(rows.card)"),
                (.get, "/rest/v1/attachments/\(rows.attachment)"), (.get, "/rest/v1/status_history?task_id=eq.\(rows.task)"),
                (.get, "/rest/v1/branches"), (.post, "/rest/v1/branches"), (.post, "/rest/v1/users"),
                (.get, "/rest/v1/branches/\(world.home.branch)/members"),
                (.put, "/rest/v1/branches/\(world.home.branch)/members/\(world.candidate)"),
                (.delete, "/rest/v1/branches/\(world.home.branch)/members/\(world.home.viewer)"),
            ]
            for (method, path) in routes {
                let json: String? = [.post, .patch, .put].contains(method) ? #"{"role":"admin"}"# : nil
                let reply = try await client.send(method, path, as: nil, json: json)
                #expect(reply.status == .unauthorized && reply.errorCode == "missing_token", "\(method) \(path): \(reply.text)")
            }
            #expect(try await Owner(server: server).count("plan", id: rows.plan) == 1)
            #expect(try await Owner(server: server).role(of: world.candidate, in: world.home.branch) == nil)
            #expect(try await Owner(server: server).role(of: world.home.viewer, in: world.home.branch) == "viewer")
        }
    }

    /// The Origin rule is for the service role only: a user's token from a browser works as usual.
    @Test func usersMayCallFromABrowser() async throws {
        let server = try await TestServer.make()
        try await server.test { client in
            let world = try await World.make(client)
            var headers = HTTPFields()
            headers[.origin] = "https://app.example"
            let read = try await client.send(.get, "/rest/v1/plans/\(world.homeRows.plan)", as: .user(world.home.viewer), headers: headers)
            #expect(read.status == .ok, "\(read.text)")
            let write = try await client.send(
                .patch,
                "/rest/v1/plans/\(world.homeRows.plan)",
                as: .user(world.home.editor),
                json: #"{"title":"From the browser"}"#,
                headers: headers
            )
            #expect(write.status == .ok, "\(write.text)")
            let denied = try await client.send(
                .patch,
                "/rest/v1/plans/\(world.homeRows.plan)",
                as: .user(world.home.viewer),
                json: #"{"title":"Viewer from the browser"}"#,
                headers: headers
            )
            #expect(denied.status == .forbidden && denied.errorCode == "forbidden", "\(denied.text)")
        }
    }

    // MARK: - Row-level security alone

    /// Outsiders and members of another branch see none of the home branch's rows, in any table.
    @Test func rlsAloneHidesOtherBranches() async throws {
        let server = try await TestServer.make()
        try await server.test { client in
            let world = try await World.make(client)
            let home = world.home.branch
            let other = world.other.branch
            try await server.withOwnerConnection { connection in
                for (table, branchColumn) in Self.branchTables {
                    let inHome: PostgresQuery = "SELECT count(*) FROM \(unescaped: table) WHERE \(unescaped: branchColumn) = \(home)"
                    let inOther: PostgresQuery = "SELECT count(*) FROM \(unescaped: table) WHERE \(unescaped: branchColumn) = \(other)"
                    let all: PostgresQuery = "SELECT count(*) FROM \(unescaped: table)"
                    // The owner sees rows on both sides, so the zeros below are RLS at work.
                    let homeRows = try await Self.count(inHome, on: connection)
                    let otherRows = try await Self.count(inOther, on: connection)
                    #expect(homeRows > 0 && otherRows > 0, "\(table): owner sees \(homeRows) home and \(otherRows) other rows")

                    #expect(try await Self.count(all, as: world.home.outsider, on: connection) == 0, "outsider sees \(table) rows")
                    #expect(try await Self.count(inHome, as: world.home.outsider, on: connection) == 0, "outsider sees home \(table)")
                    #expect(try await Self.count(inHome, as: world.other.admin, on: connection) == 0, "other admin sees home \(table)")
                    #expect(try await Self.count(all, as: world.other.admin, on: connection) == otherRows, "other admin's own \(table)")
                    #expect(try await Self.count(all, as: world.home.viewer, on: connection) == homeRows, "viewer's own \(table)")
                    #expect(try await Self.count(all, role: "realtime_service", as: nil, on: connection) >= homeRows + otherRows, "service \(table)")
                }
                // No user, no rows (a missing realtime.user_id must not match anything).
                #expect(try await Self.count("SELECT count(*) FROM plan", as: nil, on: connection) == 0)
            }
        }
    }

    /// A viewer's writes fail or touch no row, where an editor's identical statements work.
    @Test func rlsAloneStopsViewerWrites() async throws {
        let server = try await TestServer.make()
        try await server.test { client in
            let world = try await World.make(client)
            let home = world.home
            let rows = world.homeRows
            try await server.withOwnerConnection { connection in
                let inserts: [PostgresQuery] = [
                    "INSERT INTO plan (branch_id, title, period_start, period_end) VALUES (\(home.branch), 'p', '2026-12-01', '2026-12-02') RETURNING id",
                    "INSERT INTO task (branch_id, plan_id, title, starts_at, ends_at) VALUES (\(home.branch), \(rows.plan), 't', now(), now() + interval '1 hour') RETURNING id",
                    "INSERT INTO client_card (branch_id, name) VALUES (\(home.branch), 'c') RETURNING id",
                    "INSERT INTO attachment (branch_id, plan_id, file_name, content_type, byte_size, storage_url) VALUES (\(home.branch), \(rows.plan), 'f', 'text/plain', 1, 'https://f.example') RETURNING id",
                ]
                for insert in inserts {
                    #expect(try await Self.run(insert, as: home.viewer, on: connection) == .failed("42501"), "viewer: \(insert.sql)")
                    #expect(try await Self.run(insert, as: home.editor, on: connection) == .rows(1), "editor: \(insert.sql)")
                }
                let changes: [PostgresQuery] = [
                    "UPDATE task SET title = 'x' WHERE id = \(rows.task) RETURNING id",
                    "UPDATE task SET status = 'done' WHERE id = \(rows.task) RETURNING id",
                    "UPDATE plan SET title = 'x' WHERE id = \(rows.plan) RETURNING id",
                    "UPDATE client_card SET name = 'x' WHERE id = \(rows.card) RETURNING id",
                    "UPDATE attachment SET file_name = 'x' WHERE id = \(rows.attachment) RETURNING id",
                    "DELETE FROM attachment WHERE id = \(rows.attachment) RETURNING id",
                    "DELETE FROM client_card WHERE id = \(rows.card) RETURNING id",
                    "DELETE FROM task WHERE id = \(rows.task) RETURNING id",
                    "DELETE FROM plan WHERE id = \(rows.plan) RETURNING id",
                ]
                for change in changes {
                    #expect(try await Self.run(change, as: home.viewer, on: connection) == .rows(0), "viewer: \(change.sql)")
                    #expect(try await Self.run(change, as: home.editor, on: connection) == .rows(1), "editor: \(change.sql)")
                }
                // Every statement above was rolled back: the rows are as they were.
                let title = try await Self.strings("SELECT title || '/' || status FROM task WHERE id = \(rows.task)", on: connection)
                #expect(title == ["Shift/taken"])
            }
        }
    }

    /// An editor writes in their branch only, and cannot move a row into another branch.
    @Test func rlsAloneKeepsEditorsInTheirBranch() async throws {
        let server = try await TestServer.make()
        try await server.test { client in
            let world = try await World.make(client)
            let editor = world.home.editor
            let home = world.home.branch
            let other = world.other.branch
            let mine = world.homeRows
            let theirs = world.otherRows
            try await server.withOwnerConnection { connection in
                func plan(_ branch: UUID) -> PostgresQuery {
                    "INSERT INTO plan (branch_id, title, period_start, period_end) VALUES (\(branch), 'p', '2026-12-01', '2026-12-02') RETURNING id"
                }
                #expect(try await Self.run(plan(home), as: editor, on: connection) == .rows(1))
                #expect(try await Self.run(plan(other), as: editor, on: connection) == .failed("42501"))
                #expect(
                    try await Self.run(
                        "INSERT INTO task (branch_id, plan_id, title, starts_at, ends_at) VALUES (\(other), \(theirs.plan), 't', now(), now() + interval '1 hour')",
                        as: editor,
                        on: connection
                    ) == .failed("42501")
                )
                #expect(
                    try await Self.run("INSERT INTO client_card (branch_id, name) VALUES (\(other), 'c')", as: editor, on: connection)
                        == .failed("42501")
                )
                #expect(
                    try await Self.run("UPDATE plan SET title = 'x' WHERE id = \(theirs.plan) RETURNING id", as: editor, on: connection) == .rows(0))
                #expect(
                    try await Self.run("UPDATE task SET status = 'done' WHERE id = \(theirs.task) RETURNING id", as: editor, on: connection)
                        == .rows(0))
                #expect(try await Self.run("DELETE FROM task WHERE id = \(theirs.task) RETURNING id", as: editor, on: connection) == .rows(0))
                #expect(try await Self.run("DELETE FROM client_card WHERE id = \(theirs.card) RETURNING id", as: editor, on: connection) == .rows(0))
                // Moving a row out of the branch is a write into the other branch.
                #expect(
                    try await Self.run("UPDATE client_card SET branch_id = \(other) WHERE id = \(mine.card)", as: editor, on: connection)
                        == .failed("42501")
                )
                #expect(
                    try await Self.run("UPDATE plan SET branch_id = \(other) WHERE id = \(mine.plan)", as: editor, on: connection) == .failed("42501")
                )
                // A status change by the editor writes its history row in the same transaction, through the trigger.
                let history = try await Self.inTransaction(as: editor, on: connection) { connection in
                    _ = try await connection.query("UPDATE task SET status = 'done' WHERE id = \(mine.task)", logger: Self.logger)
                    return try await Self.strings(
                        "SELECT coalesce(from_status, '-') || '>' || to_status FROM status_history WHERE task_id = \(mine.task) ORDER BY changed_at, id",
                        on: connection
                    )
                }
                #expect(history == ["->taken", "taken>done"])
            }
        }
    }

    /// Status history has no INSERT, UPDATE or DELETE privilege for any request role, the service role included.
    @Test func rlsAloneLetsNobodyWriteStatusHistory() async throws {
        let server = try await TestServer.make()
        try await server.test { client in
            let world = try await World.make(client)
            let rows = world.homeRows
            let home = world.home
            try await server.withOwnerConnection { connection in
                let statements: [PostgresQuery] = [
                    "INSERT INTO status_history (branch_id, plan_id, task_id, from_status, to_status) VALUES (\(home.branch), \(rows.plan), \(rows.task), 'taken', 'done')",
                    "UPDATE status_history SET to_status = 'done' WHERE id = \(rows.history)",
                    "DELETE FROM status_history WHERE id = \(rows.history)",
                ]
                let writers: [(role: String, user: UUID?)] = [
                    ("realtime_authenticated", home.viewer), ("realtime_authenticated", home.editor),
                    ("realtime_authenticated", home.admin), ("realtime_service", nil),
                ]
                for statement in statements {
                    for writer in writers {
                        let result = try await Self.run(statement, role: writer.role, as: writer.user, on: connection)
                        #expect(result == .failed("42501"), "\(writer.role) \(writer.user?.pgText ?? ""): \(statement.sql)")
                    }
                }
                let history = try await Self.strings("SELECT to_status FROM status_history WHERE task_id = \(rows.task)", on: connection)
                #expect(history == ["taken"])
            }
        }
    }

    /// Only a branch's admins add, change and remove its members.
    @Test func rlsAloneLetsOnlyAdminsManageMembers() async throws {
        let server = try await TestServer.make()
        try await server.test { client in
            let world = try await World.make(client)
            let home = world.home
            try await server.withOwnerConnection { connection in
                let add: PostgresQuery =
                    "INSERT INTO branch_member (branch_id, user_id, role) VALUES (\(home.branch), \(world.candidate), 'viewer') RETURNING id"
                let promote: PostgresQuery =
                    "UPDATE branch_member SET role = 'admin' WHERE branch_id = \(home.branch) AND user_id = \(world.extraMember) RETURNING id"
                let remove: PostgresQuery =
                    "DELETE FROM branch_member WHERE branch_id = \(home.branch) AND user_id = \(world.extraMember) RETURNING id"
                for user in [home.viewer, home.editor, home.outsider, world.other.admin] {
                    let name = user.pgText
                    #expect(try await Self.run(add, as: user, on: connection) == .failed("42501"), "\(name) adds a member")
                    #expect(try await Self.run(promote, as: user, on: connection) == .rows(0), "\(name) promotes a member")
                    #expect(try await Self.run(remove, as: user, on: connection) == .rows(0), "\(name) removes a member")
                    let selfAdmin: PostgresQuery =
                        "INSERT INTO branch_member (branch_id, user_id, role) VALUES (\(home.branch), \(user), 'admin') ON CONFLICT (branch_id, user_id) DO UPDATE SET role = 'admin' RETURNING id"
                    let result = try await Self.run(selfAdmin, as: user, on: connection)
                    #expect(result == .failed("42501") || result == .rows(0), "\(name) makes themself admin: \(result)")
                    #expect(result != .rows(1), "\(name) made themself admin")
                }
                #expect(try await Self.run(add, as: home.admin, on: connection) == .rows(1))
                #expect(try await Self.run(promote, as: home.admin, on: connection) == .rows(1))
                #expect(try await Self.run(remove, as: home.admin, on: connection) == .rows(1))
                let roles = try await Self.strings(
                    "SELECT role FROM branch_member WHERE branch_id = \(home.branch) ORDER BY role",
                    on: connection
                )
                #expect(roles == ["admin", "editor", "viewer", "viewer"], "everything was rolled back")
            }
        }
    }

    // MARK: - The world the tests run in

    /// Two branches with a full team each, and one row of every table in each.
    struct World: Sendable {
        /// One row of every data table in a branch.
        struct Rows: Sendable {
            let plan, task, card, attachment: UUID
            /// The history row written by the task's insert.
            let history: UUID

            func id(of table: DataTable) -> UUID {
                switch table {
                case .plans: plan
                case .tasks: task
                case .clientCards: card
                case .attachments: attachment
                }
            }
        }

        let home: Team
        let other: Team
        let homeRows: Rows
        let otherRows: Rows
        /// A user who is in no branch, to be added as a member.
        let candidate: UUID
        /// A fourth member of the home branch (a viewer), to be promoted and removed.
        let extraMember: UUID

        static func make(_ client: TestServer.Client) async throws -> World {
            let home = try await Team.make(client, name: "Home")
            let other = try await Team.make(client, name: "Other")
            let candidate = try await makeUser(client)
            let extraMember = try await makeUser(client)
            let put = try await client.send(
                .put,
                "/rest/v1/branches/\(home.branch)/members/\(extraMember)",
                as: Team.service,
                json: #"{"role":"viewer"}"#
            )
            try #require(put.status == .created, "member: \(put.text)")
            return World(
                home: home,
                other: other,
                homeRows: try await makeRows(home, client),
                otherRows: try await makeRows(other, client),
                candidate: candidate,
                extraMember: extraMember
            )
        }

        private static func makeUser(_ client: TestServer.Client) async throws -> UUID {
            let id = UUID()
            let reply = try await client.send(.post, "/rest/v1/users", as: Team.service, json: #"{"id":"\#(id)","display_name":"Someone"}"#)
            try #require(reply.status == .created, "user: \(reply.text)")
            return id
        }

        private static func makeRows(_ team: Team, _ client: TestServer.Client) async throws -> Rows {
            let plan = try await team.makePlan(client)
            let task = try await team.makeTask(client, plan: plan)
            let card = UUID()
            let cardReply = try await client.send(
                .post,
                "/rest/v1/client_cards",
                as: .user(team.editor),
                json: #"{"id":"\#(card)","branch_id":"\#(team.branch)","name":"Client"}"#
            )
            try #require(cardReply.status == .created, "card: \(cardReply.text)")
            let attachment = UUID()
            let attachmentReply = try await client.send(
                .post,
                "/rest/v1/attachments",
                as: .user(team.editor),
                json:
                    #"{"id":"\#(attachment)","plan_id":"\#(plan)","file_name":"a.txt","content_type":"text/plain","byte_size":3,"storage_url":"https://files.example/a.txt"}"#
            )
            try #require(attachmentReply.status == .created, "attachment: \(attachmentReply.text)")
            let history = try await client.send(.get, "/rest/v1/status_history?task_id=eq.\(task)", as: Team.service)
            let historyID = try #require(PolicyMatrixTests.ids(history).first, "history: \(history.text)")
            return Rows(plan: plan, task: task, card: card, attachment: attachment, history: historyID)
        }

        /// A new row of `table` in the home branch, made by its editor, for a caller to change or delete.
        func makeHomeRow(_ table: DataTable, _ client: TestServer.Client) async throws -> UUID {
            let id = UUID()
            let reply = try await client.send(
                .post,
                table.path,
                as: .user(home.editor),
                json: table.createBody(id: id, branch: home.branch, parents: homeRows)
            )
            try #require(reply.status == .created, "\(table): \(reply.text)")
            return id
        }

        func principal(_ caller: Caller) -> Principal {
            switch caller {
            case .viewer: .user(home.viewer)
            case .editor: .user(home.editor)
            case .admin: .user(home.admin)
            case .outsider: .user(home.outsider)
            case .otherBranchAdmin: .user(other.admin)
            case .service, .serviceFromBrowser: Team.service
            }
        }

        func headers(_ caller: Caller) -> HTTPFields {
            var headers = HTTPFields()
            if caller == .serviceFromBrowser { headers[.origin] = "https://app.example" }
            return headers
        }
    }

    /// The tables with branch data, and the column that names the branch.
    static let branchTables = [
        ("branch", "id"), ("branch_member", "branch_id"), ("plan", "branch_id"), ("task", "branch_id"),
        ("client_card", "branch_id"), ("attachment", "branch_id"), ("status_history", "branch_id"),
    ]

    // MARK: - Checking replies

    static func expect(_ reply: Reply, _ outcome: Outcome, _ label: String, sourceLocation: SourceLocation = #_sourceLocation) {
        let ok: Bool
        switch outcome {
        case .ok: ok = reply.status == .ok
        case .created: ok = reply.status == .created
        case .noContent: ok = reply.status == .noContent
        case .invisible: ok = reply.status == .notFound && reply.errorCode == "not_found"
        case .forbidden: ok = reply.status == .forbidden && reply.errorCode == "forbidden"
        case .fromBrowser: ok = reply.status == .forbidden && reply.errorCode == "service_role_from_browser"
        }
        #expect(ok, "\(label): expected \(outcome), got \(reply.status.code) \(reply.text)", sourceLocation: sourceLocation)
    }

    /// A row the caller cannot see is answered exactly like a row that does not exist.
    static func expectSameAnswer(_ hidden: Reply, _ missing: Reply, _ label: String, sourceLocation: SourceLocation = #_sourceLocation) {
        #expect(
            hidden.status == missing.status && hidden.errorCode == missing.errorCode,
            "\(label): a hidden row answers \(hidden.status.code) \(hidden.text), a missing one \(missing.status.code) \(missing.text)",
            sourceLocation: sourceLocation
        )
    }

    static func ids(_ reply: Reply) -> [UUID] {
        reply.array.compactMap { ($0["id"] as? String).flatMap(UUID.init(uuidString:)) }
    }

    static func branches(_ reply: Reply) -> Set<UUID> {
        Set(reply.array.compactMap { ($0["branch_id"] as? String).flatMap(UUID.init(uuidString:)) })
    }

    // MARK: - The database as its owner sees it

    /// Checks that go around the API, as the database owner.
    struct Owner: Sendable {
        let server: TestServer

        /// How many rows of `table` have this id.
        func count(_ table: String, id: UUID) async throws -> Int {
            try await server.withOwnerConnection { connection in
                try await PolicyMatrixTests.count("SELECT count(*) FROM \(unescaped: table) WHERE id = \(id)", on: connection)
            }
        }

        /// A text column of one row; nil when the row is gone.
        func text(_ column: String, of table: String, id: UUID) async throws -> String? {
            try await server.withOwnerConnection { connection in
                try await PolicyMatrixTests.strings("SELECT \(unescaped: column) FROM \(unescaped: table) WHERE id = \(id)", on: connection).first
            }
        }

        /// A user's role in a branch; nil when they are no member.
        func role(of user: UUID, in branch: UUID) async throws -> String? {
            try await server.withOwnerConnection { connection in
                try await PolicyMatrixTests.strings(
                    "SELECT role FROM branch_member WHERE branch_id = \(branch) AND user_id = \(user)",
                    on: connection
                ).first
            }
        }
    }

    // MARK: - SQL as a request role

    static let logger = Logger(label: "policy-matrix-tests")

    /// What one statement did: the number of rows it returned, or the SQLSTATE it failed with.
    enum SQLResult: Equatable, CustomStringConvertible {
        case rows(Int)
        case failed(String?)

        var description: String {
            switch self {
            case .rows(let count): "\(count) row(s)"
            case .failed(let state): "SQLSTATE \(state ?? "?")"
            }
        }
    }

    /// Runs `body` in a transaction as `role` with `realtime.user_id` set to `user`, and always rolls it back.
    static func inTransaction<Result>(
        role: String = "realtime_authenticated",
        as user: UUID?,
        on connection: PostgresConnection,
        _ body: (PostgresConnection) async throws -> Result
    ) async throws -> Result {
        try await connection.query("BEGIN", logger: logger)
        do {
            let userID = user?.pgText ?? ""
            try await connection.query("SELECT set_config('role', \(role), true), set_config('realtime.user_id', \(userID), true)", logger: logger)
            let result = try await body(connection)
            try await connection.query("ROLLBACK", logger: logger)
            return result
        } catch {
            try await connection.query("ROLLBACK", logger: logger)
            throw error
        }
    }

    /// Runs one statement as `user` in its own transaction, rolled back afterwards.
    static func run(
        _ query: PostgresQuery,
        role: String = "realtime_authenticated",
        as user: UUID?,
        on connection: PostgresConnection
    ) async throws -> SQLResult {
        do {
            return try await inTransaction(role: role, as: user, on: connection) { connection in
                .rows(try await connection.query(query, logger: logger).collect().count)
            }
        } catch let error as PSQLError {
            return .failed(error.serverInfo?[.sqlState])
        }
    }

    /// The single number a `SELECT count(*)` returns, as `user` (or as the owner when `role` is nil).
    static func count(
        _ query: PostgresQuery,
        role: String = "realtime_authenticated",
        as user: UUID?,
        on connection: PostgresConnection
    ) async throws -> Int {
        try await inTransaction(role: role, as: user, on: connection) { connection in
            try await count(query, on: connection)
        }
    }

    static func count(_ query: PostgresQuery, on connection: PostgresConnection) async throws -> Int {
        let rows = try await connection.query(query, logger: logger).collect()
        return try #require(rows.first).decode(Int.self)
    }

    static func strings(_ query: PostgresQuery, on connection: PostgresConnection) async throws -> [String] {
        var values: [String] = []
        for try await value in try await connection.query(query, logger: logger).decode(String.self) { values.append(value) }
        return values
    }
}

extension UUID {
    /// The canonical lower-case text of this id, as PostgreSQL prints it.
    fileprivate var pgText: String { uuidString.lowercased() }
}
