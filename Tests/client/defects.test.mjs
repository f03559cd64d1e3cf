// The defects of issue 15, section 1: each test was written against the code before the fix and failed there for
// the reason the issue names (see the commit messages); they pin the fixed behaviour. One file over 400 lines
// because it is that list, kept in its order.

import { test } from "node:test";
import assert from "node:assert/strict";
import { createMemoryStorage } from "../../Sources/Realtime/Web/Public/realtime.js";
import { FakeClock, fakeServer, makeClient, settle, task, taskId, taskBackend, token, PLAN, BRANCH, OTHER } from "./support.mjs";

const OTHER_PLAN = "44444444-4444-4444-8444-444444444444";

/** Adds a `Date` header (the server's clock, `skewMs` ahead of the test clock) to every REST answer. */
function serverClockAhead(server, clock, skewMs) {
  const inner = server.rest;
  server.rest = async (request) => {
    const answer = await inner(request);
    return { ...answer, headers: { ...(answer.headers ?? {}), Date: new Date(clock.now() + skewMs).toUTCString() } };
  };
}

/** Tabs of one browser: one lock manager and one message bus, shared by the clients given `tabs()`. */
function fakeBrowser() {
  const held = new Map();
  const buses = new Map();
  return {
    tabs() {
      return {
        async lock(name, fn) {
          while (held.has(name)) await held.get(name);
          let release;
          held.set(name, new Promise((resolve) => (release = resolve)));
          try {
            return await fn();
          } finally {
            held.delete(name);
            release();
          }
        },
        channel(name) {
          if (!buses.has(name)) buses.set(name, new Set());
          const members = buses.get(name);
          const port = {
            onmessage: null,
            postMessage(data) {
              for (const other of members) {
                if (other !== port) queueMicrotask(() => other.onmessage?.({ data: structuredClone(data) }));
              }
            },
            close() {
              members.delete(port);
            },
          };
          members.add(port);
          return port;
        },
      };
    },
  };
}

// ------------------------------------------------------------------ device clock

test("a device clock 30 s slow gets no false 409: updated_at is stamped in server time (Date header)", async () => {
  const clock = new FakeClock();
  const server = fakeServer();
  // Another user changed the task 5 s ago, by the server's clock, which is 30 s ahead of this device.
  const serverNow = () => clock.now() + 30_000;
  const backend = taskBackend(server, [task(taskId(1), { updated_at: new Date(serverNow() - 5000).toISOString() })]);
  serverClockAhead(server, clock, 30_000);
  const client = makeClient(server, clock);
  const errors = [];
  client.onError((error) => errors.push(error));
  await client.loadPlan(PLAN);
  const { error } = await client.from("task").update(taskId(1), { title: "mine" });
  assert.equal(error, null, "no stale_update");
  assert.deepEqual(errors, []);
  assert.equal(backend.rows.get(taskId(1)).title, "mine");
  client.close();
});

test("the clock offset also follows commit timestamps: a write after an event is stamped no earlier than its commit", async () => {
  const clock = new FakeClock();
  const server = fakeServer();
  taskBackend(server, [task(taskId(1))]);
  const client = makeClient(server, clock);
  client.channel(`plan:${PLAN}`).subscribe();
  await settle();
  const commit = new Date(clock.now() + 20_000).toISOString();
  server.lastStream.change(5, task(taskId(1), { updated_at: commit }), { commit });
  await settle();
  await client.from("task").update(taskId(1), { title: "after the event" });
  const [patch] = server.restRequests("PATCH");
  assert.ok(Date.parse(patch.body.updated_at) >= Date.parse(commit), `${patch.body.updated_at} is not before ${commit}`);
  client.close();
});

