import Foundation
import Logging
import PostgresNIO
import Synchronization
import Testing

@testable import Realtime

/// One file over 400 lines because every test shares one fixture (a database, a publication, a slot and the streams
/// it must clean up), kept beside them.
@Suite struct LogicalReplicationTests {
    /// A guard against a hang, not a speed target: a slot creation waits for the transactions running on the cluster,
    /// and with the whole suite in parallel it may wait behind those of twenty servers' start-ups.
    static let slotCreationBound = 90.0

    static let logger: Logger = {
        var logger = Logger(label: "realtime.tests.replication")
        logger.logLevel = .notice
        return logger
    }()

    // MARK: - Streaming from a real slot

    @Test func streamsCommittedTransactionsInCommitOrder() async throws {
        try await ReplicationFixture.with { fixture in
            let stream = fixture.makeStream()
            #expect(try await bounded("ensureSlot", seconds: Self.slotCreationBound) { try await stream.ensureSlot(nudge: TestCluster.nudge) })
            #expect(
                try await bounded("ensureSlot again", seconds: Self.slotCreationBound) { try await stream.ensureSlot(nudge: TestCluster.nudge) }
                    == false)
            let collector = TransactionCollector(stream.transactions())

            let firstXID = try await fixture.transaction([
                "INSERT INTO task (id, title, note, done) VALUES (1, 'first', NULL, false)",
                "INSERT INTO task (id, title, note, done) VALUES (2, 'second', 'it''s', true)",
                "UPDATE task SET title = 'first!', done = true WHERE id = 1",
                "DELETE FROM task WHERE id = 2",
            ])
            let secondXID = try await fixture.transaction(["INSERT INTO task (id, title) VALUES (3, 'third')"])

            let received = try await collector.waitFor(count: 2)
            try #require(received.count == 2)
            let first = received[0]
            let second = received[1]

            #expect(first.xid > 0)
            #expect(first.xid == firstXID)
            #expect(first.commitLSN > 0)
            #expect(first.endLSN > first.commitLSN)
            #expect(abs(first.commitTime.timeIntervalSinceNow) < 60)
            #expect(first.changes.map(\.operation) == [.insert, .insert, .update, .delete])
            for change in first.changes {
                #expect(change.schema == "public")
                #expect(change.table == "task")
                #expect(change.columns == ["id", "title", "note", "done"])
                #expect(change.typeOIDs == [23, 25, 25, 16])
            }
            #expect(first.changes[0].newValues == ["1", "first", nil, "f"])
            #expect(first.changes[0].oldValues == nil)
            #expect(first.changes[1].newValues == ["2", "second", "it's", "t"])
            #expect(first.changes[2].newValues == ["1", "first!", nil, "t"])
            #expect(first.changes[2].oldValues == ["1", "first", nil, "f"])
            #expect(first.changes[3].newValues == nil)
            #expect(first.changes[3].oldValues == ["2", "second", "it's", "t"])

            #expect(second.xid == secondXID)
            #expect(second.commitLSN > first.commitLSN)
            #expect(second.commitTime >= first.commitTime)
            #expect(second.changes.map(\.operation) == [.insert])
            #expect(second.changes.first?.newValues == ["3", "third", nil, "f"])
        }
    }

    @Test func unchangedToastedValuesComeFromTheOldRow() async throws {
        try await ReplicationFixture.with { fixture in
            let stream = fixture.makeStream()
            #expect(try await bounded("ensureSlot", seconds: Self.slotCreationBound) { try await stream.ensureSlot(nudge: TestCluster.nudge) })
            let collector = TransactionCollector(stream.transactions())
            // 16 000 characters of md5 text are stored out of line; an UPDATE that leaves them alone sends them as 'u'.
            _ = try await fixture.transaction([
                "INSERT INTO task (id, title, note) SELECT 1, 'big', string_agg(md5(i::text), '') FROM generate_series(1, 500) AS i"
            ])
            _ = try await fixture.transaction(["UPDATE task SET done = true WHERE id = 1"])
            let received = try await collector.waitFor(count: 2)
            try #require(received.count == 2)
            let note = try #require(received[0].changes.first?.newValues?[2])
            #expect(note.count == 16_000)
            let update = try #require(received[1].changes.first)
            #expect(update.newValues == ["1", "big", note, "t"])
            #expect(update.oldValues == ["1", "big", note, "f"])
        }
    }

    @Test func confirmedTransactionsAreNotReplayed() async throws {
        try await ReplicationFixture.with { fixture in
            let first = fixture.makeStream()
            #expect(try await bounded("ensureSlot", seconds: Self.slotCreationBound) { try await first.ensureSlot(nudge: TestCluster.nudge) })
            let initialFlush = try #require(try await fixture.slotState().confirmedFlush)

            let collector = TransactionCollector(first.transactions())
            let oldXID = try await fixture.transaction(["INSERT INTO task (id, title) VALUES (1, 'old')"])
            let old = try #require(try await collector.waitFor(count: 1).first)
            #expect(old.xid == oldXID)

            // The confirmation goes out at once, not only with the next periodic status update.
            first.confirm(old.endLSN)
            #expect(first.confirmedLSN == old.endLSN)
            try await waitUntil("confirmed_flush_lsn reaches the confirmed LSN") {
                try await fixture.slotState().confirmedFlush ?? 0 >= old.endLSN
            }
            #expect(try await fixture.slotState().confirmedFlush ?? 0 > initialFlush)

            first.stop()
            let ending = try await collector.waitUntilFinished()
            #expect(ending == nil)
            try await bounded("waitUntilClosed") { await first.waitUntilClosed() }
            try await fixture.waitUntilSlotIsReleased()

            // A new client on the same slot starts after the confirmed transaction.
            let second = fixture.makeStream()
            #expect(
                try await bounded("ensureSlot on an existing slot", seconds: Self.slotCreationBound) {
                    try await second.ensureSlot(nudge: TestCluster.nudge)
                } == false)
            let secondCollector = TransactionCollector(second.transactions())
            let newXID = try await fixture.transaction(["INSERT INTO task (id, title) VALUES (2, 'new')"])
            let replayed = try await secondCollector.waitFor(count: 1)
            #expect(replayed.map(\.xid) == [newXID])
            #expect(replayed.first?.changes.first?.newValues == ["2", "new", nil, "f"])
            #expect(replayed.first.map { $0.commitLSN > old.endLSN } == true)
        }
    }

    @Test func aSlotInUseFailsWithSQLState55006() async throws {
        try await ReplicationFixture.with { fixture in
            let owner = fixture.makeStream()
            #expect(try await bounded("ensureSlot", seconds: Self.slotCreationBound) { try await owner.ensureSlot(nudge: TestCluster.nudge) })
            let ownerCollector = TransactionCollector(owner.transactions())
            try await waitUntil("the slot is active") { try await fixture.slotState().active }

            let intruder = fixture.makeStream()
            let intruderCollector = TransactionCollector(intruder.transactions())
            let error = try await intruderCollector.waitUntilFinished()
            let replicationError = try #require(error as? ReplicationError)
            #expect(replicationError.sqlState == ReplicationError.slotInUse)
            #expect(replicationError.message.contains("is active"))
            try await bounded("the failed stream closes") { await intruder.waitUntilClosed() }

            // The owner is unaffected.
            _ = try await fixture.transaction(["INSERT INTO task (id, title) VALUES (1, 'still streaming')"])
            #expect(try await ownerCollector.waitFor(count: 1).count == 1)
        }
    }

    @Test func invalidNamesAreRejectedBeforeReachingSQL() async throws {
        let stream = LogicalReplicationStream(
            conninfo: "host=127.0.0.1",
            slot: "bad'slot",
            publication: "pub",
            logger: Self.logger
        )
        await #expect(throws: ReplicationError.self) { try await stream.ensureSlot(nudge: TestCluster.nudge) }
        let error = try await TransactionCollector(stream.transactions()).waitUntilFinished()
        #expect((error as? ReplicationError)?.message.contains("invalid slot name") == true)
        #expect(!LogicalReplicationStream.isValidName("Upper"))
        #expect(!LogicalReplicationStream.isValidName(""))
        #expect(LogicalReplicationStream.isValidName("slot_t_0123abcd"))
    }

    // MARK: - Helpers without a server

    @Test func conninfoQuotesValuesAndAsksForReplication() {
        let endpoint = DatabaseEndpoint(
            host: "127.0.0.1",
            port: 5433,
            username: "postgres",
            password: #"it's a \ secret"#,
            database: "realtime",
            tls: .require
        )
        #expect(
            LogicalReplicationStream.conninfo(for: endpoint, applicationName: "app")
                == #"host='127.0.0.1' port='5433' user='postgres' password='it\'s a \\ secret' dbname='realtime' sslmode='require' "#
                + #"replication='database' application_name='app' connect_timeout='10'"#
        )
        var withoutPassword = endpoint
        withoutPassword.password = nil
        withoutPassword.tls = .disable
        let conninfo = LogicalReplicationStream.conninfo(for: withoutPassword)
        #expect(!conninfo.contains("password"))
        #expect(conninfo.contains("sslmode='disable'"))
    }

    @Test func lsnTextRoundTrips() {
        #expect(LogicalReplicationStream.formatLSN(0x16_B374_D848) == "16/B374D848")
        #expect(LogicalReplicationStream.formatLSN(0) == "0/0")
        #expect(LogicalReplicationStream.parseLSN("16/B374D848") == 0x16_B374_D848)
        #expect(LogicalReplicationStream.parseLSN("0/0") == 0)
        #expect(LogicalReplicationStream.parseLSN("16B374D848") == nil)
        #expect(LogicalReplicationStream.parseLSN("x/1") == nil)
    }

    @Test func parsesKeepalivesAndXLogDataAndWritesStatusUpdates() throws {
        let keepalive = ByteWriter()
        keepalive.byte("k").uint64(0x1_0000_0010).uint64(1_000_000).uint8(1)
        #expect(
            try ReplicationProtocol.parse(keepalive.bytes)
                == .keepalive(walEnd: 0x1_0000_0010, sendTime: Date(timeIntervalSince1970: 946_684_801), replyRequested: true)
        )

        let data = ByteWriter()
        data.byte("w").uint64(5).uint64(9).uint64(0).byte("B")
        #expect(
            try ReplicationProtocol.parse(data.bytes)
                == .xLogData(start: 5, end: 9, sendTime: Date(timeIntervalSince1970: 946_684_800), payload: [UInt8(ascii: "B")])
        )
        #expect(throws: ReplicationError.self) { try ReplicationProtocol.parse([UInt8(ascii: "k"), 0, 1]) }

        let update = ReplicationProtocol.statusUpdate(lsn: 0x0102_0304_0506_0708, now: Date(timeIntervalSince1970: 946_684_802))
        let expected = ByteWriter()
        expected.byte("r").uint64(0x0102_0304_0506_0708).uint64(0x0102_0304_0506_0708).uint64(0x0102_0304_0506_0708)
            .uint64(2_000_000).uint8(0)
        #expect(update == expected.bytes)
    }

    // MARK: - PgOutputDecoder on hand-made bytes

    static let relationOID: UInt32 = 16_400

    /// A Relation message for `public.task (id int4 key, title text, note text)`.
    static func relationMessage() -> [UInt8] {
        let writer = ByteWriter()
        writer.byte("R").uint32(relationOID).string("public").string("task").byte("f").uint16(3)
        writer.uint8(1).string("id").uint32(23).uint32(UInt32(bitPattern: -1))
        writer.uint8(0).string("title").uint32(25).uint32(UInt32(bitPattern: -1))
        writer.uint8(0).string("note").uint32(25).uint32(UInt32(bitPattern: -1))
        return writer.bytes
    }

    static func decoderWithRelation() throws -> PgOutputDecoder {
        var decoder = PgOutputDecoder()
        _ = try decoder.decode(relationMessage())
        return decoder
    }

    static func change(
        _ operation: WALRowChange.Operation,
        new: [String?]?,
        old: [String?]?
    ) -> WALRowChange {
        WALRowChange(
            schema: "public",
            table: "task",
            operation: operation,
            columns: ["id", "title", "note"],
            typeOIDs: [23, 25, 25],
            newValues: new,
            oldValues: old
        )
    }

    @Test func decodesARelationAndAnInsertWithANullAndText() throws {
        var decoder = PgOutputDecoder()
        let relation = try decoder.decode(Self.relationMessage())
        let expectedRelation = PgOutputDecoder.Relation(
            oid: Self.relationOID,
            schema: "public",
            name: "task",
            replicaIdentity: UInt8(ascii: "f"),
            columns: [
                .init(flags: 1, name: "id", typeOID: 23, typeModifier: -1),
                .init(flags: 0, name: "title", typeOID: 25, typeModifier: -1),
                .init(flags: 0, name: "note", typeOID: 25, typeModifier: -1),
            ]
        )
        #expect(relation == .relation(expectedRelation))
        #expect(decoder.relations[Self.relationOID] == expectedRelation)

        let insert = ByteWriter()
        insert.byte("I").uint32(Self.relationOID).byte("N").uint16(3).text("7").text("héllo").byte("n")
        #expect(
            try decoder.decode(insert.bytes) == .change(Self.change(.insert, new: ["7", "héllo", nil], old: nil), unresolvedColumns: [])
        )
    }

    @Test func decodesAnUpdateWithItsOldTuple() throws {
        var decoder = try Self.decoderWithRelation()
        let full = ByteWriter()
        full.byte("U").uint32(Self.relationOID)
        full.byte("O").uint16(3).text("1").text("before").byte("n")
        full.byte("N").uint16(3).text("1").text("after").text("note")
        #expect(
            try decoder.decode(full.bytes)
                == .change(Self.change(.update, new: ["1", "after", "note"], old: ["1", "before", nil]), unresolvedColumns: [])
        )

        // 'K': only the key; the other columns come as nulls.
        let key = ByteWriter()
        key.byte("U").uint32(Self.relationOID)
        key.byte("K").uint16(3).text("1").byte("n").byte("n")
        key.byte("N").uint16(3).text("2").text("after").byte("n")
        #expect(
            try decoder.decode(key.bytes)
                == .change(Self.change(.update, new: ["2", "after", nil], old: ["1", nil, nil]), unresolvedColumns: [])
        )

        // Without an old tuple.
        let plain = ByteWriter()
        plain.byte("U").uint32(Self.relationOID).byte("N").uint16(3).text("1").text("x").byte("n")
        #expect(try decoder.decode(plain.bytes) == .change(Self.change(.update, new: ["1", "x", nil], old: nil), unresolvedColumns: []))
    }

    @Test func substitutesUnchangedToastedValuesFromTheOldTuple() throws {
        var decoder = try Self.decoderWithRelation()
        let withOld = ByteWriter()
        withOld.byte("U").uint32(Self.relationOID)
        withOld.byte("O").uint16(3).text("1").text("before").text("a long note")
        withOld.byte("N").uint16(3).text("1").text("after").byte("u")
        #expect(
            try decoder.decode(withOld.bytes)
                == .change(
                    Self.change(.update, new: ["1", "after", "a long note"], old: ["1", "before", "a long note"]),
                    unresolvedColumns: []
                )
        )

        let withoutOld = ByteWriter()
        withoutOld.byte("U").uint32(Self.relationOID).byte("N").uint16(3).text("1").text("after").byte("u")
        #expect(
            try decoder.decode(withoutOld.bytes)
                == .change(Self.change(.update, new: ["1", "after", nil], old: nil), unresolvedColumns: ["note"])
        )
    }

    @Test func decodesDeletesAndIgnorableMessages() throws {
        var decoder = try Self.decoderWithRelation()
        let delete = ByteWriter()
        delete.byte("D").uint32(Self.relationOID).byte("K").uint16(3).text("9").byte("n").byte("n")
        #expect(try decoder.decode(delete.bytes) == .change(Self.change(.delete, new: nil, old: ["9", nil, nil]), unresolvedColumns: []))

        let truncate = ByteWriter()
        truncate.byte("T").uint32(2).uint8(1).uint32(Self.relationOID).uint32(99)
        #expect(try decoder.decode(truncate.bytes) == .truncate(relations: ["public.task", "99"], options: 1))

        let origin = ByteWriter()
        origin.byte("O").uint64(42).string("node")
        #expect(try decoder.decode(origin.bytes) == .origin(lsn: 42, name: "node"))

        let type = ByteWriter()
        type.byte("Y").uint32(70_000).string("public").string("mood")
        #expect(try decoder.decode(type.bytes) == .type(oid: 70_000, schema: "public", name: "mood"))

        let message = ByteWriter()
        message.byte("M").uint8(1).uint64(7).string("prefix").uint32(2).uint8(0xAB).uint8(0xCD)
        #expect(try decoder.decode(message.bytes) == .message(transactional: true, lsn: 7, prefix: "prefix", content: [0xAB, 0xCD]))
    }

    @Test func rejectsMalformedMessages() throws {
        var decoder = try Self.decoderWithRelation()
        // Unknown relation.
        let unknown = ByteWriter()
        unknown.byte("I").uint32(1).byte("N").uint16(0)
        #expect(throws: ReplicationError.self) { try decoder.decode(unknown.bytes) }
        // Column count differs from the relation's.
        let short = ByteWriter()
        short.byte("I").uint32(Self.relationOID).byte("N").uint16(1).text("1")
        #expect(throws: ReplicationError.self) { try decoder.decode(short.bytes) }
        // Truncated text value.
        let truncated = ByteWriter()
        truncated.byte("I").uint32(Self.relationOID).byte("N").uint16(3).uint8(UInt8(ascii: "t")).uint32(10).uint8(1)
        #expect(throws: ReplicationError.self) { try decoder.decode(truncated.bytes) }
        // Unknown message type and trailing bytes.
        #expect(throws: ReplicationError.self) { try decoder.decode([UInt8(ascii: "Z")]) }
        let trailing = ByteWriter()
        trailing.byte("O").uint64(1).string("x").uint8(0)
        #expect(throws: ReplicationError.self) { try decoder.decode(trailing.bytes) }
    }

    @Test func assemblesTransactionsFromBeginChangesAndCommit() throws {
        var decoder = try Self.decoderWithRelation()
        var assembler = WALTransactionAssembler()
        let begin = ByteWriter()
        begin.byte("B").uint64(0x200).uint64(1_500_000).uint32(731)
        let insert = ByteWriter()
        insert.byte("I").uint32(Self.relationOID).byte("N").uint16(3).text("1").text("a").byte("n")
        let commit = ByteWriter()
        commit.byte("C").uint8(0).uint64(0x200).uint64(0x230).uint64(2_500_000)

        #expect(try assembler.consume(decoder.decode(begin.bytes)) == nil)
        #expect(assembler.isInTransaction)
        #expect(try assembler.consume(decoder.decode(Self.relationMessage())) == nil)
        #expect(try assembler.consume(decoder.decode(insert.bytes)) == nil)
        let transaction = try assembler.consume(decoder.decode(commit.bytes))
        #expect(!assembler.isInTransaction)
        #expect(
            transaction
                == WALTransaction(
                    xid: 731,
                    commitLSN: 0x200,
                    endLSN: 0x230,
                    commitTime: Date(timeIntervalSince1970: 946_684_802.5),
                    changes: [Self.change(.insert, new: ["1", "a", nil], old: nil)]
                )
        )
        #expect(throws: ReplicationError.self) { try assembler.consume(decoder.decode(commit.bytes)) }
        #expect(throws: ReplicationError.self) { try assembler.consume(decoder.decode(insert.bytes)) }
    }
}

