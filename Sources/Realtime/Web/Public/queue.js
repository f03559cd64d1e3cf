// queue.js — the write queue: each write applies at once (through the row store), is kept in storage as one record
// per write, and is sent in order with its own Idempotency-Key by one tab at a time; the answer settles it
// (confirmed, refused and rolled back, or replaced by the server's row on 409). Failing writes are retried a bounded
// number of times, then marked failed for the user to retry or discard; a 401 stops the queue until setAuth().
// Where a write goes comes from the server's table map (tables.js), read when a write is first sent.
// One file over 400 lines because every part of it (adding, storage, the other tabs' messages, sending, settling)
// reads and changes the same ordered list of writes and their rows' pending state: apart, each would reach into it.

import { apiError, backoffDelay, readJSON } from "./connection.js";
import { localTabs } from "./storage.js";
import { TableMap } from "./tables.js";

export const DEFAULT_MAX_WRITE_ATTEMPTS = 5;

/**
 * The queue. Its `store` is what shows the rows: `setPending(table, id, ops, {fresh})`, `settleWrite(table, id, ops,
 * {row, deleted, conflict})`, `hasServerRow(table, id)` and `record(table, id)` (see store.js). `request(method, path,
 * body, {headers, signal})` is the REST call (connection.js); `tables` the server's table map (tables.js; by default
 * one read through `request`). `scope` names this user's queue in storage and among tabs; `onChange(writes)` hears
 * every change of the queue, `emitError(error)` what the user should hear of.
 */
export class WriteQueue {
  constructor({
    store,
    storage,
    tabs = localTabs(),
    request,
    tables = new TableMap({ request }),
    clock,
    random = Math.random,
    network = { isOnline: () => true },
    uuid,
    serverNow = () => clock.now(),
    emitError = () => {},
    reportError = () => {},
    onChange = () => {},
    maxWriteAttempts = DEFAULT_MAX_WRITE_ATTEMPTS,
    scope = "default",
  }) {
    Object.assign(this, { store, storage, tabs, request, tables, clock, random, network, uuid, serverNow, emitError, reportError, onChange });
    this.maxWriteAttempts = maxWriteAttempts;
    /** The writes waiting for the server, this tab's and other tabs' (`own: false`), in storage-key order. */
    this.ops = [];
    /** Settled writes whose promises resolve once the queue no longer holds them. */
    this.settledWrites = [];
    this.flushing = false;
    this.flushAgain = false;
    /** Set while the writer waits (for the network, or a backoff timer): a new write does not kick it. */
    this.blocked = false;
    this.authBlocked = false;
    this.attempt = 0;
    this.timer = null;
    this.controller = null;
    this.inFlight = null;
    this.counter = 0;
    this.closed = false;
    this.persisting = Promise.resolve();
    this.legacyKey = `realtime:queue:${scope}`;
    this.prefix = `realtime:write:${scope}:`;
    this.lockName = `realtime-writer:${scope}`;
    this.port = this.tabs.channel?.(`realtime-queue:${scope}`) ?? null;
    if (this.port) this.port.onmessage = (event) => this.tabMessage(event.data);
    this.ready = this.load();
  }

  // ------------------------------------------------------------------ what the page sees

  /**
   * The writes waiting for the server, oldest first, each with `pending: true`, `failed` (retries used up: offer
   * `retry(key)` or `discard(key)`), the last `error`, `attempts`, and `own` (false for another tab's write).
   */
  pending() {
    return this.ops.map((op) => ({
      key: op.key,
      table: op.table,
      kind: op.kind,
      id: op.id,
      values: op.values,
      pending: true,
      failed: op.failed,
      error: op.error,
      attempts: op.attempts,
      own: op.own,
    }));
  }

  changed() {
    this.onChange(this.pending());
  }

  // ------------------------------------------------------------------ adding writes