test("when two versions of a row tie on updated_at, the feed's sequence decides, not arrival order", async () => {
  const clock = new FakeClock();
  const server = fakeServer();
  taskBackend(server, [task(taskId(1))]);
  const client = makeClient(server, clock);
  await client.loadPlan(PLAN);
  client.channel(`plan:${PLAN}`).subscribe();
  await settle();
  const tie = "2026-11-28T08:30:00.000001+00:00";
  server.lastStream.change(21, task(taskId(1), { title: "later in the feed", updated_at: tie }));
  server.lastStream.change(20, task(taskId(1), { title: "earlier in the feed", updated_at: tie }));
  await settle();
  assert.equal(client.record("task", taskId(1)).data.title, "later in the feed");
  client.close();
});

// ------------------------------------------------------------------ timeouts

/** A fetch in front of `server` that never answers the requests `hang(request)` picks (until aborted). */
function hangingFetch(server, hang) {
  const hung = [];
  const fetch = (url, init = {}) => {
    const parsed = new URL(url);
    if (hang({ url, path: parsed.pathname, method: init.method ?? "GET", init })) {
      return new Promise((_, reject) => {
        hung.push(url);
        init.signal?.addEventListener("abort", () => reject(new DOMException("timed out", "TimeoutError")));
      });
    }
    return server.fetch(url, init);
  };
  return { fetch, hung };
}

test("a stream request that never gets a response times out, and the stale status comes 60 s after the last healthy moment", async () => {
  const clock = new FakeClock();
  const server = fakeServer();
  const { fetch, hung } = hangingFetch(server, ({ path }) => path === "/realtime/v1/stream");
  const client = makeClient(server, clock, { fetch });
  client.channel(`plan:${PLAN}`).subscribe();
  await settle();
  assert.equal(client.status, "connecting");
  await clock.advance(59_000);
  assert.ok(hung.length >= 2, `the hung request was given up and tried again (${hung.length} tries)`);
  assert.notEqual(client.status, "stale");
  await clock.advance(1_000);
  assert.equal(client.status, "stale", "the banner shows 60 s after the client started, whatever the state");
  client.close();
});

test("a hung write times out and the queue moves on, also across offline → online", async () => {
  const clock = new FakeClock();
  const server = fakeServer();
  const backend = taskBackend(server, [task(taskId(1)), task(taskId(2))], { clock });
  let hangFirst = true;
  const { fetch } = hangingFetch(server, ({ method }) => {
    if (method !== "PATCH" || !hangFirst) return false;
    hangFirst = false;
    return true;
  });
  const client = makeClient(server, clock, { fetch });
  await client.loadPlan(PLAN);
  const first = client.from("task").update(taskId(1), { title: "first" });
  const second = client.from("task").update(taskId(2), { title: "second" });
  await settle();
  client.testNetwork.set(false);
  await settle();
  client.testNetwork.set(true);
  await clock.advance(90_000);
  assert.equal(backend.rows.get(taskId(2)).title, "second", "the write behind the hung one landed");
  assert.equal(backend.rows.get(taskId(1)).title, "first", "the hung write was sent again and landed");
  assert.equal((await first).error, null);
  assert.equal((await second).error, null);
  client.close();
});

// ------------------------------------------------------------------ two tabs

test("two tabs of one user keep each other's queued writes (one stored record per write)", async () => {
  const clock = new FakeClock();
  const server = fakeServer();
  taskBackend(server, [task(taskId(1)), task(taskId(2))], { clock });
  server.online = false;
  const storage = createMemoryStorage();
  const browser = fakeBrowser();
  let idA = 0;
  let idB = 0;
  const a = makeClient(server, clock, { storage, tabs: browser.tabs(), uuid: () => `aaaaaaaa-aaaa-4aaa-8aaa-${String(++idA).padStart(12, "0")}` });
  const b = makeClient(server, clock, { storage, tabs: browser.tabs(), uuid: () => `bbbbbbbb-bbbb-4bbb-8bbb-${String(++idB).padStart(12, "0")}` });
  a.testNetwork.set(false);
  b.testNetwork.set(false);
  await Promise.all([a.ready, b.ready]);
  a.from("task").update(taskId(1), { title: "from tab A" });
  clock.time += 10;
  b.from("task").update(taskId(2), { title: "from tab B" });
  await settle();
  await settle();
  const reloaded = makeClient(server, clock, { storage });
  reloaded.testNetwork.set(false);
  await reloaded.ready;
  assert.deepEqual(
    reloaded.pendingWrites().map((w) => [w.id, w.values.title]),
    [
      [taskId(1), "from tab A"],
      [taskId(2), "from tab B"],
    ],
  );
  for (const client of [a, b, reloaded]) client.close();
});

