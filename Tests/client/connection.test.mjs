// The stream: backoff with full jitter, the status observable, resume by cursor, and the control events
// (token_expired, reset, revoked), with an injected clock, random source, network and fetch.

import { test } from "node:test";
import assert from "node:assert/strict";
import { backoffCeiling, backoffDelay } from "../../Sources/Realtime/Web/Public/realtime.js";
import { FakeClock, fakeServer, makeClient, settle, snapshot, task, taskId, token, PLAN, BRANCH, ME } from "./support.mjs";

test("backoff ceilings double from 1 s and stop at 30 s", () => {
  const ceilings = Array.from({ length: 9 }, (_, attempt) => backoffCeiling(attempt));
  assert.deepEqual(ceilings, [1000, 2000, 4000, 8000, 16000, 30000, 30000, 30000, 30000]);
  assert.equal(backoffCeiling(1000), 30000, "no overflow for huge attempt counts");
});

test("full jitter: the delay is random × ceiling, anywhere from 0 up to the ceiling", () => {
  assert.deepEqual(
    [0, 1, 2, 3, 4, 5, 6].map((attempt) => backoffDelay(attempt, () => 0.5)),
    [500, 1000, 2000, 4000, 8000, 15000, 15000],
  );
  assert.equal(backoffDelay(3, () => 0), 0);
  assert.equal(backoffDelay(3, () => 0.999999), 7999);
  const values = [0.1, 0.9, 0.3];
  let i = 0;
  const random = () => values[i++];
  assert.deepEqual([0, 1, 2].map((attempt) => backoffDelay(attempt, random)), [100, 1800, 1200]);
});

test("reconnects after failures with the backoff schedule, and resets it once live", async () => {
  const clock = new FakeClock();
  const server = fakeServer();
  server.online = false;
  const client = makeClient(server, clock, { random: () => 1 - Number.EPSILON, staleAfterMs: 3_600_000 });
  client.channel(`plan:${PLAN}`).subscribe();
  await settle();
  const attemptTimes = () => server.requests.filter((r) => r.stream).length;
  assert.equal(attemptTimes(), 1);
  const waits = [];
  for (let n = 0; n < 7; n++) {
    const before = clock.now();
    const [delay] = clock.pending();
    waits.push(delay);
    await clock.advance(delay);
    assert.equal(attemptTimes(), n + 2, `attempt ${n + 2} after ${clock.now() - before} ms`);
  }
  assert.deepEqual(waits, [999, 1999, 3999, 7999, 15999, 29999, 29999]);
  server.online = true;
  await clock.advance(clock.pending()[0]);
  assert.equal(client.status, "live");
  server.lastStream.fail();
  await settle();
  assert.equal(client.status, "offline");
  assert.deepEqual(clock.pending().slice(0, 1), [999], "the schedule starts again at 1 s after a live period");
  client.close();
});

test("status goes connecting → live → offline → stale → live, with a configurable stale period", async () => {
  const clock = new FakeClock();
  const server = fakeServer();
  const client = makeClient(server, clock, { staleAfterMs: 2000 });
  const seen = [];
  client.onStatus((status) => seen.push(status));
  client.channel(`plan:${PLAN}`).subscribe();
  await settle();
  assert.equal(client.status, "live");
  server.online = false;
  server.lastStream.fail();
  await settle();
  assert.equal(client.status, "offline");
  await clock.advance(1999);
  assert.equal(client.status, "offline", "not stale before the period is over, retries and all");
  await clock.advance(1);
  assert.equal(client.status, "stale");
  await clock.advance(5000);
  assert.equal(client.status, "stale", "failed retries keep it stale");
  server.online = true;
  await clock.advance(30000);
  assert.equal(client.status, "live");
  assert.deepEqual(seen, ["connecting", "live", "offline", "stale", "live"]);
  client.close();
});

test("the default stale period is 60 s", async () => {
  const clock = new FakeClock();
  const server = fakeServer();
  server.online = false;
  const client = makeClient(server, clock);
  client.channel(`plan:${PLAN}`).subscribe();
  await settle();
  assert.equal(client.status, "offline");
  await clock.advance(59_999);
  assert.equal(client.status, "offline");
  await clock.advance(1);
  assert.equal(client.status, "stale");
  client.close();
});