  /**
   * Queues a write (applied at once); resolves `{data, error}` once the server has answered. `table` is named in the
   * singular or by its collection: the singular is kept when the table map already says which it is, else the name
   * as given, resolved when the write is sent (a table the map does not have, or that cannot be written, is refused
   * then).
   */
  enqueue(kind, name, id, values) {
    const table = this.tables.known(name)?.table ?? name;
    const createdAt = this.serverNow();
    const key = this.uuid();
    const op = {
      key,
      kind,
      table,
      id,
      // Stamped in the server's time (as far as known), so that a device clock that is off loses no edit.
      values: kind === "delete" ? null : { ...values, updated_at: new Date(createdAt).toISOString() },
      createdAt,
      storageKey: `${this.prefix}${String(createdAt).padStart(15, "0")}:${String(++this.counter).padStart(8, "0")}:${key}`,
      attempts: 0,
      failed: false,
      error: null,
      own: true,
    };
    if (kind === "insert") op.values.id = id;
    const promise = new Promise((resolve) => {
      op.resolve = resolve;
    });
    this.add(op, { fresh: true });
    // Other tabs hear of it once it is stored: the tab that replays looks for the record before sending.
    this.persist(op).then(() => this.tell({ type: "added", record: this.stored(op) }));
    this.changed();
    if (!this.blocked) this.kick();
    return promise;
  }

  opsOf(table, id) {
    return this.ops.filter((other) => other.table === table && other.id === id);
  }

  /** Puts a write in the queue (ordered by its storage key) and on its row. */
  add(op, options = {}) {
    let index = this.ops.length;
    while (index > 0 && this.ops[index - 1].storageKey > op.storageKey) index--;
    this.ops.splice(index, 0, op);
    this.store.setPending(op.table, op.id, this.opsOf(op.table, op.id), options);
  }

  /**
   * Names a write's table in the singular, as the table map has it (a write made as `from("tasks")` before the map
   * was here): its pending state moves to where the stream's rows of that table are.
   */
  retable(op, table) {
    const before = op.table;
    op.table = table;
    this.store.setPending(before, op.id, this.opsOf(before, op.id));
    this.store.setPending(table, op.id, this.opsOf(table, op.id));
  }

  /** Renames to the singular every queued write named by its collection, once the map is here; returns how many. */
  canonicalize() {
    let renamed = 0;
    for (const op of this.ops) {
      const table = this.tables.known(op.table)?.table;
      if (!table || table === op.table) continue;
      this.retable(op, table);
      this.persist(op);
      this.tell({ type: "updated", record: this.stored(op) });
      renamed++;
    }
    if (renamed > 0) this.changed();
    return renamed;
  }

  /** Takes writes out of the queue (the row is the caller's business). */
  remove(...ops) {
    const gone = new Set(ops);
    this.ops = this.ops.filter((other) => !gone.has(other));
  }

  /** What is stored (and told to other tabs) of a write. */
  stored(op) {
    const { key, kind, table, id, values, createdAt, storageKey, attempts, failed, error } = op;
    return { key, kind, table, id, values, createdAt, storageKey, attempts, failed, error };
  }

  /** A write restored from storage or told by another tab: no promise here. */
  foreign(record) {
    return { attempts: 0, failed: false, error: null, ...record, own: false, resolve: null };
  }

  // ------------------------------------------------------------------ storage and the other tabs

  /** Saves one write's record (saves run in order, one at a time). */
  persist(op) {
    const record = this.stored(op);
    this.persisting = this.persisting.then(() => this.storage.set(op.storageKey, record)).catch((error) => this.reportError(error));
    return this.persisting;
  }

  /** Deletes one write's record. */
  unpersist(op) {
    this.persisting = this.persisting.then(() => this.storage.delete(op.storageKey)).catch((error) => this.reportError(error));
    return this.persisting;
  }

  /** Tells the other tabs of this user what happened to the queue. */
  tell(message) {
    try {
      this.port?.postMessage(message);
    } catch (error) {
      this.reportError(error);
    }
  }