// MARK: - Fixture

/// A fresh database with a `task` table (REPLICA IDENTITY FULL) in publication `pub_test`, a slot name unique to it, and
/// the streams a test made; `with` stops them, checks their connections are gone and drops the slot whatever happens.
private final class ReplicationFixture {
    let endpoint: DatabaseEndpoint
    let slot: String
    let publication = "pub_test"
    /// The application_name of this test's replication connections, to find them in pg_stat_replication.
    let applicationName: String
    private var streams: [LogicalReplicationStream] = []

    private init(endpoint: DatabaseEndpoint) {
        self.endpoint = endpoint
        self.slot = "slot_\(endpoint.database)"
        self.applicationName = "repl_\(endpoint.database)"
    }

    static func with(_ body: (ReplicationFixture) async throws -> Void) async throws {
        let fixture = ReplicationFixture(endpoint: try await TestCluster.freshDatabase())
        try await fixture.execute([
            "CREATE TABLE task (id integer PRIMARY KEY, title text NOT NULL, note text, done boolean NOT NULL DEFAULT false)",
            "ALTER TABLE task REPLICA IDENTITY FULL",
            "CREATE PUBLICATION \(fixture.publication) FOR TABLE task",
        ])
        var failure: (any Error)?
        do {
            try await body(fixture)
        } catch {
            failure = error
        }
        do {
            try await fixture.tearDown()
        } catch {
            failure = failure ?? error
        }
        if let failure { throw failure }
    }

