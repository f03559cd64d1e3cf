// The table map (issue 14, "one table registry"): the client writes where the server's GET /realtime/v1/tables says,
// reads that map once, lazily, retries it when it cannot be read without losing a write, and refuses (unsent) a
// write to a table the map does not have or cannot write.

import { test } from "node:test";
import assert from "node:assert/strict";
import { createMemoryStorage } from "../../Sources/Realtime/Web/Public/realtime.js";
import { FakeClock, TABLES, fakeServer, makeClient, settle, tablesAnswer, task, taskBackend, taskId, BRANCH, PLAN } from "./support.mjs";

/** The served map with `table`'s collection replaced by `path`. */
function mapWithPath(table, path) {
  return { tables: TABLES.tables.map((entry) => (entry.table === table ? { ...entry, path } : entry)) };
}

/** The requests sent to /rest/v1 other than reads. */
function restWrites(server) {
  return server.restRequests().filter((r) => r.method !== "GET" && r.path.startsWith("/rest/v1/"));
}

test("writes go to the collection the served map names, not one the client knows of", async () => {
  const clock = new FakeClock();
  const server = fakeServer();
  taskBackend(server, [task(taskId(1))], { clock });
  // This server keeps tasks under /rest/v1/work_items: only its map can tell the client so.
  server.tables = () => tablesAnswer(mapWithPath("task", "work_items"));
  const inner = server.rest;
  server.rest = (request) => {
    const match = /^\/rest\/v1\/work_items(\/.*)?$/.exec(request.path);
    return inner(match ? { ...request, path: `/rest/v1/tasks${match[1] ?? ""}` } : request);
  };
  const client = makeClient(server, clock);
  await client.loadPlan(PLAN);
  const id = client.newId();
  const inserted = await client.from("task").insert({ id, plan_id: PLAN, title: "New", starts_at: "2026-11-28T12:00:00Z", ends_at: "2026-11-28T13:00:00Z" });
  const updated = await client.from("task").update(taskId(1), { title: "Renamed" });
  const byCollection = await client.from("work_items").update(taskId(1), { status: "done" });
  assert.equal(inserted.error, null);
  assert.equal(updated.error, null);
  assert.equal(byCollection.error, null, "the served collection names the table too");
  assert.deepEqual(
    restWrites(server).map((r) => [r.method, r.path]),
    [
      ["POST", "/rest/v1/work_items"],
      ["PATCH", `/rest/v1/work_items/${taskId(1)}`],
      ["PATCH", `/rest/v1/work_items/${taskId(1)}`],
    ],
  );
  assert.equal(client.record("task", taskId(1)).data.status, "done", "a write named by the collection lands on the task");
  // The collection the client used to know is no name of any table on this server.
  const { error } = await client.from("tasks").update(taskId(1), { title: "Old name" });
  assert.equal(error.code, "unknown_table");
  assert.equal(restWrites(server).length, 3);
  client.close();
});

test("the map is read once, when the first write is sent, however many writes follow", async () => {
  const clock = new FakeClock();
  const server = fakeServer();
  const sent = [];
  server.rest = (request) => {
    if (request.method === "GET") return { status: 404, body: { error: { code: "not_found", message: "no" } } };
    sent.push([request.method, request.path]);
    return request.method === "DELETE" ? { status: 204 } : { status: 200, body: { ...request.body } };
  };
  const client = makeClient(server, clock);
  await settle();
  assert.equal(server.tablesRequests().length, 0, "nothing is read before a write needs it");
  const writes = [];
  for (let n = 1; n <= 5; n++) writes.push(client.from("task").update(taskId(n), { title: `t${n}` }));
  writes.push(client.from("client_cards").insert({ id: "c1", branch_id: BRANCH, name: "A client" }));
  writes.push(client.from("attachment").delete("a1"));
  const results = await Promise.all(writes);
  assert.ok(results.every((r) => r.error === null));
  for (let n = 6; n <= 8; n++) assert.equal((await client.from("tasks").update(taskId(n), { title: `t${n}` })).error, null);
  assert.equal(server.tablesRequests().length, 1);
  assert.equal(server.tablesRequests()[0].method, "GET");
  assert.equal(sent.length, 10);
  assert.deepEqual(sent[5], ["POST", "/rest/v1/client_cards"]);
  assert.deepEqual(sent[6], ["DELETE", "/rest/v1/attachments/a1"]);
  client.close();
});

