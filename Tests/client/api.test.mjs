// The supabase-js-like surface (issue 15, section 2): removeChannel/getChannels, TIMED_OUT, track() resolving
// "ok", presence payloads with newPresences/leftPresences, from("tasks") or from("task"), update(patch).eq("id", id).

import { test } from "node:test";
import assert from "node:assert/strict";
import { FakeClock, fakeServer, makeClient, settle, task, taskId, taskBackend, PLAN, BRANCH, ME, OTHER } from "./support.mjs";

test("getChannels lists the channels; removeChannel unsubscribes and forgets one", async () => {
  const clock = new FakeClock();
  const server = fakeServer();
  const client = makeClient(server, clock);
  const plan = client.channel(`plan:${PLAN}`).subscribe();
  const branch = client.channel(`branch:${BRANCH}`).subscribe();
  await settle();
  assert.deepEqual(client.getChannels(), [plan, branch]);
  const statuses = [];
  branch.statusCallback = (status) => statuses.push(status);
  assert.equal(await client.removeChannel(branch), "ok");
  await settle();
  assert.deepEqual(client.getChannels(), [plan]);
  assert.deepEqual(statuses, ["CLOSED"]);
  assert.deepEqual(server.lastStream.request.query.getAll("channel"), [`plan:${PLAN}`]);
  assert.notEqual(client.channel(`branch:${BRANCH}`), branch, "a removed name makes a new channel");
  client.close();
});

test("a channel not subscribed within the timeout hears TIMED_OUT, then SUBSCRIBED when the stream opens", async () => {
  const clock = new FakeClock();
  const server = fakeServer();
  server.online = false;
  const client = makeClient(server, clock);
  const statuses = [];
  client.channel(`plan:${PLAN}`).subscribe((status) => statuses.push(status), 5_000);
  await clock.advance(5_000);
  assert.deepEqual(statuses, ["TIMED_OUT"]);
  server.online = true;
  await clock.advance(60_000);
  assert.deepEqual(statuses, ["TIMED_OUT", "SUBSCRIBED"]);
  client.close();
});

test("track() resolves 'ok' once the server took the state; presence payloads carry newPresences and leftPresences", async () => {
  const clock = new FakeClock();
  const server = fakeServer();
  server.rest = (request) =>
    request.path === `/realtime/v1/presence/plan/${PLAN}`
      ? request.method === "DELETE"
        ? { status: 204 }
        : { status: 200, body: { heartbeat_seconds: 10 } }
      : { status: 404, body: {} };
  const client = makeClient(server, clock);
  const joins = [];
  const leaves = [];
  const channel = client
    .channel(`plan:${PLAN}`)
    .on("presence", { event: "join" }, (p) => joins.push([p.key, p.newPresences]))
    .on("presence", { event: "leave" }, (p) => leaves.push([p.key, p.leftPresences]))
    .subscribe();
  await settle();
  const tracked = channel.track({ slot: "s1", action: "editing" });
  await clock.advance(0);
  assert.equal(await tracked, "ok");
  const stream = server.lastStream;
  stream.frame("presence", { type: "presence", event: "join", channel: `presence:plan:${PLAN}`, user_id: OTHER, state: { slot: "s2", action: "viewing" } });
  stream.frame("presence", { type: "presence", event: "leave", channel: `presence:plan:${PLAN}`, user_id: OTHER, state: {} });
  await settle();
  assert.deepEqual(joins, [[OTHER, [{ key: OTHER, slot: "s2", action: "viewing", online_since: undefined, last_seen: undefined }]]]);
  assert.equal(leaves[0][0], OTHER);
  assert.equal(leaves[0][1][0].slot, "s2", "the left presence is what it was");
  assert.equal(await channel.untrack(), "ok");
  client.close();
});

test("from('tasks') and from('task') both write tasks; update(patch).eq('id', id) and delete().eq('id', id)", async () => {
  const clock = new FakeClock();
  const server = fakeServer();
  const backend = taskBackend(server, [task(taskId(1)), task(taskId(2))], { clock });
  const client = makeClient(server, clock);
  await client.loadPlan(PLAN);
  const a = await client.from("tasks").update({ title: "plural" }).eq("id", taskId(1));
  assert.equal(a.error, null);
  assert.equal(backend.rows.get(taskId(1)).title, "plural");
  await client.from("task").update(taskId(1), { status: "done" });
  assert.equal(backend.rows.get(taskId(1)).status, "done");
  await client.from("tasks").delete().eq("id", taskId(2));
  assert.equal(backend.rows.has(taskId(2)), false);
  assert.throws(() => client.from("tasks").update({}).eq("title", "x"), /by id/);
  // Which tables can be written is the server's table map's to say, read when the write is sent (tables.test.mjs):
  // from() refuses only what is no name at all; a write to a table the map lacks is refused unsent, not thrown.
  assert.throws(() => client.from(""), /table's name/);
  const refused = await client.from("branch_member").insert({ branch_id: "b", user_id: "u" });
  assert.equal(refused.error.code, "unknown_table");
  client.close();
});
