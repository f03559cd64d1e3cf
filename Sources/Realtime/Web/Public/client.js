// client.js — the client: one stream for all channels (connection.js), the local rows (store.js), the write queue
// (queue.js), the table map (tables.js), the server's clock (serverclock.js), the delay reports (delays.js) and the
// channels (channel.js, presence.js), put together behind supabase-js's shape.
// One file over 400 lines because it is that public surface: most methods are a few lines handing over to those
// modules, and the rest is the glue between them (what a frame or control event means for the rows and channels).

import { Connection, Status, apiError, cursorSequence, readJSON } from "./connection.js";
import { browserNetwork, browserPageLifecycle, randomUUID, systemClock } from "./platform.js";
import { ServerClock } from "./serverclock.js";
import { RealtimeChannel } from "./channel.js";
import { RowStore } from "./store.js";
import { WriteQueue } from "./queue.js";
import { browserTabs, createIndexedDBStorage, localTabs } from "./storage.js";
import { TableMap } from "./tables.js";
import { DEFAULT_REPORT_DELAY_EVERY_MS, DelayReporter } from "./delays.js";

/** Creates a client; see RealtimeClient. */
export function createClient(options) {
  return new RealtimeClient(options);
}

/**
 * The client.
 *
 * Options: `url` (the server, default the page's origin), `token` (a JWT), `getToken()` (async, returns a fresh
 * token on 401 or `token_expired`), and for tests or special hosts `fetch`, `storage` (see createIndexedDBStorage),
 * `tabs` (see browserTabs), `clock` ({now, setTimeout, clearTimeout}), `random`, `network` ({isOnline, subscribe}),
 * `pageLifecycle` ({onHide}), `uuid()` (ids of new rows and Idempotency-Keys), and the limits:
 * - `staleAfterMs` (60 s): without a healthy connection for longer, the status is `stale`;
 * - `stallTimeoutMs` (45 s): a stream without a byte for longer (keepalives included) is lost;
 * - `connectTimeoutMs` (15 s) for a stream request's answer, `requestTimeoutMs` (15 s) for a REST call's;
 * - `maxWriteAttempts` (5): tries of a write answered 5xx/408/429 or timed out before it is marked failed;
 * - `maxRows` (50,000 a table) and `maxTombstones` (10,000 a table): the local store's bounds;
 * - `reportDelayEveryMs` (30 s; 0 turns it off): how often the delays seen from a change's commit to its arrival
 *   (live changes only, on the server's clock as estimated) go to `POST /realtime/v1/slo/client-delay`.
 */
export class RealtimeClient {
  constructor({
    url = globalThis.location?.origin ?? "",
    token,
    getToken = null,
    fetch: fetchImpl = globalThis.fetch?.bind(globalThis),
    storage = createIndexedDBStorage(),
    tabs = null,
    clock = systemClock,
    random = Math.random,
    network = browserNetwork(),
    pageLifecycle = browserPageLifecycle(),
    uuid = () => randomUUID(),
    staleAfterMs,
    stallTimeoutMs,
    connectTimeoutMs,
    requestTimeoutMs,
    maxWriteAttempts,
    maxRows,
    maxTombstones,
    reportDelayEveryMs = DEFAULT_REPORT_DELAY_EVERY_MS,
  } = {}) {
    this.clock = clock;
    this.random = random;
    this.uuid = uuid;
    this.network = network;
    this.pageLifecycle = pageLifecycle;
    this.storage = storage;
    this.listeners = { status: new Set(), change: new Set(), error: new Set(), reset: new Set(), queue: new Set() };
    this.serverClock = new ServerClock(clock);
    this.connection = new Connection(this, {
      url,
      token,
      getToken,
      fetch: fetchImpl,
      clock,
      serverClock: this.serverClock,
      random,
      network,
      staleAfterMs,
      stallTimeoutMs,
      connectTimeoutMs,
      requestTimeoutMs,
    });
    this.url = this.connection.url;
    /** Every channel made by channel() and not removed, by name; `channels` holds those subscribed. */
    this.registry = new Map();
    this.channels = new Map();
    this.closed = false;
    this.delays = new DelayReporter({
      clock,
      random,
      everyMs: reportDelayEveryMs,
      streamOpenedAt: () => this.connection.streamOpenedAt,
      serverNow: () => this.serverNow(),
      request: (...args) => this.request(...args),
    });

    this.store = new RowStore({
      clock,
      maxRows,
      maxTombstones,
      userId: () => this.connection.userId,
      onChange: (change) => this.emit("change", change),
    });
    /** The server's table map (GET /realtime/v1/tables): read once, when a write is first sent. */
    this.tableMap = new TableMap({ request: (...args) => this.request(...args) });
    this.writes = new WriteQueue({
      store: this.store,
      storage,
      tabs: tabs ?? (storage.kind === "indexeddb" ? browserTabs() : localTabs()),
      request: (...args) => this.request(...args),
      tables: this.tableMap,
      clock,
      random,
      network,
      uuid,
      serverNow: () => this.serverClock.stampNow(),
      emitError: (error) => this.emitError(error),
      reportError: (error) => this.reportCallbackError(error),
      onChange: (writes) => this.emit("queue", writes),
      maxWriteAttempts,
      scope: `${this.url}:${this.connection.userId ?? "anonymous"}`,
    });
    this.ready = this.writes.ready;

    this.stopNetwork = this.network.subscribe((online) => this.networkChanged(online));
    this.stopPageHide = null;
  }

