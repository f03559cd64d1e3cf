// Optimistic writes: temp ids, reconciliation whichever of the REST answer and the stream event comes first
// (never applied twice), rollback on 403/404/422, and 409 stale_update taking the server's row.

import { test } from "node:test";
import assert from "node:assert/strict";
import { FakeClock, fakeServer, makeClient, settle, task, taskId, taskBackend, PLAN, ME, OTHER } from "./support.mjs";

/** A client with the plan loaded and its stream live, against a fake task backend. */
async function setup(tasks = [task(taskId(1)), task(taskId(2))]) {
  const clock = new FakeClock();
  const server = fakeServer();
  const backend = taskBackend(server, tasks, { clock });
  const client = makeClient(server, clock);
  const changes = [];
  const errors = [];
  client.onChange((change) => changes.push(change));
  client.onError((error) => errors.push(error));
  await client.loadPlan(PLAN);
  client.channel(`plan:${PLAN}`).subscribe();
  await settle();
  changes.length = 0;
  return { clock, server, backend, client, changes, errors };
}

/** Holds every REST answer until `release()` is called, so a test can deliver the event first. */
function holdAnswers(server) {
  const inner = server.rest;
  const held = [];
  server.rest = (request) =>
    new Promise((resolve) => {
      held.push(() => resolve(inner(request)));
    });
  return {
    release: async () => {
      while (held.length) held.shift()();
      await settle();
    },
    restore: () => {
      server.rest = inner;
    },
  };
}

test("insert: the row shows at once with its client-made id, pending, and is confirmed by the answer", async () => {
  const { server, client, changes } = await setup();
  const id = client.newId();
  const result = client.from("task").insert({ id, plan_id: PLAN, title: "New", starts_at: "2026-11-28T12:00:00Z", ends_at: "2026-11-28T13:00:00Z" });
  const optimistic = client.record("task", id);
  assert.equal(optimistic.data.title, "New");
  assert.equal(optimistic.pending, true);
  const { data, error } = await result;
  assert.equal(error, null);
  assert.equal(data.id, id, "the server keeps the temp id");
  const [post] = server.restRequests("POST");
  assert.equal(post.body.id, id);
  assert.ok(post.body.updated_at, "the edit's time travels with it");
  assert.equal(client.record("task", id).pending, false);
  assert.equal(client.records("task").length, 3);
  // Now the event of that insert arrives: nothing changes, and no second row appears.
  const before = changes.length;
  server.lastStream.change(20, data, { event: "INSERT" });
  await settle();
  assert.equal(client.records("task").length, 3);
  assert.equal(changes.length, before, "the echo of a confirmed write changes nothing");
});

test("insert: the event arrives before the REST answer — one row, applied once, then no longer pending", async () => {
  const { server, backend, client } = await setup();
  const hold = holdAnswers(server);
  const id = client.newId();
  const result = client.from("task").insert({ id, plan_id: PLAN, title: "Racing", starts_at: "2026-11-28T12:00:00Z", ends_at: "2026-11-28T13:00:00Z" });
  await settle();
  assert.equal(server.restRequests("POST").length, 1);
  // The server committed: its event comes first, while the answer is still on its way.
  const committed = task(id, { title: "Racing", updated_at: "2026-11-28T09:00:00.000001+00:00", updated_by: ME });
  backend.rows.set(id, committed);
  server.lastStream.change(21, committed, { event: "INSERT" });
  await settle();
  assert.equal(client.records("task").filter((r) => r.id === id).length, 1);
  assert.equal(client.record("task", id).pending, true, "still pending until the answer");
  backend.rows.delete(id);
  await hold.release();
  const { data } = await result;
  assert.equal(data.id, id);
  assert.equal(client.records("task").length, 3);
  assert.equal(client.record("task", id).pending, false);
  assert.equal(client.record("task", id).data.title, "Racing");
});

test("update: an older event arriving after a newer answer never rolls the row back", async () => {
  const { server, client } = await setup();
  await client.from("task").update(taskId(1), { title: "Second" });
  const confirmed = client.record("task", taskId(1)).data;
  assert.equal(confirmed.title, "Second");
  // A late replay of an earlier change (older updated_at) is ignored.
  server.lastStream.change(30, task(taskId(1), { title: "First", updated_at: "2026-11-28T08:30:00+00:00" }));
  await settle();
  assert.equal(client.record("task", taskId(1)).data.title, "Second");
  // The event of this very write is a no-op.
  server.lastStream.change(31, confirmed);
  await settle();
  assert.equal(client.record("task", taskId(1)).data.title, "Second");
});

test("update: another user's change under a pending edit keeps the edit on top, then settles", async () => {
  const { server, client } = await setup();
  const hold = holdAnswers(server);
  const result = client.from("task").update(taskId(1), { title: "Mine" });
  await settle();
  server.lastStream.change(
    40,
    task(taskId(1), { status: "done", updated_at: "2026-11-28T08:59:00+00:00", updated_by: OTHER }),
  );
  await settle();
  const during = client.record("task", taskId(1));
  assert.equal(during.data.title, "Mine", "my pending edit stays visible");
  assert.equal(during.data.status, "done", "their change shows too");
  assert.ok(during.changedAt !== null, "marked as updated by someone else");
  await hold.release();
  await result;
  const after = client.record("task", taskId(1));
  assert.equal(after.pending, false);
  assert.equal(after.data.title, "Mine");
});