test("the browser's offline event drops the stream at once; online reconnects at once", async () => {
  const clock = new FakeClock();
  const server = fakeServer();
  const client = makeClient(server, clock);
  client.channel(`plan:${PLAN}`).subscribe();
  await settle();
  assert.equal(client.status, "live");
  const first = server.lastStream;
  server.online = false;
  client.testNetwork.set(false);
  await settle();
  assert.equal(client.status, "offline");
  assert.equal(first.open, false, "the stream was aborted");
  server.online = true;
  client.testNetwork.set(true);
  await settle();
  assert.equal(client.status, "live");
  assert.equal(server.streams.length, 2);
  client.close();
});

test("a silent stream (no keepalive for the stall period) counts as lost", async () => {
  const clock = new FakeClock();
  const server = fakeServer();
  const client = makeClient(server, clock, { stallTimeoutMs: 45_000 });
  client.channel(`plan:${PLAN}`).subscribe();
  await settle();
  await clock.advance(30_000);
  server.lastStream.send(": keepalive\n\n");
  await clock.advance(30_000);
  assert.equal(client.status, "live", "a keepalive restarted the watchdog");
  await clock.advance(15_001);
  assert.equal(client.status, "offline");
  client.close();
});

test("one stream for all channels; reopened from the last cursor when the channels change", async () => {
  const clock = new FakeClock();
  const server = fakeServer();
  const client = makeClient(server, clock);
  client.channel(`plan:${PLAN}`).on("postgres_changes", { table: "task" }, () => {}).subscribe();
  client.channel(`branch:${BRANCH}`).subscribe();
  await settle();
  assert.equal(server.streams.length, 1, "two channels subscribed in one tick share one stream");
  const first = server.lastStream.request;
  assert.deepEqual(first.query.getAll("channel"), [`branch:${BRANCH}`, `plan:${PLAN}`]);
  assert.equal(first.headers.authorization, `Bearer ${token()}`);
  assert.equal(first.headers["last-event-id"], undefined);
  server.lastStream.change(41, task(taskId(1)));
  await settle();
  client.channel(`plan:${PLAN}`).on("presence", () => {}).subscribe();
  await settle();
  assert.equal(server.streams.length, 2);
  const second = server.lastStream.request;
  assert.deepEqual(second.query.getAll("channel"), [`branch:${BRANCH}`, `plan:${PLAN}`, `presence:plan:${PLAN}`]);
  assert.equal(second.headers["last-event-id"], "41");
  assert.equal(server.streams[0].open, false, "the old stream was closed");
  client.close();
});

test("resumes from the last event id after a disconnect", async () => {
  const clock = new FakeClock();
  const server = fakeServer();
  server.rest = () => snapshot([task(taskId(1))], "7~50:50:");
  const client = makeClient(server, clock);
  await client.loadPlan(PLAN);
  client.channel(`plan:${PLAN}`).subscribe();
  await settle();
  assert.equal(server.lastStream.request.headers["last-event-id"], "7~50:50:", "streams from the snapshot's cursor");
  server.lastStream.change(8, task(taskId(1), { title: "a", updated_at: "2026-11-28T08:00:01+00:00" }));
  server.lastStream.change(9, task(taskId(1), { title: "b", updated_at: "2026-11-28T08:00:02+00:00" }));
  await settle();
  server.lastStream.fail();
  await settle();
  await clock.advance(clock.pending()[0]);
  assert.equal(server.streams.length, 2);
  assert.equal(server.lastStream.request.headers["last-event-id"], "9");
  assert.equal(client.record("task", taskId(1)).data.title, "b");
  client.close();
});

test("a 401 or token_expired asks getToken() and resumes with the new token and the cursor", async () => {
  const clock = new FakeClock();
  const server = fakeServer();
  let calls = 0;
  const fresh = token(ME, "2");
  server.streamAnswer = (request) =>
    request.headers.authorization === `Bearer ${token()}` && server.streams.length > 0
      ? { status: 401, body: { error: { code: "token_expired", message: "expired" } } }
      : null;
  const client = makeClient(server, clock, {
    getToken: async () => {
      calls++;
      return fresh;
    },
  });
  client.channel(`plan:${PLAN}`).subscribe();
  await settle();
  server.lastStream.change(12, task(taskId(1)));
  server.lastStream.control("token_expired");
  await settle();
  assert.equal(calls, 1);
  assert.equal(server.streams.length, 2);
  assert.equal(server.lastStream.request.headers.authorization, `Bearer ${fresh}`);
  assert.equal(server.lastStream.request.headers["last-event-id"], "12");
  assert.equal(client.status, "live");

  // A 401 when opening: the old token is refused, getToken gives the new one, the stream opens.
  client.setToken(token());
  server.lastStream.fail();
  await settle();
  await clock.advance(clock.pending()[0]);
  assert.equal(calls, 2);
  assert.equal(client.status, "live");
  assert.equal(server.lastStream.request.headers.authorization, `Bearer ${fresh}`);
  client.close();
});