  // ------------------------------------------------------------------ observing

  /** connecting | live | offline | stale. */
  get status() {
    return this.connection.status;
  }

  /** The token in use. */
  get token() {
    return this.connection.token;
  }

  /** The signed-in user's id (the token's `sub`). */
  get userId() {
    return this.connection.userId;
  }

  /** The cursor the stream resumes from. */
  get cursor() {
    return this.connection.cursor;
  }

  /** The local rows, table → id → entry (read-only; for inspection and tests). */
  get tables() {
    return this.store.tables;
  }

  get tombstones() {
    return this.store.tombstones;
  }

  /** Calls `callback(status)` now and at every change; returns an unsubscribe function. */
  onStatus(callback) {
    this.listeners.status.add(callback);
    this.safely(callback, this.status);
    return () => this.listeners.status.delete(callback);
  }

  /** Calls `callback({table, id, record})` whenever a local row changes (server change, local write, rollback). */
  onChange(callback) {
    this.listeners.change.add(callback);
    return () => this.listeners.change.delete(callback);
  }

  /**
   * Calls `callback(error)` for what the user should hear about: `{kind, status, code, message, …}` with kind
   * "rejected" (a write was rolled back), "conflict" (409: the server's row was taken), "failed" (a write gave up
   * after its retries: offer retryWrite/discardWrite), "revoked", "auth", "stream" or "presence".
   */
  onError(callback) {
    this.listeners.error.add(callback);
    return () => this.listeners.error.delete(callback);
  }

  /** Calls `callback()` after the server said `reset` and the snapshots were reloaded. */
  onReset(callback) {
    this.listeners.reset.add(callback);
    return () => this.listeners.reset.delete(callback);
  }

  /** Calls `callback(pendingWrites)` whenever the write queue changes. */
  onQueue(callback) {
    this.listeners.queue.add(callback);
    return () => this.listeners.queue.delete(callback);
  }

  /** Runs a listener, reporting (never throwing) its failure. */
  safely(callback, value) {
    try {
      callback(value);
    } catch (error) {
      this.reportCallbackError(error);
    }
  }

  reportCallbackError(error) {
    globalThis.console?.error?.("realtime: a callback failed", error);
  }

  emit(kind, value) {
    for (const callback of [...this.listeners[kind]]) this.safely(callback, value);
  }

  emitError(error) {
    this.emit("error", error);
  }

  // ------------------------------------------------------------------ what the connection tells

  statusChanged(status) {
    this.emit("status", status);
  }

  streamLive() {
    this.writes.resume();
  }

  /** Now on the server's clock, as estimated from Date headers and commit timestamps. */
  serverNow() {
    return this.serverClock.serverNow();
  }

