import Foundation

/// A cross-check only: matches the events of the server's feed (read back through `GET /realtime/v1/changes`) to the
/// writes that made them, to tell whether every acknowledged write reached the feed. What subscribers must receive is
/// never taken from here: it comes from the writes (``WriteLedger``).
///
/// A task has at most one write in flight, so its events come in the order of its writes: each `task` event is the
/// next write of that task (an insert shows as INSERT, an update or status change as UPDATE, a delete as DELETE), and
/// each `status_history` event belongs to the task's write just matched (the trigger's row for an insert or status
/// change; the cascade's DELETE for a delete).
struct FeedAttribution {
    /// Acknowledged writes that produced at least one event.
    var writesInFeed = 0
    /// Acknowledged writes that produced no event at all.
    var writesMissingFromFeed = 0
    /// Events that could not be matched to a write of their task, or whose operation did not fit the write.
    var unmatchedEvents = 0
    /// Events per kind of write, e.g. `status_change` → `task UPDATE` and `status_history INSERT`.
    var eventsPerWriteKind: [String: Int] = [:]

    init(events: [FeedEvent], writes: [WriteRecord]) {
        var queues: [UUID: [WriteRecord]] = [:]
        for write in writes where write.succeeded { queues[write.task, default: []].append(write) }
        for key in queues.keys { queues[key]?.sort { $0.sentMicroseconds < $1.sentMicroseconds } }
        var next: [UUID: Int] = [:]
        var current: [UUID: WriteRecord] = [:]
        var matchedWrites = Set<Int>()
        for event in events {
            let taskText = event.table == "task" ? (event.record.id ?? event.oldRecord.id) : (event.record.taskID ?? event.oldRecord.taskID)
            var write: WriteRecord?
            if let taskText, let task = UUID(uuidString: taskText) {
                if event.table == "task" {
                    let position = next[task, default: 0]
                    if let queue = queues[task], position < queue.count {
                        write = queue[position]
                        next[task] = position + 1
                        current[task] = queue[position]
                    }
                } else {
                    write = current[task]
                }
            }
            if let matched = write, Self.fits(event, matched.kind) {
                matchedWrites.insert(matched.number)
                eventsPerWriteKind["\(matched.kind.rawValue): \(event.table) \(event.event)", default: 0] += 1
            } else {
                unmatchedEvents += 1
            }
        }
        let acknowledged = writes.filter(\.succeeded)
        writesInFeed = acknowledged.filter { matchedWrites.contains($0.number) }.count
        writesMissingFromFeed = acknowledged.count - writesInFeed
    }

    private static func fits(_ event: FeedEvent, _ kind: WriteKind) -> Bool {
        switch (event.table, event.event, kind) {
        case ("task", "INSERT", .insert), ("task", "UPDATE", .update), ("task", "UPDATE", .statusChange), ("task", "DELETE", .delete): true
        case ("status_history", "INSERT", .insert), ("status_history", "INSERT", .statusChange), ("status_history", "DELETE", .delete): true
        default: false
        }
    }
}