test("two tabs offline: each sees the other's pending writes; online, one tab replays and every write lands once", async () => {
  const clock = new FakeClock();
  const server = fakeServer();
  const backend = taskBackend(server, [task(taskId(1)), task(taskId(2))], { clock });
  const storage = createMemoryStorage();
  const browser = fakeBrowser();
  let n = 0;
  const ids = (tag) => () => `${tag}-${String(++n).padStart(12, "0")}`;
  const a = makeClient(server, clock, { storage, tabs: browser.tabs(), uuid: ids("aaaaaaaa-aaaa-4aaa-8aaa") });
  const b = makeClient(server, clock, { storage, tabs: browser.tabs(), uuid: ids("bbbbbbbb-bbbb-4bbb-8bbb") });
  await a.loadPlan(PLAN);
  await b.loadPlan(PLAN);
  server.online = false;
  a.testNetwork.set(false);
  b.testNetwork.set(false);
  await settle();
  const wa = a.from("task").update(taskId(1), { title: "A" });
  clock.time += 10;
  const wb = b.from("task").update(taskId(2), { title: "B" });
  await settle();
  assert.equal(a.record("task", taskId(2)).data.title, "B", "tab A shows tab B's pending write");
  assert.equal(a.record("task", taskId(2)).pending, true);
  assert.equal(b.record("task", taskId(1)).data.title, "A");
  assert.equal(a.pendingWrites().length, 2);

  server.online = true;
  a.testNetwork.set(true);
  b.testNetwork.set(true);
  await clock.advance(60_000);
  assert.equal((await wa).error, null);
  assert.equal((await wb).error, null);
  const patches = server.restRequests("PATCH");
  assert.equal(new Set(patches.map((r) => r.headers["idempotency-key"])).size, 2);
  assert.equal(patches.length, 2, "every write sent once");
  assert.equal(backend.rows.get(taskId(1)).title, "A");
  assert.equal(backend.rows.get(taskId(2)).title, "B");
  assert.equal(a.pendingWrites().length, 0);
  assert.equal(b.pendingWrites().length, 0);
  assert.equal(b.record("task", taskId(1)).pending, false);
  a.close();
  b.close();
});

// ------------------------------------------------------------------ channels

test("a bad channel beside a good one: only the bad one gets CHANNEL_ERROR, the good one stays live", async () => {
  const clock = new FakeClock();
  const server = fakeServer();
  server.streamAnswer = (request) =>
    request.query.getAll("channel").includes("plan:not-a-uuid")
      ? { status: 400, body: { error: { code: "invalid_parameter", message: "not a channel" } } }
      : null;
  const client = makeClient(server, clock);
  const good = [];
  const bad = [];
  client.channel(`plan:${PLAN}`).subscribe((status) => good.push(status));
  client.channel("plan:not-a-uuid").subscribe((status) => bad.push(status));
  await clock.advance(5_000);
  assert.deepEqual(good, ["SUBSCRIBED"]);
  assert.deepEqual(bad, ["CHANNEL_ERROR"]);
  assert.equal(client.status, "live");
  assert.deepEqual(server.lastStream.request.query.getAll("channel"), [`plan:${PLAN}`]);
  assert.equal(server.lastStream.open, true);
  client.close();
});