test("writes made offline wait for the network; the map is read when the queue first sends", async () => {
  const clock = new FakeClock();
  const server = fakeServer();
  const backend = taskBackend(server, [task(taskId(1)), task(taskId(2))], { clock });
  const client = makeClient(server, clock);
  await client.loadPlan(PLAN);
  server.online = false;
  client.testNetwork.set(false);
  const first = client.from("task").update(taskId(1), { title: "offline 1" });
  // Named by its collection before the map is known: kept as given, moved to the table once the map says which.
  const second = client.from("tasks").update(taskId(2), { title: "offline 2" });
  await clock.advance(60_000);
  assert.equal(server.tablesRequests().length, 0, "no map asked while offline");
  assert.deepEqual(client.pendingWrites().map((w) => [w.table, w.id]), [["task", taskId(1)], ["tasks", taskId(2)]]);
  server.online = true;
  client.testNetwork.set(true);
  const results = await Promise.all([first, second]);
  assert.ok(results.every((r) => r.error === null));
  assert.equal(server.tablesRequests().length, 1);
  assert.equal(backend.rows.get(taskId(2)).title, "offline 2");
  assert.equal(client.record("task", taskId(2)).data.title, "offline 2");
  assert.equal(client.record("task", taskId(2)).pending, false);
  assert.deepEqual(client.records("tasks"), [], "no row is left under the collection's name");
  // Now that the map is known, a write named by its collection is kept under the table's name at once.
  client.testNetwork.set(false);
  client.from("tasks").update(taskId(1), { title: "known" });
  assert.deepEqual(client.pendingWrites().map((w) => w.table), ["task"]);
  assert.equal(client.record("task", taskId(1)).pending, true);
  client.close();
});

/** Two tabs' coordination: one lock and one message bus shared by the clients given `tabs()` (as in defects.test.mjs). */
function sharedTabs() {
  let held = Promise.resolve();
  const ports = new Set();
  return () => ({
    lock(name, fn) {
      const run = held.then(fn);
      held = run.catch(() => {});
      return run;
    },
    channel() {
      const port = {
        onmessage: null,
        postMessage(data) {
          for (const other of ports) if (other !== port) queueMicrotask(() => other.onmessage?.({ data: structuredClone(data) }));
        },
        close: () => ports.delete(port),
      };
      ports.add(port);
      return port;
    },
  });
}

test("a write named by its collection in one tab ends on the table's row in the other tab too", async () => {
  const clock = new FakeClock();
  const server = fakeServer();
  const backend = taskBackend(server, [task(taskId(1))], { clock });
  const storage = createMemoryStorage();
  const tabs = sharedTabs();
  let n = 0;
  const ids = (tag) => () => `${tag}-${String(++n).padStart(12, "0")}`;
  const a = makeClient(server, clock, { storage, tabs: tabs(), uuid: ids("aaaaaaaa-aaaa-4aaa-8aaa") });
  const b = makeClient(server, clock, { storage, tabs: tabs(), uuid: ids("bbbbbbbb-bbbb-4bbb-8bbb") });
  await a.loadPlan(PLAN);
  await b.loadPlan(PLAN);
  server.online = false;
  a.testNetwork.set(false);
  b.testNetwork.set(false);
  await settle();
  const write = a.from("tasks").update(taskId(1), { title: "From tab A" });
  await settle();
  assert.deepEqual(b.pendingWrites().map((w) => w.table), ["tasks"], "tab B holds it as it was named");
  server.online = true;
  b.testNetwork.set(true);
  await clock.advance(60_000);
  assert.equal((await write).error, null);
  assert.equal(server.restRequests("PATCH").length, 1);
  assert.equal(backend.rows.get(taskId(1)).title, "From tab A");
  for (const tab of [a, b]) {
    assert.deepEqual(tab.records("tasks"), [], "no row under the collection's name");
    assert.equal(tab.record("task", taskId(1)).data.title, "From tab A");
    assert.equal(tab.record("task", taskId(1)).pending, false);
    assert.equal(tab.pendingWrites().length, 0);
  }
  a.close();
  b.close();
});

