import Foundation
import Testing

@testable import Realtime

/// The replication session's bookkeeping of the slot's position, without libpq: what it reports, and when.
@Suite struct SlotPositionTests {
    static let start = ContinuousClock.now

    static func change(_ index: Int) -> WALRowChange {
        WALRowChange(
            schema: "public", table: "task", operation: .update, columns: ["id", "title"], typeOIDs: [25, 25],
            newValues: ["\(index)", "v"], oldValues: ["\(index)", "old"])
    }

    static func transaction(end: UInt64, changes: Int = 1, firstIndex: Int = 0, complete: Bool = true) -> WALTransaction {
        var transaction = WALTransaction(
            xid: 1, commitLSN: end - 1, endLSN: complete ? end : 0, commitTime: Date(),
            changes: (0..<changes).map { change($0) })
        transaction.firstIndex = firstIndex
        transaction.isComplete = complete
        return transaction
    }

    @Test func neverReportsLessThanWhereTheSlotStood() {
        var position = SlotPosition(interval: .seconds(10), now: Self.start)
        position.started(confirmedFlushLSN: 500)
        #expect(position.reportableLSN(confirmedLSN: 0) == 500)
        #expect(position.reportableLSN(confirmedLSN: 700) == 700)
    }

    @Test func anIdlePositionIsReportedOnlyOnceEverythingDeliveredIsConfirmed() {
        var position = SlotPosition(interval: .seconds(10), now: Self.start)
        position.started(confirmedFlushLSN: 100)
        #expect(position.assembled(Self.transaction(end: 200)) == .deliver)
        // A keepalive at 300 after the delivered transaction: nothing below 300 is missing, but 200 is not confirmed.
        #expect(position.keepalive(walEnd: 300, replyRequested: false, inTransaction: false, confirmedLSN: 100) == .none)
        #expect(position.reportableLSN(confirmedLSN: 100) == 100)
        #expect(position.reportableLSN(confirmedLSN: 200) == 300)
    }

    @Test func aKeepaliveInsideATransactionDoesNotMoveTheIdlePosition() {
        var position = SlotPosition(interval: .seconds(10), now: Self.start)
        #expect(position.keepalive(walEnd: 900, replyRequested: false, inTransaction: true, confirmedLSN: 0) == .none)
        #expect(position.reportableLSN(confirmedLSN: 0) == 0)
        #expect(position.keepalive(walEnd: 950, replyRequested: true, inTransaction: false, confirmedLSN: 0) == .sendStatusUpdate(lsn: 950))
    }

    @Test func piecesAndEmptyTransactions() {
        var position = SlotPosition(interval: .seconds(10), now: Self.start)
        // A transaction without changes is not handed on: it only moves the idle position.
        #expect(position.assembled(Self.transaction(end: 400, changes: 0)) == .skip)
        #expect(position.reportableLSN(confirmedLSN: 0) == 400)
        // The pieces of a big one: only the last, complete, counts as delivered.
        #expect(position.assembled(Self.transaction(end: 600, changes: 0, firstIndex: 1000, complete: false)) == .deliver)
        #expect(position.assembled(Self.transaction(end: 600, changes: 3, complete: false)) == .deliver)
        #expect(position.lastDeliveredLSN == 0)
        #expect(position.assembled(Self.transaction(end: 600, changes: 3, firstIndex: 3)) == .deliver)
        #expect(position.lastDeliveredLSN == 600)
        #expect(position.reportableLSN(confirmedLSN: 0) == 0, "the idle 400 waits for the consumer to confirm 600")
        #expect(position.reportableLSN(confirmedLSN: 600) == 600)
    }

    @Test func statusUpdatesGoOutWhenAskedForOrDueAndAreRetriedWhenLibpqIsFull() {
        var position = SlotPosition(interval: .seconds(10), now: Self.start)
        position.started(confirmedFlushLSN: 50)
        #expect(position.turn(now: Self.start + .seconds(1), requested: false, confirmedLSN: 60) == .none)
        #expect(position.turn(now: Self.start + .seconds(1), requested: true, confirmedLSN: 60) == .sendStatusUpdate(lsn: 60))
        #expect(position.turn(now: Self.start + .seconds(10), requested: false, confirmedLSN: 60) == .sendStatusUpdate(lsn: 60))

        position.statusUpdateDeferred()
        #expect(position.turn(now: Self.start + .seconds(2), requested: false, confirmedLSN: 70) == .sendStatusUpdate(lsn: 70))
        let moved = position.statusUpdateSent(lsn: 70, now: Self.start + .seconds(2))
        #expect(moved)
        #expect(!position.statusUpdatePending)
        #expect(position.nextStatusUpdate == Self.start + .seconds(12))
        #expect(position.turn(now: Self.start + .seconds(11), requested: false, confirmedLSN: 70) == .none)
        let movedAgain = position.statusUpdateSent(lsn: 70, now: Self.start + .seconds(12))
        #expect(!movedAgain, "the same position again is not news")
    }
}