test("a second channel with the same name is the same channel: both handlers hear its events", async () => {
  const clock = new FakeClock();
  const server = fakeServer();
  const client = makeClient(server, clock);
  const first = [];
  const second = [];
  const a = client.channel(`plan:${PLAN}`).on("postgres_changes", { table: "task" }, (p) => first.push(p.id));
  a.subscribe();
  const b = client.channel(`plan:${PLAN}`).on("postgres_changes", { table: "task" }, (p) => second.push(p.id));
  b.subscribe();
  await settle();
  assert.equal(a, b);
  server.lastStream.change(3, task(taskId(1)));
  await settle();
  assert.deepEqual(first, ["3"]);
  assert.deepEqual(second, ["3"]);
  client.close();
});

// ------------------------------------------------------------------ failing writes

test("a write answered 5xx is retried a bounded number of times, then marked failed; later writes go on", async () => {
  const clock = new FakeClock();
  const server = fakeServer();
  const backend = taskBackend(server, [task(taskId(1)), task(taskId(2))], { clock });
  backend.refuse = (request) =>
    request.method === "PATCH" && request.path.endsWith(taskId(1)) ? { status: 503, body: { error: { code: "unavailable", message: "down" } } } : null;
  const client = makeClient(server, clock);
  await client.loadPlan(PLAN);
  const first = client.from("task").update(taskId(1), { title: "never lands" });
  const second = client.from("task").update(taskId(2), { title: "lands" });
  await clock.advance(3_600_000);
  const tries = server.restRequests("PATCH").filter((r) => r.path.endsWith(taskId(1))).length;
  assert.ok(tries <= 6, `bounded: ${tries} tries in an hour`);
  assert.equal(backend.rows.get(taskId(2)).title, "lands");
  assert.equal((await second).error, null);
  const failed = client.pendingWrites().filter((w) => w.failed);
  assert.equal(failed.length, 1);
  assert.equal(client.record("task", taskId(1)).failed, true);
  // Retry: the server is back.
  backend.refuse = null;
  client.retryWrite(failed[0].key);
  await clock.advance(1_000);
  assert.equal(backend.rows.get(taskId(1)).title, "never lands");
  assert.equal((await first).error, null);
  client.close();
});

test("a failed write can be discarded: the row goes back to the server's version", async () => {
  const clock = new FakeClock();
  const server = fakeServer();
  const backend = taskBackend(server, [task(taskId(1))], { clock });
  backend.refuse = (request) => (request.method === "PATCH" ? { status: 500, body: { error: { code: "internal", message: "boom" } } } : null);
  const client = makeClient(server, clock);
  await client.loadPlan(PLAN);
  const write = client.from("task").update(taskId(1), { title: "discard me" });
  await clock.advance(600_000);
  const [failed] = client.pendingWrites();
  assert.equal(failed.failed, true);
  client.discardWrite(failed.key);
  const { error } = await write;
  assert.equal(error.code, "discarded");
  assert.equal(client.record("task", taskId(1)).data.title, task(taskId(1)).title);
  assert.equal(client.pendingWrites().length, 0);
  client.close();
});

test("a 401 with no way to refresh stops the queue with one error; setAuth(token) resumes it", async () => {
  const clock = new FakeClock();
  const server = fakeServer();
  const backend = taskBackend(server, [task(taskId(1))], { clock });
  backend.refuse = (request) =>
    request.headers.authorization === `Bearer ${token()}` && request.method === "PATCH"
      ? { status: 401, body: { error: { code: "unauthorized", message: "expired" } } }
      : null;
  const client = makeClient(server, clock);
  const errors = [];
  client.onError((error) => errors.push(error));
  await client.loadPlan(PLAN);
  const write = client.from("task").update(taskId(1), { title: "after login" });
  await clock.advance(3_600_000);
  assert.ok(server.restRequests("PATCH").length <= 2, `no retry loop: ${server.restRequests("PATCH").length} tries`);
  assert.equal(errors.filter((e) => e.kind === "auth").length, 1, "one toast, not one per try");
  client.setAuth(token(undefined, "2"));
  await clock.advance(1_000);
  assert.equal((await write).error, null);
  assert.equal(backend.rows.get(taskId(1)).title, "after login");
  client.close();
});

