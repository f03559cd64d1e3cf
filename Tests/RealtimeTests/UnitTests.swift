import Foundation
import HTTPTypes
import Logging
import Testing

@testable import Realtime

/// Pure parts that need no database: SQL splitting, query parsing, policy decisions, tokens, configuration.
@Suite struct SQLScriptTests {
    @Test func splitsAtTopLevelSemicolonsOnly() {
        let script = """
            -- a comment; with a semicolon
            CREATE TABLE a (x text DEFAULT 'a;b', "we;ird" int);
            /* block; /* nested; */ still comment; */ INSERT INTO a VALUES (E'it\\'s;', 1);
            CREATE FUNCTION f() RETURNS int LANGUAGE sql AS $$ SELECT 1; $$;
            DO $body$ BEGIN PERFORM 1; END $body$;
            SELECT 'don''t;' ;
            """
        let statements = SQLScript.statements(in: script)
        #expect(statements.count == 5)
        #expect(statements[0].hasSuffix(#"CREATE TABLE a (x text DEFAULT 'a;b', "we;ird" int)"#))
        #expect(statements[1].hasSuffix(#"INSERT INTO a VALUES (E'it\'s;', 1)"#))
        #expect(statements[2] == "CREATE FUNCTION f() RETURNS int LANGUAGE sql AS $$ SELECT 1; $$")
        #expect(statements[3] == "DO $body$ BEGIN PERFORM 1; END $body$")
        #expect(statements[4] == "SELECT 'don''t;'")
    }

    @Test func dropsEmptyAndCommentOnlyStatements() {
        #expect(SQLScript.statements(in: "  ;; -- nothing\n ; ").isEmpty)
    }

    @Test func theMigrationsSplitIntoStatements() throws {
        let files = try MigrationFile.load(from: TestServer.repositoryRoot + "/Migrations")
        #expect(files.map(\.version) == files.map(\.version).sorted())
        #expect(files.first?.version == 1)
        for file in files {
            let statements = SQLScript.statements(in: file.sql)
            #expect(!statements.isEmpty)
            #expect(statements.allSatisfy { !$0.hasSuffix(";") })
        }
    }
}

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

@Suite struct PolicyTests {
    let branch = UUID()
    let other = UUID()

    func decide(_ role: MemberRole?, _ access: Access, _ resource: Resource) -> PolicyDecision {
        let memberships = Memberships(role.map { [branch: $0] } ?? [other: .admin])
        return Policy.decide(.user(UUID()), memberships, access, resource, inBranch: branch)
    }

    @Test func viewersReadEditorsWriteAdminsManage() {
        for resource in [Resource.plan, .task, .clientCard, .attachment] {
            #expect(decide(.viewer, .read, resource) == .allowed)
            #expect(decide(.viewer, .write, resource) != .allowed)
            #expect(decide(.editor, .write, resource) == .allowed)
            #expect(decide(.admin, .write, resource) == .allowed)
            #expect(decide(nil, .read, resource) == .notVisible)
            #expect(decide(nil, .write, resource) == .notVisible)
        }
        #expect(decide(.editor, .write, .branchMember) != .allowed)
        #expect(decide(.admin, .write, .branchMember) == .allowed)
    }

    @Test func nobodyWritesStatusHistory() {
        #expect(decide(.admin, .write, .statusHistory) != .allowed)
        #expect(Policy.decide(.service(actingUser: nil), Memberships(), .write, .statusHistory, inBranch: branch) != .allowed)
        #expect(Policy.decide(.service(actingUser: nil), Memberships(), .write, .task, inBranch: branch) == .allowed)
    }

    @Test func creatingBranchesAndUsers() {
        #expect(Policy.mayCreateBranch(.service(actingUser: nil)))
        #expect(!Policy.mayCreateBranch(.user(UUID())))
        #expect(Policy.mayCreateUser(.user(UUID()), Memberships([branch: .admin])))
        #expect(!Policy.mayCreateUser(.user(UUID()), Memberships([branch: .editor])))
    }
}