    func makeStream() -> LogicalReplicationStream {
        let stream = LogicalReplicationStream(
            conninfo: LogicalReplicationStream.conninfo(for: endpoint, applicationName: applicationName),
            slot: slot,
            publication: publication,
            logger: LogicalReplicationTests.logger
        )
        streams.append(stream)
        return stream
    }

    /// Runs `statements` in one transaction; returns its xid.
    func transaction(_ statements: [String]) async throws -> UInt32 {
        try await TestCluster.withConnection(to: endpoint) { connection in
            try await connection.query("BEGIN", logger: LogicalReplicationTests.logger)
            for statement in statements {
                try await connection.query(PostgresQuery(unsafeSQL: statement), logger: LogicalReplicationTests.logger)
            }
            let rows = try await connection.query("SELECT txid_current()", logger: LogicalReplicationTests.logger)
            var xid: Int64 = 0
            for try await value in rows.decode(Int64.self) { xid = value }
            try await connection.query("COMMIT", logger: LogicalReplicationTests.logger)
            return UInt32(truncatingIfNeeded: xid)
        }
    }

    func execute(_ statements: [String]) async throws {
        try await TestCluster.withConnection(to: endpoint) { connection in
            for statement in statements {
                try await connection.query(PostgresQuery(unsafeSQL: statement), logger: LogicalReplicationTests.logger)
            }
        }
    }