  /** What another tab told: a write added, changed (failed, retried) or settled. */
  tabMessage(message) {
    if (this.closed || !message) return;
    const op = this.ops.find((other) => other.key === (message.key ?? message.record?.key));
    switch (message.type) {
      case "added":
      case "updated":
        if (op) {
          Object.assign(op, { attempts: message.record.attempts, failed: message.record.failed, error: message.record.error });
          if (message.record.table !== op.table) this.retable(op, message.record.table);
          this.store.setPending(op.table, op.id, this.opsOf(op.table, op.id));
        } else {
          this.add(this.foreign(message.record));
        }
        this.changed();
        if (message.type === "updated" && !message.record.failed) this.kick();
        return;
      case "settled":
        if (!op) return;
        this.settle(op, message);
        this.release();
        this.changed();
        return;
      case "rolledback":
        if (!op) return;
        this.rollback(op, message.error, { report: true });
        this.release();
        this.changed();
        return;
      default:
    }
  }

  /**
   * Restores the writes stored by a previous page or by other open tabs (their rows show as pending at once) and
   * starts replaying them. A queue stored the old way (one array under one key) is moved to one record per write.
   */
  async load() {
    let records = [];
    try {
      const legacy = await this.storage.get(this.legacyKey);
      if (Array.isArray(legacy) && legacy.length > 0) {
        let n = 0;
        for (const op of legacy) {
          const storageKey = `${this.prefix}${String(op.createdAt ?? 0).padStart(15, "0")}:${String(n++).padStart(8, "0")}:${op.key}`;
          await this.storage.set(storageKey, { ...op, storageKey, attempts: 0, failed: false, error: null });
        }
        await this.storage.delete(this.legacyKey);
      }
      records = this.storage.list ? await this.storage.list(this.prefix) : [];
    } catch (error) {
      this.reportError(error);
    }
    let added = 0;
    for (const [storageKey, record] of records) {
      if (this.ops.some((op) => op.key === record.key)) continue;
      this.add(this.foreign({ ...record, storageKey }));
      added++;
    }
    if (added > 0) this.changed();
    this.kick();
  }

  // ------------------------------------------------------------------ sending

  /** Starts replaying the queue (or asks the running replay to go round again). */
  kick() {
    if (this.closed) return;
    if (this.flushing) {
      this.flushAgain = true;
      return;
    }
    this.clearTimer();
    this.flush();
  }

  /** The browser is online again, the stream is live, or the token changed: try now. */
  resume({ resetBackoff = false } = {}) {
    if (resetBackoff) this.attempt = 0;
    this.blocked = false;
    this.kick();
  }

  /** The browser went offline: a write in flight will not be answered now (it is sent again, with its key). */
  offline() {
    this.controller?.abort();
  }

  clearTimer() {
    if (this.timer !== null) this.clock.clearTimeout(this.timer);
    this.timer = null;
  }

  /**
   * Replays the queue while holding the tabs' writer lock, so that one tab of this user sends at a time (the
   * others' writes included: they are all in storage); goes round again when kicked meanwhile.
   */
  async flush() {
    if (this.flushing) return;
    this.flushing = true;
    try {
      await this.ready;
      do {
        this.flushAgain = false;
        await this.tabs.lock(this.lockName, () => this.replay());
        if (this.flushAgain) this.clearTimer();
      } while (this.flushAgain && !this.closed);
    } catch (error) {
      this.reportError(error);
    } finally {
      this.flushing = false;
    }
  }