  /** A REST call with the token and a deadline (see Connection.request). */
  request(method, path, body, options) {
    return this.connection.request(method, path, body, options);
  }

  /** Reconnects now, skipping the backoff wait (the page's "retry now"), and sends the queue. */
  reconnectNow() {
    this.connection.reconnectNow();
    this.writes.resume({ resetBackoff: true });
  }

  // ------------------------------------------------------------------ channels

  /**
   * The channel named `name` (`plan:<id>`, `branch:<id>`); call `.on(…)` and `.subscribe()` on it. A name already
   * in use gives the existing channel (as supabase-js does), so two parts of a page never replace each other's.
   */
  channel(name) {
    let channel = this.registry.get(name);
    if (!channel) {
      channel = new RealtimeChannel(this, name);
      this.registry.set(name, channel);
    }
    return channel;
  }

  /** Every channel made by channel() and not removed (supabase-js's getChannels). */
  getChannels() {
    return [...this.registry.values()];
  }

  /** Unsubscribes a channel and forgets it: channel(name) then makes a new one. Resolves "ok". */
  async removeChannel(channel) {
    const result = await channel.unsubscribe();
    if (this.registry.get(channel.name) === channel) this.registry.delete(channel.name);
    return result;
  }

  /** Removes every channel. */
  async removeAllChannels() {
    return Promise.all(this.getChannels().map((channel) => this.removeChannel(channel)));
  }

  addChannel(channel) {
    this.registry.set(channel.name, channel);
    this.channels.set(channel.name, channel);
    this.channelsChanged();
  }

  /** Takes a channel off the stream (it stays usable: subscribe() again). */
  detachChannel(channel) {
    if (this.channels.get(channel.name) === channel) this.channels.delete(channel.name);
    this.channelsChanged();
  }

  channelsChanged() {
    this.connection.channelsChanged();
  }

  // ------------------------------------------------------------------ frames

  /** Dispatches one frame; returns the control event (`{type, reason}`) that ends the stream, if it is one. */
  handleFrame(frame) {
    let data;
    try {
      data = JSON.parse(frame.data);
    } catch {
      return null;
    }
    switch (frame.event) {
      case "postgres_changes":
        if (frame.id) this.connection.cursor = frame.id;
        this.serverClock.noteCommitTime(data.commit_timestamp);
        this.delays.note(data.commit_timestamp);
        this.applyChangeEvent(data, frame.id);
        return null;
      case "presence": {
        const channel = this.channels.get(String(data.channel ?? "").replace(/^presence:/, ""));
        channel?.dispatchPresence(data);
        return null;
      }
      case "broadcast":
        this.channels.get(data.channel)?.dispatchBroadcast(data);
        return null;
      case "token_expired":
      case "reset":
      case "revoked":
      case "error":
        return { type: frame.event, reason: data?.reason ?? "" };
      default:
        return null;
    }
  }

  /** What a control event asks for: a fresh token, a snapshot reload, dropping a channel, or a reconnect. */
  async handleControl(generation, control) {
    const connection = this.connection;
    switch (control.type) {
      case "token_expired":
        if (await connection.refreshToken()) {
          if (generation === connection.generation) connection.connect();
        } else {
          this.emitError({ kind: "auth", status: 401, code: "token_expired", message: control.reason });
          connection.streamFailed(generation);
        }
        return;
      case "reset":
        await this.reloadSnapshots();
        if (generation === connection.generation) connection.connect();
        return;
      case "revoked": {
        this.emitError({ kind: "revoked", status: null, code: "revoked", message: control.reason });
        await this.dropInvisibleChannels();
        if (generation !== connection.generation) return;
        if (connection.streamChannels().length > 0) connection.connect();
        else connection.streamFailed(generation, { noRetry: true });
        return;
      }
      default:
        connection.streamFailed(generation);
    }
  }

