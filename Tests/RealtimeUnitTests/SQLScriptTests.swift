import Foundation
import HTTPTypes
import Logging
import Testing

@testable import Realtime

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
        let files = try MigrationFile.load(from: RepositoryFiles.root + "/Migrations")
        #expect(files.map(\.version) == files.map(\.version).sorted())
        #expect(files.first?.version == 1)
        for file in files {
            let statements = SQLScript.statements(in: file.sql)
            #expect(!statements.isEmpty)
            #expect(statements.allSatisfy { !$0.hasSuffix(";") })
        }
    }
}
