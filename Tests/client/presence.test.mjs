// Presence and broadcast: the presence map from sync/join/update/leave frames, heartbeats while tracking (spaced,
// and slowed by 429 Retry-After), the leave on untrack and on page hide (keepalive), and broadcasts both ways.

import { test } from "node:test";
import assert from "node:assert/strict";
import { FakeClock, fakeServer, makeClient, settle, PLAN, ME, OTHER } from "./support.mjs";

const PRESENCE = `presence:plan:${PLAN}`;

/** Answers the presence and broadcast endpoints like the server. */
function presenceServer() {
  const server = fakeServer();
  server.presenceAnswer = () => ({
    status: 200,
    body: { channel: PRESENCE, user_id: ME, ttl_seconds: 30, heartbeat_seconds: 10 },
  });
  server.rest = (request) => {
    if (request.path === `/realtime/v1/presence/plan/${PLAN}`) {
      return request.method === "DELETE" ? { status: 204 } : server.presenceAnswer(request);
    }
    if (request.path === `/realtime/v1/broadcast/plan/${PLAN}`) return { status: 202, body: {} };
    return { status: 404, body: { error: { code: "not_found", message: "no route" } } };
  };
  return server;
}

test("the presence map follows sync, join, update and leave; handlers can pick events", async () => {
  const clock = new FakeClock();
  const server = presenceServer();
  const client = makeClient(server, clock);
  const all = [];
  const joins = [];
  const channel = client
    .channel(`plan:${PLAN}`)
    .on("presence", (p) => all.push(p))
    .on("presence", { event: "join" }, (p) => joins.push(p.user_id))
    .subscribe();
  await settle();
  assert.deepEqual(server.lastStream.request.query.getAll("channel"), [`plan:${PLAN}`, PRESENCE]);
  const stream = server.lastStream;
  stream.frame("presence", {
    type: "presence",
    event: "sync",
    channel: PRESENCE,
    presences: [{ user_id: OTHER, state: { slot: "s1", action: "viewing" }, online_since: "t0", last_seen: "t1" }],
  });
  stream.frame("presence", { type: "presence", event: "join", channel: PRESENCE, user_id: ME, state: { slot: "s2", action: "editing" } });
  stream.frame("presence", { type: "presence", event: "update", channel: PRESENCE, user_id: OTHER, state: { slot: "s3", action: "editing" } });
  await settle();
  // presenceMap() is the raw map (presenceState() before issue 15); presenceState() has supabase-js's shape.
  assert.deepEqual(channel.presenceMap(), {
    [OTHER]: { state: { slot: "s3", action: "editing" }, online_since: "t0", last_seen: "t1" },
    [ME]: { state: { slot: "s2", action: "editing" } },
  });
  assert.deepEqual(channel.presenceState(), {
    [OTHER]: [{ slot: "s3", action: "editing", online_since: "t0", last_seen: "t1" }],
    [ME]: [{ slot: "s2", action: "editing" }],
  });
  stream.frame("presence", { type: "presence", event: "leave", channel: PRESENCE, user_id: OTHER, state: {} });
  await settle();
  assert.deepEqual(Object.keys(channel.presenceState()), [ME]);
  assert.deepEqual(all.map((p) => p.event), ["sync", "join", "update", "leave"]);
  assert.deepEqual(Object.keys(all.at(-1).presences), [ME], "each payload carries the whole map");
  assert.deepEqual(joins, [ME]);
  assert.equal(client.cursor, null, "presence frames carry no cursor");
  client.close();
});

test("track heartbeats every heartbeat_seconds, untrack leaves, and a new state is sent at once", async () => {
  const clock = new FakeClock();
  const server = presenceServer();
  const client = makeClient(server, clock);
  const channel = client.channel(`plan:${PLAN}`).on("presence", () => {}).subscribe();
  await settle();
  const posts = () => server.restRequests("POST").filter((r) => r.path.includes("/presence/"));
  channel.track({ slot: "task-1", action: "editing" });
  await clock.advance(0);
  assert.equal(posts().length, 1);
  assert.deepEqual(posts()[0].body, { state: { slot: "task-1", action: "editing" } });
  await clock.advance(9_999);
  assert.equal(posts().length, 1);
  await clock.advance(1);
  assert.equal(posts().length, 2, "heartbeat after 10 s");
  await clock.advance(30_000);
  assert.equal(posts().length, 5);
  await clock.advance(5_000);
  channel.track({ slot: "task-2", action: "editing" });
  await clock.advance(0);
  assert.equal(posts().length, 6, "a new state does not wait for the heartbeat");
  assert.equal(posts()[5].body.state.slot, "task-2");
  await channel.untrack();
  const deletes = server.restRequests("DELETE");
  assert.equal(deletes.length, 1);
  assert.equal(deletes[0].path, `/realtime/v1/presence/plan/${PLAN}`);
  await clock.advance(60_000);
  assert.equal(posts().length, 6, "no heartbeat after untrack");
  client.close();
});