  /** Sends the queued writes one by one, in order; stops at the first that cannot reach the server. */
  async replay() {
    for (;;) {
      if (this.closed || this.authBlocked) return;
      const op = this.ops.find((other) => !other.failed);
      if (!op) return;
      if (!this.network.isOnline()) {
        this.blocked = true;
        return;
      }
      await this.persisting;
      if (this.port && (await this.storage.get(op.storageKey)) === undefined) {
        // Another tab sent it meanwhile (its message may still be on the way).
        if (this.ops.includes(op)) this.settledElsewhere(op);
        continue;
      }
      this.inFlight = op;
      const outcome = await this.send(op);
      this.inFlight = null;
      if (outcome === "retry") {
        this.blocked = true;
        const delay = backoffDelay(this.attempt++, this.random);
        this.clearTimer();
        this.timer = this.clock.setTimeout(() => {
          this.timer = null;
          this.kick();
        }, delay);
        return;
      }
      if (outcome === "blocked") return;
      this.attempt = 0;
      this.blocked = false;
      if (outcome === "failed") continue;
      this.unpersist(op);
      this.changed();
      this.release();
    }
  }

  /** Resolves the promises of the writes settled so far. */
  release() {
    for (const [settled, value] of this.settledWrites.splice(0)) settled.resolve?.(value);
  }

  /** A write whose record another tab removed without a word reaching here: it was sent; the stream brings its row. */
  settledElsewhere(op) {
    this.remove(op);
    this.store.setPending(op.table, op.id, this.opsOf(op.table, op.id));
    op.resolve?.({ data: this.store.record(op.table, op.id)?.data ?? null, error: null });
    this.changed();
  }

  /**
   * Sends one queued write. Returns "done" (settled either way), "retry" (not reached, or a 5xx/408/429/timeout
   * with tries left), "failed" (tries used up: kept, marked failed, the queue moves on) or "blocked" (401 with no
   * fresh token: the queue waits for setAuth()). Its collection comes from the table map, read first if need be:
   * a map that cannot be read is retried as a write that cannot reach the server is (the write waits, its tries
   * untouched); a table the map does not have, or that cannot be written, refuses the write unsent.
   */
  async send(op) {
    const headers = { "Idempotency-Key": op.key };
    const controller = new AbortController();
    this.controller = controller;
    let entry;
    try {
      entry = await this.tables.resolve(op.table);
    } catch {
      if (this.controller === controller) this.controller = null;
      return "retry";
    }
    if (!entry || !entry.writable) {
      if (this.controller === controller) this.controller = null;
      const error = entry
        ? { kind: "rejected", status: null, code: "read_only_table", message: `The table ${op.table} cannot be written.` }
        : { kind: "rejected", status: null, code: "unknown_table", message: `The server has no table ${op.table}.` };
      return this.refuse(op, { ...error, table: op.table, id: op.id, op: op.kind });
    }
    this.canonicalize();
    const collection = `/rest/v1/${entry.path}`;
    let response;
    try {
      const options = { headers, signal: controller.signal };
      if (op.kind === "insert") response = await this.request("POST", collection, op.values, options);
      else if (op.kind === "update") response = await this.request("PATCH", `${collection}/${op.id}`, op.values, options);
      else response = await this.request("DELETE", `${collection}/${op.id}`, undefined, options);
    } catch (error) {
      // Offline (or dropped when the browser went offline): wait, whatever the count. A server that holds the request
      // past the deadline counts as a failed try, like a 5xx.
      if (error?.name === "TimeoutError") return this.tryFailed(op, { kind: "timeout", status: null, code: "timeout", message: error.message });
      return "retry";
    } finally {
      if (this.controller === controller) this.controller = null;
    }
    const body = response.status === 204 ? null : await readJSON(response);
    const settled = (outcome) => {
      this.settle(op, outcome);
      this.tell({ type: "settled", key: op.key, ...outcome });
      return "done";
    };
    if (response.ok) return op.kind === "delete" ? settled({ deleted: true }) : settled({ row: body });
    const code = body?.error?.code;
    if (response.status === 409 && code === "stale_update" && body.current) {
      settled({ row: body.current, conflict: true });
      this.emitError(apiError("conflict", 409, body, { table: op.table, id: op.id, op: op.kind }));
      return "done";
    }
    if (response.status === 409 && code === "duplicate" && op.kind === "insert") {
      const existing = await this.request("GET", `${collection}/${op.id}`).catch(() => null);
      if (existing?.ok) {
        settled({ row: await readJSON(existing), conflict: true });
        this.emitError(apiError("conflict", 409, body, { table: op.table, id: op.id, op: op.kind }));
        return "done";
      }
    }
    if (response.status === 404 && op.kind === "delete") return settled({ deleted: true });
    if (response.status === 401) {
      if (!this.authBlocked) this.emitError(apiError("auth", 401, body));
      this.authBlocked = true;
      return "blocked";
    }
    if (response.status >= 500 || response.status === 408 || response.status === 429) {
      return this.tryFailed(op, apiError("server", response.status, body, { table: op.table, id: op.id, op: op.kind }));
    }
    return this.refuse(op, apiError("rejected", response.status, body, { table: op.table, id: op.id, op: op.kind }));
  }

