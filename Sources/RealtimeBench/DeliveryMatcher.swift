/// Checks every realtime subscriber's frames against the events its channel must carry, as the ``WriteLedger`` worked
/// them out from the acknowledged writes, matching each frame to an event by its content: the task it names, the kind
/// of change, and the title and status it shows.
///
/// - **delivered**: a frame that fits an expected event not yet matched for this subscriber;
/// - **duplicated**: the same version of a row (same task, kind and `updated_at`, or same history row) again;
/// - **misdelivered**: a frame of a task whose plan the subscriber may not see;
/// - **unmatched**: a frame that fits no acknowledged write (another row, a refused write, wrong content);
/// - **out of order**: a frame of an earlier write of its task than one already received;
/// - **withheld**: events of acknowledged writes the subscriber may not see; **withheld correctly**: those of them
///   that did not arrive.
///
/// Frames of a task whose last write ended without an answer (or with a 5xx) that fit no acknowledged write are
/// counted as `of_unknown_writes`: the write may have been committed.
struct DeliveryMatcher {
    let ledger: WriteLedger
    /// Frames with a sequence at or below this are of the setup (they were logged before the measurement began).
    let startSequence: Int64
    /// Subscribers that never got an answer (connect failures), counted into the check.
    let failedToConnect: Int

    struct Result {
        var check: DeliveryCheck
        var sendToReceipt: LatencySummary
        var commitToReceipt: LatencySummary
        var acknowledgementToReceipt: LatencySummary
        var receivedBeforeAcknowledgement: Int
    }

    func verify(_ outcomes: [SubscriberOutcome]) -> Result {
        var check = DeliveryCheck()
        check.subscribersFailed = failedToConnect
        var send = LatencyRecorder()
        var commit = LatencyRecorder()
        var acknowledgement = LatencyRecorder()
        var frameBytes = 0
        var frames = 0
        // Which subscriber matched each expected event, and the latest write of each task it received: no reset needed.
        var matchedBy = [Int32](repeating: -1, count: ledger.expected.count)
        var latestWriteOwner = [Int32](repeating: -1, count: ledger.planOfTask.count)
        var latestWrite = [Int32](repeating: -1, count: ledger.planOfTask.count)
        for (number, outcome) in outcomes.enumerated() {
            let me = Int32(number)
            let target = outcome.target
            guard check.admit(outcome), let scope = target.scope else { continue }
            check.subscribersByKind[target.kind, default: 0] += 1
            let expected = ledger.expectedCount(scope)
            check.expected += expected
            check.withheld += ledger.total - expected
            var seen = Set<UInt64>()
            seen.reserveCapacity(outcome.receipts.count)
            var delivered = 0
            for receipt in outcome.receipts {
                guard receipt.sequence > startSequence else {
                    check.beforeStart += 1
                    continue
                }
                let facts = receipt.facts
                let task = Int(facts.task)
                guard facts.kind != .unknown, task >= 0, task < ledger.planOfTask.count, ledger.planOfTask[task] >= 0 else {
                    check.unmatched += 1
                    continue
                }
                guard ledger.sees(scope, plan: Int(ledger.planOfTask[task])) else {
                    check.misdelivered += 1
                    continue
                }
                guard seen.insert(Self.versionKey(facts)).inserted else {
                    check.duplicated += 1
                    continue
                }
                guard let slot = ledger.ranges[task].first(where: { matchedBy[$0] != me && WriteLedger.fits(facts, ledger.expected[$0]) })
                else {
                    if ledger.uncertain.contains(task) { check.ofUnknownWrites += 1 } else { check.unmatched += 1 }
                    continue
                }
                matchedBy[slot] = me
                let writeIndex = ledger.expected[slot].write
                if latestWriteOwner[task] == me, writeIndex < latestWrite[task] {
                    check.outOfOrder += 1
                } else {
                    latestWriteOwner[task] = me
                    latestWrite[task] = writeIndex
                }
                delivered += 1
                let write = ledger.writes[Int(writeIndex)]
                send.record(microseconds: receipt.microseconds - write.sentMicroseconds)
                acknowledgement.record(microseconds: receipt.microseconds - write.acknowledgedMicroseconds)
                if facts.commitMicroseconds > 0 { commit.record(microseconds: receipt.microseconds - facts.commitMicroseconds) }
                check.firstReceiptMicroseconds = min(check.firstReceiptMicroseconds ?? .max, receipt.microseconds)
                check.lastReceiptMicroseconds = max(check.lastReceiptMicroseconds ?? .min, receipt.microseconds)
            }
            check.delivered += delivered
            frames += delivered
            frameBytes += outcome.bodyBytes
        }
        check.missing = check.expected - check.delivered
        check.withheldCorrectly = max(0, check.withheld - check.misdelivered)
        check.averageFrameBytes = frames == 0 ? 0 : Double(frameBytes) / Double(frames)
        return Result(
            check: check,
            sendToReceipt: LatencySummary(send.histogram),
            commitToReceipt: LatencySummary(commit.histogram),
            acknowledgementToReceipt: LatencySummary(acknowledgement.histogram),
            receivedBeforeAcknowledgement: acknowledgement.negativeSamples
        )
    }

    /// One version of one row: a task's kind of change and `updated_at`, or a history row's kind of change and id.
    private static func versionKey(_ facts: ChangeFacts) -> UInt64 {
        var key = facts.identity &* 0x9E37_79B9_7F4A_7C15
        key ^= UInt64(UInt32(bitPattern: facts.task)) << 8 | UInt64(facts.kind.rawValue)
        return key
    }
}