test("fast state changes are spaced (at most 4 sends a second) and only the latest state is sent", async () => {
  const clock = new FakeClock();
  const server = presenceServer();
  const client = makeClient(server, clock);
  const channel = client.channel(`plan:${PLAN}`).on("presence", () => {}).subscribe();
  await settle();
  const posts = () => server.restRequests("POST");
  channel.track({ slot: "a", action: "editing" });
  await clock.advance(0);
  for (const slot of ["b", "c", "d", "e"]) {
    channel.track({ slot, action: "editing" });
    await clock.advance(10);
  }
  await clock.advance(300);
  assert.deepEqual(posts().map((r) => r.body.state.slot), ["a", "e"]);
  client.close();
});

test("a 429 waits for Retry-After before the next heartbeat", async () => {
  const clock = new FakeClock();
  const server = presenceServer();
  let limited = true;
  server.presenceAnswer = () => {
    if (limited) {
      limited = false;
      return { status: 429, body: { error: { code: "rate_limited", message: "slow down" } }, headers: { "Retry-After": "3" } };
    }
    return { status: 200, body: { channel: PRESENCE, user_id: ME, ttl_seconds: 30, heartbeat_seconds: 10 } };
  };
  const client = makeClient(server, clock);
  const channel = client.channel(`plan:${PLAN}`).on("presence", () => {}).subscribe();
  await settle();
  channel.track({ slot: "a", action: "editing" });
  await clock.advance(0);
  await clock.advance(2_999);
  assert.equal(server.restRequests("POST").length, 1);
  await clock.advance(1);
  assert.equal(server.restRequests("POST").length, 2);
  client.close();
});

test("hiding the page leaves every tracked channel with a keepalive DELETE", async () => {
  const clock = new FakeClock();
  const server = presenceServer();
  const client = makeClient(server, clock);
  const channel = client.channel(`plan:${PLAN}`).on("presence", () => {}).subscribe();
  await settle();
  channel.track({ slot: "a", action: "viewing" });
  await clock.advance(0);
  client.hidePage();
  await settle();
  const [leave] = server.restRequests("DELETE");
  assert.equal(leave.path, `/realtime/v1/presence/plan/${PLAN}`);
  assert.equal(leave.keepalive, true);
  assert.ok(leave.headers.authorization.startsWith("Bearer "));
  await clock.advance(60_000);
  assert.equal(server.restRequests("POST").length, 1, "no heartbeat after leaving");
  client.close();
});

test("broadcasts: send() posts to the channel; handlers hear the channel's broadcasts by event", async () => {
  const clock = new FakeClock();
  const server = presenceServer();
  const client = makeClient(server, clock);
  const heard = [];
  const channel = client
    .channel(`plan:${PLAN}`)
    .on("broadcast", { event: "cursor" }, (m) => heard.push(m.payload))
    .subscribe();
  await settle();
  assert.equal(await channel.send({ type: "broadcast", event: "cursor", payload: { x: 1 } }), "ok");
  const [post] = server.restRequests("POST");
  assert.equal(post.path, `/realtime/v1/broadcast/plan/${PLAN}`);
  assert.deepEqual(post.body, { event: "cursor", payload: { x: 1 } });
  server.lastStream.frame("broadcast", { type: "broadcast", channel: `plan:${PLAN}`, event: "cursor", payload: { x: 2 }, user_id: OTHER });
  server.lastStream.frame("broadcast", { type: "broadcast", channel: `plan:${PLAN}`, event: "other", payload: { x: 3 }, user_id: OTHER });
  await settle();
  assert.deepEqual(heard, [{ x: 2 }]);
  assert.equal(server.streams.length, 1, "broadcast needs no presence channel");
  assert.deepEqual(server.lastStream.request.query.getAll("channel"), [`plan:${PLAN}`]);
  client.close();
});