test("without a fresh token the stream stays down and an auth error is emitted", async () => {
  const clock = new FakeClock();
  const server = fakeServer();
  server.streamAnswer = () => ({ status: 401, body: { error: { code: "token_expired", message: "expired" } } });
  const client = makeClient(server, clock, { getToken: async () => null });
  const errors = [];
  client.onError((error) => errors.push(error));
  client.channel(`plan:${PLAN}`).subscribe();
  await settle();
  assert.equal(client.status, "offline");
  assert.equal(errors[0].kind, "auth");
  assert.equal(errors[0].code, "token_expired");
  client.close();
});

test("reset reloads the snapshot and streams from its cursor", async () => {
  const clock = new FakeClock();
  const server = fakeServer();
  let version = 1;
  server.rest = () =>
    version === 1
      ? snapshot([task(taskId(1)), task(taskId(2))], "5~1:1:")
      : snapshot([task(taskId(1), { title: "after reset", updated_at: "2026-11-28T08:30:00+00:00" })], "900~1:1:");
  const client = makeClient(server, clock);
  let resets = 0;
  client.onReset(() => resets++);
  await client.loadPlan(PLAN);
  client.channel(`plan:${PLAN}`).subscribe();
  await settle();
  version = 2;
  server.lastStream.control("reset", "The cursor is older than the event log's retention: load a snapshot.");
  await settle();
  assert.equal(resets, 1);
  assert.equal(server.lastStream.request.headers["last-event-id"], "900~1:1:");
  assert.equal(client.record("task", taskId(1)).data.title, "after reset");
  assert.equal(client.record("task", taskId(2)), null, "a task gone from the snapshot is dropped");
  assert.equal(client.status, "live");
  client.close();
});

test("revoked stops the channel that is no longer visible, reports it, and keeps the others", async () => {
  const clock = new FakeClock();
  const server = fakeServer();
  const other = "44444444-4444-4444-8444-444444444444";
  server.rest = (request) =>
    request.path === `/rest/v1/plans/${PLAN}`
      ? { status: 404, body: { error: { code: "not_found", message: "no such row" } } }
      : { status: 200, body: { id: other } };
  const client = makeClient(server, clock);
  const errors = [];
  const statuses = [];
  client.onError((error) => errors.push(error));
  client.channel(`plan:${PLAN}`).subscribe((status) => statuses.push(status));
  client.channel(`plan:${other}`).subscribe();
  await settle();
  assert.deepEqual(statuses, ["SUBSCRIBED"]);
  server.lastStream.control("revoked", "Access to a branch of this subscription was removed.");
  await settle();
  assert.deepEqual(statuses, ["SUBSCRIBED", "CHANNEL_ERROR"]);
  assert.deepEqual(
    errors.map((e) => e.kind),
    ["revoked", "revoked"],
  );
  assert.equal(errors[1].channel, `plan:${PLAN}`);
  assert.deepEqual(server.lastStream.request.query.getAll("channel"), [`plan:${other}`]);
  assert.equal(client.status, "live");
  client.close();
});

test("a server without presence (400 on the presence channel) keeps the data stream", async () => {
  const clock = new FakeClock();
  const server = fakeServer();
  server.streamAnswer = (request) =>
    request.query.getAll("channel").some((c) => c.startsWith("presence:"))
      ? { status: 400, body: { error: { code: "invalid_parameter", message: "not a channel" } } }
      : null;
  const client = makeClient(server, clock);
  const errors = [];
  client.onError((error) => errors.push(error));
  client.channel(`plan:${PLAN}`).on("presence", () => {}).subscribe();
  await settle();
  assert.equal(client.status, "live");
  assert.deepEqual(server.lastStream.request.query.getAll("channel"), [`plan:${PLAN}`]);
  assert.equal(errors[0].kind, "presence");
  client.close();
});

