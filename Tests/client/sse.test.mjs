// SSE frame parsing: the server's frames, cut into chunks anywhere, with every line ending the spec allows.

import { test } from "node:test";
import assert from "node:assert/strict";
import { SSEParser, parseSSE, cursorSequence, timeKey, tokenSubject, matchesFilter } from "../../Sources/Realtime/Web/Public/realtime.js";
import { token, ME } from "./support.mjs";

const SERVER_TEXT =
  "retry: 3187\n\n" +
  'id: 17\nevent: postgres_changes\ndata: {"type":"postgres_changes","table":"task","event":"UPDATE","record":{"id":"a"}}\n\n' +
  ": keepalive\n\n" +
  'event: presence\ndata: {"type":"presence","event":"sync","presences":[]}\n\n' +
  'event: token_expired\ndata: {"type":"token_expired","reason":"The token has expired."}\n\n';

test("parses the server's frames: id, event, data; comments and retry are not frames", () => {
  const frames = parseSSE(SERVER_TEXT);
  assert.deepEqual(
    frames.map((f) => [f.event, f.id]),
    [
      ["postgres_changes", "17"],
      ["presence", undefined],
      ["token_expired", undefined],
    ],
  );
  assert.equal(JSON.parse(frames[0].data).record.id, "a");
  assert.equal(JSON.parse(frames[2].data).reason, "The token has expired.");
});

test("gives the same frames however the text is cut into chunks", () => {
  const whole = parseSSE(SERVER_TEXT);
  for (const size of [1, 2, 3, 7, 16, 64]) {
    const parser = new SSEParser();
    const frames = [];
    for (let i = 0; i < SERVER_TEXT.length; i += size) frames.push(...parser.push(SERVER_TEXT.slice(i, i + size)));
    assert.deepEqual(frames, whole, `chunks of ${size}`);
  }
});

test("accepts CRLF and CR line endings, even with CRLF split across chunks", () => {
  const crlf = SERVER_TEXT.replace(/\n/g, "\r\n");
  const cr = SERVER_TEXT.replace(/\n/g, "\r");
  assert.deepEqual(parseSSE(crlf), parseSSE(SERVER_TEXT));
  assert.deepEqual(parseSSE(cr), parseSSE(SERVER_TEXT));
  const parser = new SSEParser();
  const frames = [...parser.push("event: a\r\ndata: 1\r"), ...parser.push("\n\r"), ...parser.push("\n")];
  assert.deepEqual(frames, [{ event: "a", data: "1", id: undefined }]);
});

test("joins multi-line data, defaults the event to message, strips one leading space only", () => {
  const [frame] = parseSSE("data:first\ndata:  second\n\n");
  assert.deepEqual(frame, { event: "message", data: "first\n second", id: undefined });
});

test("keeps the last event id and retry; a frame without data is not dispatched", () => {
  const parser = new SSEParser();
  assert.deepEqual(parser.push("id: 5\n\nretry: 2500\n\n"), []);
  assert.equal(parser.lastEventId, "5");
  assert.equal(parser.retry, 2500);
  const [frame] = parser.push("data: x\n\n");
  assert.equal(frame.id, undefined, "a frame's own id only when it has an id line");
  assert.equal(parser.lastEventId, "5");
});

test("holds an unfinished frame until its blank line arrives", () => {
  const parser = new SSEParser();
  assert.deepEqual(parser.push("id: 9\nevent: postgres_changes\ndata: {}"), []);
  assert.deepEqual(parser.push("\n"), []);
  assert.deepEqual(parser.push("\n"), [{ event: "postgres_changes", data: "{}", id: "9" }]);
});

test("helpers: cursor sequence, microsecond time keys, token subject, stream filters", () => {
  assert.equal(cursorSequence("17"), 17);
  assert.equal(cursorSequence("1234~100:105:101,103"), 1234);
  assert.equal(cursorSequence(null), -1);
  assert.ok(timeKey("2026-11-28T08:21:21.123457+00:00") > timeKey("2026-11-28T08:21:21.123456+00:00"));
  assert.equal(timeKey("2026-11-28T08:21:21.5Z"), timeKey("2026-11-28T09:21:21.500000+01:00"));
  assert.equal(tokenSubject(token()), ME);
  assert.equal(tokenSubject("garbage"), null);
  const row = { status: "done", task_id: "x", client_card_id: null, byte_size: 10 };
  assert.ok(matchesFilter(row, "status=eq.done"));
  assert.ok(matchesFilter(row, "status=in.(taken,done)"));
  assert.ok(!matchesFilter(row, "status=not.in.(taken,done)"));
  assert.ok(matchesFilter(row, "client_card_id=is.null"));
  assert.ok(matchesFilter(row, "byte_size=gt.9"));
  assert.ok(!matchesFilter(row, "byte_size=lt.10"));
});