@Suite struct TokenTests {
    @Test func roundTripsUsersAndTheServiceRole() async throws {
        let tokens = try await TokenAuthority(secret: "unit-test-secret-unit-test-secret")
        let user = UUID()
        let userToken = try await tokens.issue(subject: user.uuidString, role: .authenticated, lifetime: 60)
        #expect(try await tokens.principal(for: userToken) == .user(user))
        let serviceToken = try await tokens.issue(subject: "service", role: .serviceRole, lifetime: 60)
        #expect(try await tokens.principal(for: serviceToken) == .service(actingUser: nil))
    }

    @Test func refusesExpiredForeignAndNonUserTokens() async throws {
        let tokens = try await TokenAuthority(secret: "unit-test-secret-unit-test-secret")
        let expired = try await tokens.issue(subject: UUID().uuidString, role: .authenticated, lifetime: -1)
        await #expect(throws: TokenAuthority.Failure.expired) { try await tokens.principal(for: expired) }
        let foreign = try await TokenAuthority(secret: "other-secret-other-secret-other-secret").issue(
            subject: UUID().uuidString,
            role: .authenticated,
            lifetime: 60
        )
        await #expect(throws: TokenAuthority.Failure.badSignature) { try await tokens.principal(for: foreign) }
        let notAUser = try await tokens.issue(subject: "bob", role: .authenticated, lifetime: 60)
        await #expect(throws: TokenAuthority.Failure.self) { try await tokens.principal(for: notAUser) }
    }
}

@Suite struct ConfigurationTests {
    @Test func defaultsWorkWithNoSetup() throws {
        let configuration = try Configuration.fromEnvironment([:])
        #expect(configuration.host == "127.0.0.1")
        #expect(configuration.port == 8080)
        #expect(configuration.databaseURL == nil)
        #expect(configuration.dataDirectory == ".realtime")
        #expect(configuration.maxBodyBytes == 262_144)
        #expect(configuration.seedDemo)
    }

    @Test func readsEnvironmentAndRejectsNonsense() throws {
        let configuration = try Configuration.fromEnvironment([
            "REALTIME_PORT": "9000", "REALTIME_LOG_LEVEL": "debug", "DATABASE_URL": "postgres://u:p@db:5433/app", "REALTIME_NO_DEMO": "1",
        ])
        #expect(configuration.port == 9000)
        #expect(configuration.logLevel == .debug)
        #expect(configuration.databaseURL == "postgres://u:p@db:5433/app")
        #expect(!configuration.seedDemo)
        #expect(throws: ConfigurationError.self) { try Configuration.fromEnvironment(["REALTIME_PORT": "eighty"]) }
        #expect(throws: ConfigurationError.self) { try Configuration.fromEnvironment(["REALTIME_LOG_LEVEL": "loud"]) }
    }

    @Test func parsesDatabaseURLs() throws {
        let endpoint = try DatabaseEndpoint(url: "postgresql://app%40x:s%3Dcret@db.local:6543/plans?sslmode=require")
        #expect(endpoint == DatabaseEndpoint(host: "db.local", port: 6543, username: "app@x", password: "s=cret", database: "plans", tls: .require))
        #expect(throws: DatabaseURLError.self) { try DatabaseEndpoint(url: "mysql://u@h/db") }
        #expect(throws: DatabaseURLError.self) { try DatabaseEndpoint(url: "postgres://h/db") }
    }
}

@Suite struct SecretTests {
    @Test func shortSecretsAreRefused() async {
        await #expect(throws: ConfigurationError.self) { try await TokenAuthority(secret: "too-short") }
    }

    @Test func aGeneratedSecretIsKeptReadableByItsOwnerOnlyAndReused() throws {
        let path = TestCluster.makeScratchDirectory() + "/data/jwt-secret"
        let secret = try SecretFile.loadOrCreate(at: path)
        #expect(secret.count >= 64, "48 random bytes, base64url")
        let mode = try #require(try FileManager.default.attributesOfItem(atPath: path)[.posixPermissions] as? Int)
        #expect(mode & 0o777 == 0o600, "mode \(String(mode, radix: 8))")
        #expect(try SecretFile.loadOrCreate(at: path) == secret, "the same secret on the next start")
        #expect(try SecretFile.loadOrCreate(at: TestCluster.makeScratchDirectory() + "/other") != secret)
    }
}