test("channels the server refuses (400) are reported once, without a reconnect loop", async () => {
  const clock = new FakeClock();
  const server = fakeServer();
  server.streamAnswer = () => ({ status: 400, body: { error: { code: "invalid_parameter", message: "not a channel" } } });
  const client = makeClient(server, clock);
  const statuses = [];
  client.channel("plan:not-a-uuid").subscribe((status) => statuses.push(status));
  await settle();
  await clock.advance(10 * 60_000);
  assert.deepEqual(statuses, ["CHANNEL_ERROR"]);
  assert.equal(server.requests.filter((r) => r.stream).length, 1);
  assert.equal(client.status, "stale");
  client.close();
});

test("reports the delays of live changes to the server's service-level window, not those of the catch-up", async () => {
  const clock = new FakeClock();
  const server = fakeServer();
  const client = makeClient(server, clock, { reportDelayEveryMs: 30_000 });
  client.channel(`plan:${PLAN}`).subscribe();
  await settle();
  assert.equal(client.status, "live");
  const opened = clock.now();
  await clock.advance(100);
  // Live: committed 40 ms after the stream opened, received 60 ms later.
  server.lastStream.change(1, task(taskId(1)), { commit: new Date(opened + 40).toISOString() });
  // Catch-up of the (re)connect: committed a minute before the stream opened.
  server.lastStream.change(2, task(taskId(2)), { commit: new Date(opened - 60_000).toISOString() });
  await settle();
  const reports = () => server.restRequests("POST").filter((r) => r.path === "/realtime/v1/slo/client-delay");
  assert.equal(reports().length, 0, "nothing is sent before the period is over");
  await clock.advance(30_000);
  assert.equal(reports().length, 1);
  assert.deepEqual(reports()[0].body, { samples_ms: [60] });
  await clock.advance(120_000);
  assert.equal(reports().length, 1, "no new changes, no new report");

  // A busy period: at most 100 samples per report.
  for (let n = 0; n < 150; n++) {
    server.lastStream.change(10 + n, task(taskId(10 + n)), { commit: new Date(clock.now() - 5).toISOString() });
  }
  await settle();
  await clock.advance(30_000);
  assert.equal(reports().length, 2);
  assert.equal(reports()[1].body.samples_ms.length, 100);
  assert.ok(reports()[1].body.samples_ms.every((value) => value === 5));
  client.close();
});

test("delay reports can be turned off", async () => {
  const clock = new FakeClock();
  const server = fakeServer();
  const client = makeClient(server, clock, { reportDelayEveryMs: 0 });
  client.channel(`plan:${PLAN}`).subscribe();
  await settle();
  server.lastStream.change(1, task(taskId(1)), { commit: new Date(clock.now()).toISOString() });
  await clock.advance(120_000);
  assert.equal(server.restRequests("POST").filter((r) => r.path === "/realtime/v1/slo/client-delay").length, 0);
  client.close();
});

test("a live stream counts as healthy until it drops: a quiet stream that loses the network is stale a full period later", async () => {
  const clock = new FakeClock();
  const server = fakeServer();
  const client = makeClient(server, clock, { staleAfterMs: 2000 });
  client.channel(`plan:${PLAN}`).subscribe();
  await settle();
  assert.equal(client.status, "live");
  await clock.advance(10_000); // live and quiet: no bytes for longer than the stale period
  server.online = false;
  client.testNetwork.set(false);
  await settle();
  assert.equal(client.status, "offline", "not stale at once: the stream was live until now");
  await clock.advance(1999);
  assert.equal(client.status, "offline");
  await clock.advance(1);
  assert.equal(client.status, "stale");
  client.close();
});

test("a stalled stream was healthy only until its last bytes: stale comes a period after them", async () => {
  const clock = new FakeClock();
  const server = fakeServer();
  const client = makeClient(server, clock, { stallTimeoutMs: 45_000, staleAfterMs: 60_000 });
  client.channel(`plan:${PLAN}`).subscribe();
  await settle();
  server.online = false;
  await clock.advance(45_001);
  assert.equal(client.status, "offline", "the watchdog took the silent stream as lost");
  await clock.advance(14_998);
  assert.equal(client.status, "offline");
  await clock.advance(2);
  assert.equal(client.status, "stale", "60 s after the last bytes, not after the watchdog fired");
  client.close();
});
