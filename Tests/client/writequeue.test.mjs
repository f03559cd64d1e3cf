// queue.js alone, against a fake row store and a fake REST call: what the queue tells the store, in which order it
// sends, and how it ends each write — without a client, a stream or a connection.

import { test } from "node:test";
import assert from "node:assert/strict";
import { WriteQueue, createMemoryStorage } from "../../Sources/Realtime/Web/Public/realtime.js";
import { FakeClock, settle, sequentialIds, tablesAnswer } from "./support.mjs";

/** A row store that records what the queue tells it. */
function fakeStore() {
  const calls = [];
  const rows = new Map();
  return {
    calls,
    rows,
    setPending(table, id, ops) {
      calls.push(["pending", id, ops.map((op) => op.kind)]);
    },
    settleWrite(table, id, ops, outcome = {}) {
      calls.push(["settle", id, ops.length, outcome.row ? "row" : outcome.deleted ? "deleted" : "none", Boolean(outcome.conflict)]);
      if (outcome.row) rows.set(id, outcome.row);
    },
    hasServerRow: (table, id) => rows.has(id),
    record: (table, id) => (rows.has(id) ? { data: rows.get(id) } : null),
  };
}

/**
 * A REST call answered by `answer(method, path, body)` (a `{status, body}` or a thrown error); the table map
 * (`GET /realtime/v1/tables`) is answered as the server does, and not counted in `sent`.
 */
function fakeRequest(answer) {
  const sent = [];
  const request = async (method, path, body, options = {}) => {
    const tables = method === "GET" && path === "/realtime/v1/tables";
    if (!tables) sent.push({ method, path, body, key: options.headers?.["Idempotency-Key"] });
    const { status, body: answerBody } = tables ? tablesAnswer() : await answer(method, path, body);
    const text = answerBody === undefined ? "" : JSON.stringify(answerBody);
    return { status, ok: status >= 200 && status < 300, headers: new Headers(), text: async () => text };
  };
  return { request, sent };
}

function makeQueue(store, request, options = {}) {
  const clock = options.clock ?? new FakeClock();
  return new WriteQueue({
    store,
    storage: createMemoryStorage(),
    request,
    clock,
    random: () => 0.5,
    uuid: sequentialIds(),
    ...options,
  });
}

test("a write is shown pending at once, sent with its key, and settled by the answer's row", async () => {
  const store = fakeStore();
  const { request, sent } = fakeRequest((method, path, body) => ({ status: 200, body: { id: "t1", ...body, updated_by: "me" } }));
  const queue = makeQueue(store, request);
  const result = queue.enqueue("update", "task", "t1", { title: "x" });
  assert.deepEqual(store.calls[0], ["pending", "t1", ["update"]]);
  assert.equal(queue.pending().length, 1);
  const { data, error } = await result;
  assert.equal(error, null);
  assert.equal(data.title, "x");
  assert.deepEqual(sent.map((r) => [r.method, r.path]), [["PATCH", "/rest/v1/tasks/t1"]]);
  assert.ok(sent[0].key);
  assert.deepEqual(store.calls.at(-1), ["settle", "t1", 0, "row", false]);
  assert.equal(queue.pending().length, 0);
  queue.close();
});

test("a refused insert takes the row's later writes with it; the store shows none of them", async () => {
  const store = fakeStore();
  const { request } = fakeRequest((method) =>
    method === "POST" ? { status: 422, body: { error: { code: "invalid", message: "no" } } } : { status: 200, body: {} },
  );
  const errors = [];
  const queue = makeQueue(store, request, { emitError: (e) => errors.push(e) });
  queue.blocked = true; // hold the writer so that both writes are queued before the first is sent
  const insert = queue.enqueue("insert", "task", "n1", { title: "new" });
  const update = queue.enqueue("update", "task", "n1", { title: "edited" });
  queue.resume();
  const [a, b] = await Promise.all([insert, update]);
  assert.equal(a.error.code, "invalid");
  assert.equal(b.error.code, "invalid");
  assert.deepEqual(store.calls.at(-1), ["settle", "n1", 0, "none", false]);
  assert.equal(errors.length, 1);
  assert.equal(queue.pending().length, 0);
  queue.close();
});