test("a map that cannot be read is asked again; the write waits with its tries untouched and is delivered after", async () => {
  const clock = new FakeClock();
  const server = fakeServer();
  const backend = taskBackend(server, [task(taskId(1))], { clock });
  const failures = [
    () => ({ status: 503, body: { error: { code: "not_ready", message: "later" } } }),
    () => {
      throw new TypeError("connection reset");
    },
    () => ({ status: 200, body: { no: "map" } }),
  ];
  server.tables = () => (failures.length > 0 ? failures.shift()() : tablesAnswer());
  const client = makeClient(server, clock, { maxWriteAttempts: 2 });
  await client.loadPlan(PLAN);
  let settledWith = null;
  const write = client.from("task").update(taskId(1), { title: "Kept" });
  write.then((result) => (settledWith = result));
  await settle();
  assert.equal(server.tablesRequests().length, 1);
  assert.equal(restWrites(server).length, 0, "not sent without the map");
  assert.equal(settledWith, null);
  assert.deepEqual(client.pendingWrites().map((w) => [w.failed, w.attempts]), [[false, 0]]);
  assert.equal(client.record("task", taskId(1)).data.title, "Kept", "still shown while it waits");
  await clock.advance(60_000);
  const { data, error } = await write;
  assert.equal(error, null);
  assert.equal(data.title, "Kept");
  assert.equal(server.tablesRequests().length, 4, "asked again after each failure, then no more");
  assert.deepEqual(restWrites(server).map((r) => [r.method, r.path]), [["PATCH", `/rest/v1/tasks/${taskId(1)}`]]);
  assert.equal(backend.rows.get(taskId(1)).title, "Kept");
  assert.equal(client.pendingWrites().length, 0);
  client.close();
});

test("a write to a table the map does not have, or cannot write, is rolled back unsent with a clear code", async () => {
  const clock = new FakeClock();
  const server = fakeServer();
  const backend = taskBackend(server, [task(taskId(1))], { clock });
  const client = makeClient(server, clock);
  const errors = [];
  client.onError((error) => errors.push(error));
  await client.loadPlan(PLAN);
  const history = { id: "h1", task_id: taskId(1), to_status: "taken", changed_at: "2026-11-28T08:00:00+00:00", updated_at: "2026-11-28T08:00:00+00:00" };
  client.remember("status_history", [history]);

  const unknown = client.from("branch_member").insert({ id: "m1", branch_id: BRANCH });
  assert.equal(client.record("branch_member", "m1").pending, true, "optimistic first, as any write");
  const readOnly = client.from("status_history").update("h1", { to_status: "done" });
  assert.equal(client.record("status_history", "h1").data.to_status, "done");
  const valid = client.from("task").update(taskId(1), { title: "Still sent" });

  const a = await unknown;
  assert.deepEqual([a.data, a.error.kind, a.error.code, a.error.table, a.error.id], [null, "rejected", "unknown_table", "branch_member", "m1"]);
  const b = await readOnly;
  assert.deepEqual([b.data, b.error.kind, b.error.code, b.error.table], [null, "rejected", "read_only_table", "status_history"]);
  assert.equal((await valid).error, null, "the queue goes on after a refusal");

  assert.equal(client.record("branch_member", "m1"), null, "the insert is rolled back");
  assert.deepEqual(client.record("status_history", "h1").data, history, "the update is rolled back to the server's row");
  assert.equal(client.record("status_history", "h1").pending, false);
  assert.deepEqual(errors.map((e) => e.code), ["unknown_table", "read_only_table"]);
  assert.deepEqual(restWrites(server).map((r) => [r.method, r.path]), [["PATCH", `/rest/v1/tasks/${taskId(1)}`]], "nothing else went to /rest/v1");
  assert.equal(backend.rows.get(taskId(1)).title, "Still sent");
  assert.equal(client.pendingWrites().length, 0);
  assert.throws(() => client.from(""), /table's name/);
  assert.throws(() => client.from(undefined), /table's name/);
  client.close();
});