  /**
   * Finds the channels this user may no longer see (after `revoked` or a 404), stops them and reports each with
   * CHANNEL_ERROR and an error. Returns how many were dropped.
   */
  async dropInvisibleChannels() {
    let dropped = 0;
    for (const channel of [...this.channels.values()]) {
      const [kind, id] = channel.name.split(":");
      let visible = true;
      try {
        if (kind === "plan") {
          const response = await this.request("GET", `/rest/v1/plans/${id}`);
          visible = response.status !== 404 && response.status !== 403;
        } else if (kind === "branch") {
          const response = await this.request("GET", `/rest/v1/branches?id=eq.${id}`);
          const rows = response.ok ? await readJSON(response) : null;
          visible = !(response.ok && Array.isArray(rows) && rows.length === 0) && response.status !== 404;
        }
      } catch {
        visible = true;
      }
      if (!visible) {
        dropped++;
        this.channels.delete(channel.name);
        const error = { kind: "revoked", status: 404, code: "not_found", message: `No access to ${channel.name}.`, channel: channel.name };
        channel.report("CHANNEL_ERROR", error);
        this.emitError(error);
      }
    }
    return dropped;
  }

  /** Applies a `postgres_changes` event to the local rows, then hands it to the channels it names. */
  applyChangeEvent(event, id) {
    const seq = cursorSequence(id);
    if (event.event === "DELETE") this.store.applyServerDelete(event.table, event.old_record, { remote: true });
    else this.store.applyServerRow(event.table, event.record, { remote: true, seq });
    const payload = {
      schema: event.schema,
      table: event.table,
      commit_timestamp: event.commit_timestamp,
      eventType: event.event,
      new: event.record ?? {},
      old: event.old_record ?? {},
      channels: event.channels ?? [],
      id,
      errors: null,
    };
    for (const name of payload.channels) this.channels.get(name)?.dispatchChange(payload);
  }

  // ------------------------------------------------------------------ the network, the token, closing

  /** The browser went offline (drop the stream and the write in flight now) or online (reconnect and replay now). */
  networkChanged(online) {
    if (this.closed) return;
    this.connection.networkChanged(online);
    if (online) this.writes.resume({ resetBackoff: true });
    else this.writes.offline();
  }

  /** Replaces the token (e.g. after a new login of the same user); setAuth also resumes what waited for it. */
  setToken(token) {
    this.connection.setToken(token);
  }

  /**
   * Gives the client a new token (as supabase-js's `setAuth`): the stream reopens with it, writes that stopped on a
   * 401 are sent again, and channels refused for access (not for their name) try again.
   */
  setAuth(token) {
    const changed = this.connection.setToken(token);
    this.writes.authBlocked = false;
    let rejoined = false;
    for (const channel of this.registry.values()) {
      if (channel.state !== "errored" || channel.errorStatus === 400) continue;
      channel.subscribe();
      rejoined = true;
    }
    if ((changed || rejoined) && this.connection.streamChannels().length > 0) this.channelsChanged();
    this.writes.resume();
  }

  /** Stops everything: the stream, timers, presence (a keepalive leave) and listeners of the window. */
  close() {
    this.leaveAll();
    this.closed = true;
    this.connection.close();
    this.writes.close();
    this.delays.close();
    for (const channel of this.registry.values()) {
      channel.presence.stopTimer();
      channel.clearSubscribeTimer();
    }
    this.stopNetwork?.();
    this.stopPageHide?.();
  }

  // ------------------------------------------------------------------ presence on page hide

  /** Installs (once) the page-hide handler that tells the server this user left. */
  watchPageHide() {
    if (this.stopPageHide) return;
    this.stopPageHide = this.pageLifecycle.onHide(() => this.leaveAll());
  }

  /** Leaves every tracked channel with `keepalive` fetches, which outlive the page. */
  leaveAll() {
    for (const channel of this.channels.values()) channel.presence.leaveOnHide();
  }

  // ------------------------------------------------------------------ the local rows

  /**
   * The row as the user should see it — the server's version with the pending writes on top — as
   * `{ table, id, data, pending, failed, updatedElsewhere, changedAt }`, or null (see RowStore.record).
   */
  record(table, id) {
    return this.store.record(table, id);
  }

  /** Every visible row of `table` (optionally only those for which `where(data)` holds). */
  records(table, where = null) {
    return this.store.records(table, where);
  }

