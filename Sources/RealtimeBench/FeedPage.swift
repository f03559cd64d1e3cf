import Foundation
import NIOCore
import NIOHTTP1

/// One page of `GET /realtime/v1/changes`: the events and the cursor to continue from.
struct FeedPage: Decodable {
    var events: [FeedEvent]
    var cursor: String
}

/// One event as a poll returns it (the same JSON as a stream's `data:` line, with its `id` first).
struct FeedEvent: Decodable {
    var id: String
    var table: String
    var event: String
    var commitTimestamp: String
    var channels: [String]
    var record: RowKeys
    var oldRecord: RowKeys

    enum CodingKeys: String, CodingKey {
        case id, table, event, channels, record
        case commitTimestamp = "commit_timestamp"
        case oldRecord = "old_record"
    }

    /// The event-log sequence number (the SSE `id`).
    var sequence: Int64? { Int64(id.split(separator: "~").first ?? "") }
}

/// The columns of a row the load tool uses to tell which write an event came from.
struct RowKeys: Decodable {
    var id: String?
    var planID: String?
    var taskID: String?
    var title: String?

    enum CodingKeys: String, CodingKey {
        case id, title
        case planID = "plan_id"
        case taskID = "task_id"
    }
}

/// Reads the event log through the polling endpoint as the service role.
struct FeedReader: Sendable {
    let rest: RestClient
    /// Events per page (the endpoint's maximum).
    static let pageSize = 1000

    /// Every event after `after` on `channels` (at most 100 per poll, so several polls for more), in sequence order,
    /// with the given `table=` option.
    func events(channels: [String], after: Int64, tables: String? = nil) async throws -> [FeedEvent] {
        var all: [FeedEvent] = []
        for start in stride(from: 0, to: channels.count, by: 100) {
            let chunk = channels[start..<min(start + 100, channels.count)]
            var query = chunk.map { "channel=\($0)" }.joined(separator: "&")
            if let tables { query += "&table=\(tables)" }
            var cursor = String(after)
            while true {
                let page = try await page("/realtime/v1/changes?\(query)&after=\(cursor)&limit=\(Self.pageSize)")
                all.append(contentsOf: page.events)
                if page.events.count < Self.pageSize || page.cursor == cursor { break }
                cursor = page.cursor
            }
        }
        all.sort { ($0.sequence ?? 0) < ($1.sequence ?? 0) }
        return all
    }

    /// One poll, optionally waiting (long poll) for something new.
    func page(_ pathAndQuery: String) async throws -> FeedPage {
        let answer = try await rest.expectSuccess(.GET, pathAndQuery)
        return try JSONDecoder().decode(FeedPage.self, from: Data(answer.body.readableBytesView))
    }
}