for (const [status, code] of [
  [403, "forbidden"],
  [404, "not_found"],
  [422, "invalid_value"],
]) {
  test(`a ${status} rolls the update back and emits an error for a toast`, async () => {
    const { backend, client, errors } = await setup();
    backend.refuse = (request) =>
      request.method === "PATCH" ? { status, body: { error: { code, message: `refused: ${code}` } } } : null;
    const original = client.record("task", taskId(1)).data.title;
    const result = client.from("task").update(taskId(1), { title: "Not allowed" });
    assert.equal(client.record("task", taskId(1)).data.title, "Not allowed", "optimistic first");
    const { error } = await result;
    assert.equal(error.status, status);
    assert.equal(client.record("task", taskId(1)).data.title, original);
    assert.equal(client.record("task", taskId(1)).pending, false);
    assert.deepEqual(
      errors.map((e) => [e.kind, e.status, e.code, e.id]),
      [["rejected", status, code, taskId(1)]],
    );
    assert.equal(client.pendingWrites().length, 0);
  });
}

test("a refused insert removes the row again, with the queued edits of that row", async () => {
  const { backend, client, errors } = await setup();
  backend.refuse = (request) =>
    request.method === "POST" ? { status: 403, body: { error: { code: "forbidden", message: "viewers read only" } } } : null;
  const id = client.newId();
  const inserted = client.from("task").insert({ id, plan_id: PLAN, title: "X", starts_at: "2026-11-28T12:00:00Z", ends_at: "2026-11-28T13:00:00Z" });
  const edited = client.from("task").update(id, { title: "Y" });
  assert.equal(client.record("task", id).data.title, "Y");
  await inserted;
  const { error } = await edited;
  assert.equal(error.code, "forbidden");
  assert.equal(client.record("task", id), null);
  assert.equal(errors.length, 1, "one toast, not one per queued edit");
  assert.equal(client.pendingWrites().length, 0);
});

test("a rolled-back delete brings the row back", async () => {
  const { backend, client, errors } = await setup();
  backend.refuse = (request) =>
    request.method === "DELETE" ? { status: 403, body: { error: { code: "forbidden", message: "no" } } } : null;
  const result = client.from("task").delete(taskId(2));
  assert.equal(client.record("task", taskId(2)), null, "gone at once");
  await result;
  assert.equal(client.record("task", taskId(2)).data.id, taskId(2));
  assert.equal(errors[0].kind, "rejected");
});

test("409 stale_update takes the server's row and marks it updated elsewhere", async () => {
  const { clock, server, backend, client, errors } = await setup();
  // Offline, I edit at 09:00:00; meanwhile someone else edits at 09:00:05.
  server.online = false;
  const result = client.from("task").update(taskId(1), { title: "My offline edit" });
  await settle();
  assert.equal(client.record("task", taskId(1)).pending, true);
  clock.time += 5000;
  const theirs = task(taskId(1), { title: "Their later edit", updated_at: new Date(clock.now()).toISOString(), updated_by: OTHER });
  backend.rows.set(taskId(1), theirs);
  server.online = true;
  client.testNetwork.set(true);
  const { error } = await result;
  assert.equal(error.code, "stale_update");
  const record = client.record("task", taskId(1));
  assert.equal(record.data.title, "Their later edit", "last write wins: theirs was later");
  assert.equal(record.updatedElsewhere, true);
  assert.equal(record.pending, false);
  assert.equal(errors.at(-1).kind, "conflict");
  // A new edit of mine clears the mark.
  client.from("task").update(taskId(1), { title: "Again" });
  assert.equal(client.record("task", taskId(1)).updatedElsewhere, false);
});

test("a delete answered 404 (already gone) is not an error", async () => {
  const { backend, client, errors } = await setup();
  backend.rows.delete(taskId(2));
  const { error } = await client.from("task").delete(taskId(2));
  assert.equal(error, null);
  assert.equal(client.record("task", taskId(2)), null);
  assert.equal(errors.length, 0);
});

test("DELETE events remove rows; a late replay of an older change does not bring them back", async () => {
  const { server, client } = await setup();
  const row = client.record("task", taskId(2)).data;
  server.lastStream.change(50, row, { event: "DELETE" });
  await settle();
  assert.equal(client.record("task", taskId(2)), null);
  server.lastStream.change(49, row, { event: "UPDATE" });
  await settle();
  assert.equal(client.record("task", taskId(2)), null);
});

test("postgres_changes handlers get Supabase-shaped payloads, filtered by table, event and filter", async () => {
  const { server, client } = await setup();
  const all = [];
  const doneOnly = [];
  const inserts = [];
  client
    .channel(`plan:${PLAN}`)
    .on("postgres_changes", { table: "task" }, (p) => all.push(p))
    .on("postgres_changes", { table: "task", event: "UPDATE", filter: "status=eq.done" }, (p) => doneOnly.push(p))
    .on("postgres_changes", { event: "INSERT" }, (p) => inserts.push(p))
    .subscribe();
  await settle();
  server.lastStream.change(60, task(taskId(1), { status: "done", updated_at: "2026-11-28T08:10:00+00:00" }), { old: { status: "taken" } });
  server.lastStream.change(61, task(taskId(2), { title: "t", updated_at: "2026-11-28T08:10:00+00:00" }));
  server.lastStream.change(62, task(taskId(3)), { event: "INSERT" });
  server.lastStream.change(63, task(taskId(4)), { event: "INSERT", channels: ["plan:44444444-4444-4444-8444-444444444444"] });
  await settle();
  assert.deepEqual(all.map((p) => p.id), ["60", "61", "62"]);
  assert.deepEqual(doneOnly.map((p) => p.id), ["60"]);
  assert.deepEqual(inserts.map((p) => p.new.id), [taskId(3)]);
  assert.deepEqual(all[0].old, { status: "taken" });
  assert.equal(all[0].eventType, "UPDATE");
  assert.equal(all[0].table, "task");
});