// ------------------------------------------------------------------ server-side filters

test("handler filters are sent as the stream's table=, event= and filter= options", async () => {
  const clock = new FakeClock();
  const server = fakeServer();
  const client = makeClient(server, clock);
  client
    .channel(`plan:${PLAN}`)
    .on("postgres_changes", { table: "task", event: "UPDATE", filter: "status=eq.done" }, () => {})
    .subscribe();
  await settle();
  const query = server.lastStream.request.query;
  assert.deepEqual(query.getAll("table"), ["task"]);
  assert.deepEqual(query.getAll("event"), ["UPDATE"]);
  assert.deepEqual(query.getAll("filter"), ["status=eq.done"]);
  // A second channel that wants everything widens the stream again.
  client.channel(`branch:${BRANCH}`).on("postgres_changes", { table: "*" }, () => {}).subscribe();
  await settle();
  const wide = server.lastStream.request.query;
  assert.deepEqual(wide.getAll("table"), []);
  assert.deepEqual(wide.getAll("filter"), []);
  client.close();
});

// ------------------------------------------------------------------ growth

test("rows and tombstones are bounded: rows of plans not loaded and old tombstones are dropped", async () => {
  const clock = new FakeClock();
  const server = fakeServer();
  taskBackend(server, [task(taskId(1))]);
  const client = makeClient(server, clock, { maxRows: 500, maxTombstones: 200 });
  await client.loadPlan(PLAN);
  client.channel(`branch:${BRANCH}`).subscribe();
  await settle();
  for (let i = 0; i < 3000; i++) {
    const row = task(taskId(1000 + i), { plan_id: OTHER_PLAN, updated_by: OTHER });
    server.lastStream.change(100 + 2 * i, row, { channels: [`branch:${BRANCH}`], event: "INSERT" });
    if (i % 2 === 0) server.lastStream.change(101 + 2 * i, row, { channels: [`branch:${BRANCH}`], event: "DELETE" });
  }
  await settle(50);
  assert.ok(client.tables.get("task").size <= 500, `${client.tables.get("task").size} rows kept`);
  assert.ok(client.tombstones.get("task").size <= 200, `${client.tombstones.get("task").size} tombstones kept`);
  assert.ok(client.record("task", taskId(1)), "the loaded plan's rows stay");
  client.close();
});

test("a later write is never stamped earlier than an earlier one, however the clock estimate moves", async () => {
  const clock = new FakeClock();
  const server = fakeServer();
  // The server's clock is 2.999 s ahead; its Date headers say so (to the second), then one says +0 s (another node
  // behind the same address, say): the estimate moves back between the two writes.
  taskBackend(server, [task(taskId(1))], { clock: { now: () => clock.now() + 2999 } });
  const skews = [2000, 2000, 0];
  const inner = server.rest;
  server.rest = async (request) => {
    const answer = await inner(request);
    const skew = skews.length > 1 ? skews.shift() : skews[0];
    return { ...answer, headers: { ...(answer.headers ?? {}), Date: new Date(clock.now() + skew).toUTCString() } };
  };
  const client = makeClient(server, clock);
  await client.loadPlan(PLAN);
  const first = await client.from("task").update(taskId(1), { status: "done" });
  await client.request("GET", `/rest/v1/tasks/${taskId(1)}`);
  clock.time += 100;
  const second = await client.from("task").update(taskId(1), { title: "linked" });
  assert.equal(first.error, null);
  assert.equal(second.error, null, "no stale_update against this client's own earlier write");
  const [a, b] = server.restRequests("PATCH").map((r) => Date.parse(r.body.updated_at));
  assert.ok(b > a, `stamps go forward: ${new Date(a).toISOString()} then ${new Date(b).toISOString()}`);
  client.close();
});