test("409 stale_update settles with the server's row, marked as a conflict", async () => {
  const store = fakeStore();
  const current = { id: "t1", title: "theirs", updated_at: "2026-11-28T09:00:00Z" };
  const { request } = fakeRequest(() => ({ status: 409, body: { error: { code: "stale_update", message: "newer" }, current } }));
  const queue = makeQueue(store, request);
  const { error } = await queue.enqueue("update", "task", "t1", { title: "mine" });
  assert.equal(error.code, "stale_update");
  assert.deepEqual(store.calls.at(-1), ["settle", "t1", 0, "row", true]);
  assert.equal(store.rows.get("t1").title, "theirs");
  queue.close();
});

test("writes are stamped with serverNow(), not the device clock", async () => {
  const store = fakeStore();
  const { request, sent } = fakeRequest((m, p, body) => ({ status: 200, body }));
  const clock = new FakeClock();
  const queue = makeQueue(store, request, { clock, serverNow: () => clock.now() + 60_000 });
  await queue.enqueue("update", "task", "t1", { title: "x" });
  assert.equal(Date.parse(sent[0].body.updated_at), clock.now() + 60_000);
  queue.close();
});

test("network failures wait without using up tries; 5xx answers use them up, then the write is failed", async () => {
  const store = fakeStore();
  let mode = "network";
  const { request, sent } = fakeRequest(() => {
    if (mode === "network") throw new TypeError("Failed to fetch");
    return { status: 502, body: { error: { code: "bad_gateway", message: "later" } } };
  });
  const clock = new FakeClock();
  const queue = makeQueue(store, request, { clock, maxWriteAttempts: 3 });
  queue.enqueue("update", "task", "t1", { title: "x" });
  await clock.advance(10 * 60_000);
  assert.ok(sent.length > 5, "still trying while the server cannot be reached");
  assert.equal(queue.pending()[0].failed, false);
  mode = "502";
  const before = sent.length;
  await clock.advance(10 * 60_000);
  assert.equal(sent.length - before, 3, "three tries, then it stops");
  assert.equal(queue.pending()[0].failed, true);
  assert.deepEqual(store.calls.at(-1), ["pending", "t1", ["update"]]);
  queue.close();
});

test("a queue loads the writes another queue stored, in order, and replays them", async () => {
  const storage = createMemoryStorage();
  const clock = new FakeClock();
  const offline = { isOnline: () => false };
  const first = makeQueue(fakeStore(), fakeRequest(() => ({ status: 200, body: {} })).request, { storage, clock, network: offline });
  first.enqueue("update", "task", "a", { title: "1" });
  clock.time += 5;
  first.enqueue("delete", "task", "b", null);
  await settle();
  first.close();
  const store = fakeStore();
  const { request, sent } = fakeRequest((method, path, body) => (method === "DELETE" ? { status: 204 } : { status: 200, body }));
  const second = makeQueue(store, request, { storage, clock });
  await second.ready;
  await clock.advance(1000);
  assert.deepEqual(sent.map((r) => [r.method, r.path]), [
    ["PATCH", "/rest/v1/tasks/a"],
    ["DELETE", "/rest/v1/tasks/b"],
  ]);
  assert.deepEqual(await storage.list("realtime:write:"), []);
  second.close();
});

test("with other tabs about, a write whose record is still being saved is sent, not taken for settled elsewhere", async () => {
  const memory = createMemoryStorage();
  // Storage as slow as IndexedDB can be: every call answers a few turns of the event loop later.
  const later = (fn) => (...args) => new Promise((resolve) => setTimeout(() => resolve(fn(...args)), 5));
  const storage = { kind: "slow", get: later(memory.get), set: later(memory.set), delete: later(memory.delete), list: later(memory.list) };
  const tabs = { lock: (name, fn) => fn(), channel: () => ({ postMessage() {}, close() {}, onmessage: null }) };
  const { request, sent } = fakeRequest((m, p, body) => ({ status: 201, body }));
  const queue = new WriteQueue({ store: fakeStore(), storage, tabs, request, clock: new FakeClock(), uuid: sequentialIds() });
  const { error } = await queue.enqueue("insert", "client_card", "c1", { name: "New client" });
  assert.equal(error, null);
  assert.deepEqual(sent.map((r) => [r.method, r.path]), [["POST", "/rest/v1/client_cards"]]);
  queue.close();
});