    /// The slot's confirmed_flush_lsn and whether a connection streams from it.
    func slotState() async throws -> (confirmedFlush: UInt64?, active: Bool) {
        try await TestCluster.withConnection(to: endpoint) { connection in
            let rows = try await connection.query(
                "SELECT confirmed_flush_lsn::text, active FROM pg_replication_slots WHERE slot_name = \(slot)",
                logger: LogicalReplicationTests.logger
            )
            var state: (confirmedFlush: UInt64?, active: Bool) = (nil, false)
            for try await (flush, active) in rows.decode((String?, Bool).self) {
                state = (flush.flatMap(LogicalReplicationStream.parseLSN), active)
            }
            return state
        }
    }

    /// How many replication connections of this test pg_stat_replication lists.
    func replicationConnections() async throws -> Int {
        try await TestCluster.withConnection(to: endpoint) { connection in
            let rows = try await connection.query(
                "SELECT count(*)::int8 FROM pg_stat_replication WHERE application_name = \(applicationName)",
                logger: LogicalReplicationTests.logger
            )
            var count: Int64 = 0
            for try await value in rows.decode(Int64.self) { count = value }
            return Int(count)
        }
    }

    /// Waits until no server process streams from the slot (it lingers briefly after the client hangs up).
    func waitUntilSlotIsReleased() async throws {
        try await waitUntil("the slot is released and its walsender gone") {
            let active = try await slotState().active
            let connections = try await replicationConnections()
            return !active && connections == 0
        }
    }

