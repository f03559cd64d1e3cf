// The offline queue: writes made offline show as pending, survive a reload (the storage), and replay in order
// after reconnecting, each with its own Idempotency-Key, so that a replay never writes twice.

import { test } from "node:test";
import assert from "node:assert/strict";
import { createMemoryStorage, createIndexedDBStorage } from "../../Sources/Realtime/Web/Public/realtime.js";
import { FakeClock, fakeServer, makeClient, settle, task, taskId, taskBackend, PLAN } from "./support.mjs";

const NEW_TASK = { plan_id: PLAN, title: "Made offline", starts_at: "2026-11-28T15:00:00Z", ends_at: "2026-11-28T16:00:00Z" };

/** Goes offline (network and server), writes three edits and an insert; returns what it made. */
async function writeOffline(client, server, clock) {
  server.online = false;
  client.testNetwork.set(false);
  await settle();
  const results = [];
  results.push(client.from("task").update(taskId(1), { title: "one" }));
  clock.time += 1000;
  results.push(client.from("task").update(taskId(2), { status: "done" }));
  clock.time += 1000;
  results.push(client.from("task").update(taskId(3), { title: "three" }));
  clock.time += 1000;
  const newId = client.newId();
  results.push(client.from("task").insert({ ...NEW_TASK, id: newId }));
  await settle();
  return { results, newId };
}

test("offline writes show as pending, are kept in order, and replay in that order with Idempotency-Keys", async () => {
  const clock = new FakeClock();
  const server = fakeServer();
  const backend = taskBackend(server, [task(taskId(1)), task(taskId(2)), task(taskId(3))], { clock });
  const client = makeClient(server, clock);
  await client.loadPlan(PLAN);
  client.channel(`plan:${PLAN}`).subscribe();
  await settle();
  const queued = [];
  client.onQueue((writes) => queued.push(writes.length));

  const { results, newId } = await writeOffline(client, server, clock);
  assert.equal(client.status, "offline");
  for (const id of [taskId(1), taskId(2), taskId(3), newId]) assert.equal(client.record("task", id).pending, true, id);
  assert.equal(client.record("task", taskId(1)).data.title, "one");
  assert.deepEqual(
    client.pendingWrites().map((w) => [w.kind, w.id, w.pending]),
    [
      ["update", taskId(1), true],
      ["update", taskId(2), true],
      ["update", taskId(3), true],
      ["insert", newId, true],
    ],
  );
  const sentWhileOffline = server.restRequests().filter((r) => r.method !== "GET").length;

  server.online = true;
  client.testNetwork.set(true);
  const settled = await Promise.all(results);
  assert.ok(settled.every((r) => r.error === null));

  const replayed = server.restRequests().filter((r) => r.method !== "GET").slice(sentWhileOffline);
  const succeeded = replayed.filter((r, i, all) => all.findIndex((o) => o.headers["idempotency-key"] === r.headers["idempotency-key"]) === i);
  assert.deepEqual(
    succeeded.map((r) => [r.method, r.path]),
    [
      ["PATCH", `/rest/v1/tasks/${taskId(1)}`],
      ["PATCH", `/rest/v1/tasks/${taskId(2)}`],
      ["PATCH", `/rest/v1/tasks/${taskId(3)}`],
      ["POST", "/rest/v1/tasks"],
    ],
  );
  const keys = succeeded.map((r) => r.headers["idempotency-key"]);
  assert.equal(new Set(keys).size, 4, "one key per write");
  assert.ok(keys.every((key) => typeof key === "string" && key.length > 0));
  // The edits keep the time they were made, so that last-write-wins compares edit times.
  const times = succeeded.slice(0, 3).map((r) => Date.parse(r.body.updated_at));
  assert.deepEqual(times, [...times].sort((a, b) => a - b));
  assert.equal(times[1] - times[0], 1000);
  for (const id of [taskId(1), taskId(2), taskId(3), newId]) assert.equal(client.record("task", id).pending, false);
  assert.equal(backend.rows.get(taskId(2)).status, "done");
  assert.equal(client.pendingWrites().length, 0);
  assert.equal(queued.at(-1), 0);
  client.close();
});