  /** Settles a write as refused: rolled back, reported, and the other tabs told. */
  refuse(op, error) {
    this.rollback(op, error, { report: true });
    this.tell({ type: "rolledback", key: op.key, error });
    return "done";
  }

  /** Counts a failed try: "retry" while tries are left, then the write is marked failed. */
  tryFailed(op, error) {
    op.attempts++;
    op.error = error;
    if (op.attempts < this.maxWriteAttempts) {
      this.persist(op);
      return "retry";
    }
    op.failed = true;
    this.persist(op);
    this.tell({ type: "updated", record: this.stored(op) });
    this.store.setPending(op.table, op.id, this.opsOf(op.table, op.id));
    this.changed();
    this.emitError({ ...error, kind: "failed", table: op.table, id: op.id, key: op.key });
    return "failed";
  }

  /** Sends a failed write again (its tries start over). Returns whether there was such a write. */
  retry(key) {
    const op = this.ops.find((other) => other.key === key);
    if (!op) return false;
    Object.assign(op, { failed: false, attempts: 0, error: null });
    this.persist(op);
    this.tell({ type: "updated", record: this.stored(op) });
    this.store.setPending(op.table, op.id, this.opsOf(op.table, op.id));
    this.changed();
    this.resume({ resetBackoff: true });
    return true;
  }

  /**
   * Gives up a write that is not being sent right now (typically a failed one): the row goes back to the server's
   * version and the write's promise resolves with the error `discarded`. Returns whether it was discarded.
   */
  discard(key) {
    const op = this.ops.find((other) => other.key === key);
    if (!op || op === this.inFlight) return false;
    const error = { kind: "discarded", status: null, code: "discarded", message: "The change was discarded.", table: op.table, id: op.id };
    this.rollback(op, error, { report: false });
    this.unpersist(op);
    this.tell({ type: "rolledback", key: op.key, error });
    this.release();
    this.changed();
    return true;
  }

  /** Takes the server's answer for a write: its row (or the deletion) replaces the optimistic state. */
  settle(op, { row = null, deleted = false, conflict = false }) {
    this.remove(op);
    this.store.settleWrite(op.table, op.id, this.opsOf(op.table, op.id), { row, deleted, conflict });
    this.settledWrites.push([op, { data: deleted ? null : row, error: conflict ? { code: "stale_update", status: 409 } : null }]);
  }

  /** Undoes a refused write (and the queued writes of a row whose insert was refused), and reports it. */
  rollback(op, error, { report }) {
    const dropped = [op];
    if (op.kind === "insert" && !this.store.hasServerRow(op.table, op.id)) dropped.push(...this.opsOf(op.table, op.id).filter((other) => other !== op));
    this.remove(...dropped);
    for (const other of dropped) if (other !== op) this.unpersist(other);
    this.store.settleWrite(op.table, op.id, this.opsOf(op.table, op.id));
    for (const other of dropped) this.settledWrites.push([other, { data: null, error }]);
    if (report) this.emitError(error);
  }

  /** Stops sending (the stored writes stay for the next page). */
  close() {
    this.closed = true;
    this.clearTimer();
    this.controller?.abort();
    this.port?.close?.();
  }
}