    private func tearDown() async throws {
        for stream in streams { stream.stop() }
        for stream in streams {
            try await bounded("the stream's thread and connection end") { await stream.waitUntilClosed() }
        }
        try await waitUntilSlotIsReleased()
        #expect(try await replicationConnections() == 0)
        try await TestCluster.withConnection(to: endpoint) { connection in
            let rows = try await connection.query(
                "SELECT slot_name::text FROM pg_replication_slots WHERE slot_name = \(slot)",
                logger: LogicalReplicationTests.logger
            )
            var exists = false
            for try await _ in rows.decode(String.self) { exists = true }
            if exists {
                try await connection.query("SELECT pg_drop_replication_slot(\(slot))", logger: LogicalReplicationTests.logger)
            }
        }
    }
}

/// Consumes a transaction stream on a task of its own and keeps what arrives, so that tests can wait with a timeout.
private final class TransactionCollector: Sendable {
    private struct State {
        var transactions: [WALTransaction] = []
        var finished = false
        var error: (any Error)?
    }

    private let state = Mutex(State())

    init(_ stream: AsyncThrowingStream<WALTransaction, any Error>) {
        Task { [self] in
            do {
                for try await transaction in stream { state.withLock { $0.transactions.append(transaction) } }
                state.withLock { $0.finished = true }
            } catch {
                state.withLock {
                    $0.finished = true
                    $0.error = error
                }
            }
        }
    }