  /**
   * Takes rows read through REST (e.g. `GET /rest/v1/attachments?task_id=eq.…`) into the local rows, so that
   * record()/records() show them and the stream's changes keep them current. An older copy never replaces a newer.
   */
  remember(table, rows) {
    for (const row of rows ?? []) this.store.applyServerRow(table, row);
  }

  /**
   * Loads a plan's snapshot (`GET /rest/v1/plans/{id}/snapshot`): the plan and its tasks become the local rows
   * (tasks of the plan that the snapshot no longer has are dropped, unless a write of them is pending), and the
   * stream resumes from the snapshot's cursor when that is earlier than its own. Rejects with `{status, code}`.
   */
  async loadPlan(planId) {
    const response = await this.request("GET", `/rest/v1/plans/${planId}/snapshot`);
    const body = await readJSON(response);
    if (!response.ok) throw apiError("snapshot", response.status, body, { plan_id: planId });
    this.store.applySnapshot(planId, body, cursorSequence(body.cursor));
    this.rewindCursor(body.cursor);
    return body;
  }

  /** Stops holding a plan's rows as loaded (they may be forgotten once the store is full). */
  unloadPlan(planId) {
    this.store.unloadPlan(planId);
  }

  /** Moves the stream's cursor back to `cursor` when it is earlier (and reopens a running stream). */
  rewindCursor(cursor) {
    const connection = this.connection;
    if (!cursor) return;
    if (connection.cursor !== null && cursorSequence(cursor) > cursorSequence(connection.cursor)) return;
    if (connection.cursor === cursor) return;
    connection.cursor = cursor;
    if (connection.stream && connection.status === Status.LIVE) this.channelsChanged();
  }

  /** After `reset`: the cursor is useless, so every loaded plan is read again and streaming starts from there. */
  async reloadSnapshots() {
    this.connection.cursor = null;
    for (const planId of [...this.store.loadedPlans]) {
      try {
        await this.loadPlan(planId);
      } catch (error) {
        this.emitError({ ...error, kind: "stream" });
      }
    }
    this.emit("reset", undefined);
  }

  // ------------------------------------------------------------------ writes

  /**
   * Writes on one table: `insert(values)`, `update(id, patch)` or `update(patch).eq("id", id)` (as supabase-js has
   * it), `delete(id)` or `delete().eq("id", id)`. Each applies at once, joins the queue and returns a promise of
   * `{ data, error }`, settled when the server has answered (which, offline, may be after a reconnect). An insert
   * without an `id` gets a new UUID (the temp id, which the server keeps). The table is named in the singular, as
   * the stream names it (`task`), or as its REST collection (`tasks`): the server's table map (`GET
   * /realtime/v1/tables`, read when a write is first sent) says which, so a table it does not have, or that cannot
   * be written, is found out only then: that write is rolled back and resolves `{data: null, error}` with
   * `error.code` `unknown_table` or `read_only_table`, unsent.
   */
  from(name) {
    if (typeof name !== "string" || name === "") throw new Error("from() needs a table's name");
    const byId = (run) => ({
      eq: (column, value) => {
        if (column !== "id") throw new Error("writes pick their row by id: .eq('id', id)");
        return run(value);
      },
    });
    const enqueue = (kind, id, values) => this.writes.enqueue(kind, name, id, values);
    return {
      insert: (values) => enqueue("insert", values.id ?? this.uuid(), values),
      update: (idOrPatch, patch) =>
        typeof idOrPatch === "string" ? enqueue("update", idOrPatch, patch) : byId((id) => enqueue("update", id, idOrPatch)),
      delete: (id) => (typeof id === "string" ? enqueue("delete", id, null) : byId((rowId) => enqueue("delete", rowId, null))),
    };
  }

  /** A fresh UUID for a row made here. */
  newId() {
    return this.uuid();
  }

  /** The writes waiting for the server, oldest first (see WriteQueue.pending). */
  pendingWrites() {
    return this.writes.pending();
  }

  /** Sends a failed write again. */
  retryWrite(key) {
    return this.writes.retry(key);
  }

  /** Gives a write up; its row shows the server's version again. */
  discardWrite(key) {
    return this.writes.discard(key);
  }
}