test("a write that cannot reach the server keeps its place: later ones wait behind it", async () => {
  const clock = new FakeClock();
  const server = fakeServer();
  taskBackend(server, [task(taskId(1)), task(taskId(2))], { clock });
  const client = makeClient(server, clock);
  await client.loadPlan(PLAN);
  let failures = 2;
  const inner = server.rest;
  server.rest = (request) => {
    if (request.method === "PATCH" && request.path.endsWith(taskId(1)) && failures > 0) {
      failures--;
      return { status: 503, body: { error: { code: "not_ready", message: "later" } } };
    }
    return inner(request);
  };
  const first = client.from("task").update(taskId(1), { title: "first" });
  const second = client.from("task").update(taskId(2), { title: "second" });
  await settle();
  assert.deepEqual(
    server.restRequests("PATCH").map((r) => r.path.slice(-1)),
    ["1"],
    "the second write waits",
  );
  await clock.advance(60_000);
  await Promise.all([first, second]);
  assert.deepEqual(
    server.restRequests("PATCH").map((r) => r.path.slice(-1)),
    ["1", "1", "1", "2"],
  );
  const keys = server.restRequests("PATCH").slice(0, 3).map((r) => r.headers["idempotency-key"]);
  assert.equal(new Set(keys).size, 1, "a retried write keeps its Idempotency-Key");
  client.close();
});

test("the queue survives a reload: a new client with the same storage shows the writes as pending and replays them", async () => {
  const clock = new FakeClock();
  const server = fakeServer();
  const backend = taskBackend(server, [task(taskId(1)), task(taskId(2)), task(taskId(3))], { clock });
  const storage = createMemoryStorage();
  const before = makeClient(server, clock, { storage });
  await before.loadPlan(PLAN);
  const { newId } = await writeOffline(before, server, clock);
  const keys = before.pendingWrites().map((w) => w.key);
  before.close();
  await settle();

  // The page reloads, still offline: the queue comes back from storage before anything is sent.
  const after = makeClient(server, clock, { storage, uuid: () => "ffffffff-ffff-4fff-8fff-ffffffffffff" });
  after.testNetwork.set(false);
  await after.ready;
  assert.deepEqual(after.pendingWrites().map((w) => w.key), keys);
  await after.loadPlan(PLAN).catch(() => {});
  server.online = true;
  await after.loadPlan(PLAN);
  assert.equal(after.record("task", taskId(1)).data.title, "one", "pending writes show on top of the snapshot");
  assert.equal(after.record("task", taskId(1)).pending, true);
  assert.equal(after.record("task", newId).pending, true);

  const postsBefore = server.restRequests("POST").length;
  after.testNetwork.set(true);
  await clock.advance(60_000);
  assert.equal(after.pendingWrites().length, 0);
  assert.equal(backend.rows.get(taskId(1)).title, "one");
  assert.equal(backend.rows.get(taskId(3)).title, "three");
  assert.equal([...backend.rows.values()].filter((r) => r.title === "Made offline").length, 1);
  const posts = server.restRequests("POST").slice(postsBefore);
  assert.deepEqual(posts.map((r) => r.headers["idempotency-key"]), [keys[3]], "replayed with the key it was made with");
  after.close();
});

test("a replayed insert whose first answer was lost is answered by its Idempotency-Key: still one row", async () => {
  const clock = new FakeClock();
  const server = fakeServer();
  const backend = taskBackend(server, [task(taskId(1))], { clock });
  const client = makeClient(server, clock);
  await client.loadPlan(PLAN);
  const inner = server.rest;
  let dropAnswer = true;
  server.rest = async (request) => {
    const answer = await inner(request);
    if (request.method === "POST" && dropAnswer) {
      dropAnswer = false;
      throw new TypeError("connection reset after the write");
    }
    return answer;
  };
  const id = client.newId();
  const result = client.from("task").insert({ ...NEW_TASK, id });
  await settle();
  assert.equal(backend.rows.has(id), true, "the first attempt wrote the row");
  await clock.advance(2000);
  const { data, error } = await result;
  assert.equal(error, null);
  assert.equal(data.id, id);
  const posts = server.restRequests("POST");
  assert.equal(posts.length, 2);
  assert.equal(posts[0].headers["idempotency-key"], posts[1].headers["idempotency-key"]);
  assert.equal([...backend.rows.keys()].filter((key) => key === id).length, 1);
  assert.equal(client.records("task").length, 2);
  client.close();
});

test("IndexedDB storage falls back to memory where there is no IndexedDB", async () => {
  const storage = createIndexedDBStorage({ indexedDB: undefined });
  assert.equal(storage.kind, "memory");
  await storage.set("k", [{ a: 1 }]);
  assert.deepEqual(await storage.get("k"), [{ a: 1 }]);
  await storage.delete("k");
  assert.equal(await storage.get("k"), undefined);
});

test("IndexedDB storage that refuses to open falls back to memory", async () => {
  const refusing = {
    open() {
      const request = {};
      setImmediate(() => request.onerror?.());
      return request;
    },
  };
  const storage = createIndexedDBStorage({ indexedDB: refusing });
  await storage.set("k", 1);
  assert.equal(await storage.get("k"), 1);
});