    /// How long a wait may take: the cluster is shared by the whole suite, and every walsender decodes all of its WAL,
    /// so under the full suite a transaction has taken more than 10 s to arrive (CI, `aSlotInUseFailsWithSQLState55006`).
    static let patience: Double = 30

    /// The first `count` transactions, once they arrived; fails after `seconds` or when the stream ends early.
    func waitFor(count: Int, seconds: Double = patience) async throws -> [WALTransaction] {
        try await waitUntil("\(count) transactions arrive", seconds: seconds) {
            let state = self.state.withLock { ($0.transactions.count, $0.finished, $0.error.map { "\($0)" }) }
            if state.1, state.0 < count {
                throw CollectorError(description: "the stream ended after \(state.0) transactions: \(state.2 ?? "no error")")
            }
            return state.0 >= count
        }
        return state.withLock { Array($0.transactions.prefix(count)) }
    }

    /// Waits until the stream ends; returns its error, if any.
    func waitUntilFinished(seconds: Double = patience) async throws -> (any Error)? {
        try await waitUntil("the stream finishes", seconds: seconds) { self.state.withLock { $0.finished } }
        return state.withLock { $0.error }
    }
}

private struct CollectorError: Error, CustomStringConvertible {
    var description: String
}

/// Polls `condition` every 20 ms until it holds; throws after `seconds`.
private func waitUntil(_ what: String, seconds: Double = TransactionCollector.patience, _ condition: () async throws -> Bool) async throws {
    let deadline = ContinuousClock.now + .milliseconds(Int(seconds * 1000))
    while try await !condition() {
        guard ContinuousClock.now < deadline else { throw TimeoutError(what: what, seconds: seconds) }
        try await Task.sleep(for: .milliseconds(20))
    }
}

/// Builds protocol messages: big-endian integers, NUL-terminated strings, TupleData text values.
private final class ByteWriter {
    private(set) var bytes: [UInt8] = []

    @discardableResult func byte(_ character: Unicode.Scalar) -> Self {
        bytes.append(UInt8(character.value))
        return self
    }

    @discardableResult func uint8(_ value: UInt8) -> Self {
        bytes.append(value)
        return self
    }

    @discardableResult func uint16(_ value: UInt16) -> Self { append(value.bigEndian) }
    @discardableResult func uint32(_ value: UInt32) -> Self { append(value.bigEndian) }
    @discardableResult func uint64(_ value: UInt64) -> Self { append(value.bigEndian) }

    @discardableResult func string(_ value: String) -> Self {
        bytes += Array(value.utf8) + [0]
        return self
    }

    /// A TupleData text value: 't', length, bytes.
    @discardableResult func text(_ value: String) -> Self {
        byte("t").uint32(UInt32(value.utf8.count))
        bytes += Array(value.utf8)
        return self
    }

    private func append<Integer: FixedWidthInteger>(_ value: Integer) -> Self {
        withUnsafeBytes(of: value) { bytes.append(contentsOf: $0) }
        return self
    }
}
