// store.js — the local rows: the server's version of each row the client has seen (snapshots, events, REST
// answers) with the pending local writes on top, reconciled whichever of an answer and its event comes first, and
// bounded (rows of plans not loaded, and tombstones, are forgotten beyond a limit).

import { timeKey } from "./filters.js";

export const DEFAULT_MAX_ROWS = 50_000;
export const DEFAULT_MAX_TOMBSTONES = 10_000;

/** Shallow equality of two rows (column values are JSON scalars or small objects). */
export function sameRow(a, b) {
  if (a === b) return true;
  if (!a || !b) return false;
  const keys = Object.keys(a);
  if (keys.length !== Object.keys(b).length) return false;
  return keys.every((key) => JSON.stringify(a[key]) === JSON.stringify(b[key]));
}

/**
 * The row store. `onChange({table, id, record})` hears every visible change; `userId()` says who this client is
 * (a change by someone else marks the row's `changedAt`).
 *
 * A pending write (`op`) is `{kind: "insert"|"update"|"delete", values, failed}`; the write queue says which ops a
 * row has (setPending) and how each ended (settleWrite).
 */
export class RowStore {
  constructor({ clock, userId = () => null, onChange = () => {}, maxRows = DEFAULT_MAX_ROWS, maxTombstones = DEFAULT_MAX_TOMBSTONES } = {}) {
    this.clock = clock;
    this.userId = userId;
    this.onChange = onChange;
    this.maxRows = maxRows;
    this.maxTombstones = maxTombstones;
    /** table → id → { base, baseSeq, ops, updatedElsewhere, changedAt, seq, view } */
    this.tables = new Map();
    /** table → id → time key of the deleted row: a late replay of an older event must not bring it back. */
    this.tombstones = new Map();
    this.loadedPlans = new Set();
  }

  entries(table) {
    let map = this.tables.get(table);
    if (!map) {
      map = new Map();
      this.tables.set(table, map);
    }
    return map;
  }

  entry(table, id, create = false) {
    const map = this.entries(table);
    let entry = map.get(id);
    if (!entry && create) {
      entry = { base: null, baseSeq: -1, ops: [], updatedElsewhere: false, changedAt: null, seq: -1, view: undefined };
      map.set(id, entry);
    }
    return entry ?? null;
  }

  /**
   * The row as the user should see it — the server's version with the pending writes on top — as
   * `{ table, id, data, pending, failed, updatedElsewhere, changedAt }`, or null when it does not exist (or is
   * deleted). `pending` is true while a write of it waits in the queue; `failed` when one of those gave up (see
   * retryWrite/discardWrite); `updatedElsewhere` after a 409 took the server's row; `changedAt` is when (client
   * clock, ms) another user's change last reached it.
   */
  record(table, id) {
    const entry = this.entry(table, id);
    if (!entry) return null;
    if (entry.view === undefined) entry.view = this.computeView(table, id, entry);
    return entry.view;
  }

  /** Every visible row of `table` (optionally only those for which `where(data)` holds). */
  records(table, where = null) {
    const result = [];
    for (const id of this.entries(table).keys()) {
      const record = this.record(table, id);
      if (record && (!where || where(record.data))) result.push(record);
    }
    return result;
  }

  computeView(table, id, entry) {
    let data = entry.base ? { ...entry.base } : null;
    for (const op of entry.ops) {
      if (op.kind === "insert") data = { ...(data ?? {}), ...op.values, id };
      else if (op.kind === "update") data = data ? { ...data, ...op.values } : null;
      else if (op.kind === "delete") data = null;
    }
    if (!data) return null;
    return {
      table,
      id,
      data,
      pending: entry.ops.length > 0,
      failed: entry.ops.some((op) => op.failed),
      updatedElsewhere: entry.updatedElsewhere,
      changedAt: entry.changedAt,
    };
  }

  /** Recomputes a row's view and tells the change listener. */
  touch(table, id) {
    const entry = this.entry(table, id);
    if (entry) {
      entry.view = undefined;
      if (!entry.base && entry.ops.length === 0) this.entries(table).delete(id);
    }
    this.onChange({ table, id, record: this.record(table, id) });
  }

  /** Whether the server's version of a row is held (a refused insert of a row the server has is only an edit). */
  hasServerRow(table, id) {
    return Boolean(this.entry(table, id)?.base);
  }

  /** The pending writes of a row, oldest first (the queue's order); `fresh` clears "updated elsewhere". */
  setPending(table, id, ops, { fresh = false } = {}) {
    const entry = this.entry(table, id, true);
    entry.ops = ops;
    if (fresh) entry.updatedElsewhere = false;
    this.touch(table, id);
  }

  /**
   * A write ended: `ops` are the row's remaining pending writes, and the answer is the server's `row`, or `deleted`,
   * or nothing (refused: the row shows without it); `conflict` marks it updated elsewhere (409).
   */
  settleWrite(table, id, ops, { row = null, deleted = false, conflict = false } = {}) {
    const entry = this.entry(table, id, true);
    entry.ops = ops;
    if (deleted) {
      this.applyServerDelete(table, { ...(entry.base ?? {}), id, updated_at: undefined });
    } else if (row) {
      this.applyServerRow(table, row);
    }
    if (conflict) {
      const current = this.entry(table, id, true);
      current.updatedElsewhere = true;
      current.changedAt = this.clock.now();
    }
    this.touch(table, id);
  }

  /**
   * Takes a row as the server has it, unless the local copy is already newer (`updated_at` only ever grows on the
   * server, so an older one is a late replay; two versions stamped alike are ordered by the feed's sequence `seq`).
   * Returns whether anything changed.
   */
  applyServerRow(table, row, { remote = false, seq = -1 } = {}) {
    if (!row || typeof row.id !== "string") return false;
    const tombstone = this.tombstones.get(table)?.get(row.id);
    if (tombstone !== undefined && timeKey(row.updated_at) <= tombstone) return false;
    const entry = this.entry(table, row.id, true);
    if (entry.base) {
      const incoming = timeKey(row.updated_at);
      const held = timeKey(entry.base.updated_at);
      if (incoming < held) return false;
      // Two versions stamped alike: the one later in the feed wins, whatever order they arrive in.
      if (incoming === held && seq >= 0 && entry.baseSeq >= 0 && seq < entry.baseSeq) return false;
    }
    entry.seq = Math.max(entry.seq, seq);
    if (sameRow(entry.base, row)) {
      entry.baseSeq = Math.max(entry.baseSeq, seq);
      return false;
    }
    entry.base = row;
    entry.baseSeq = seq;
    // Most recently changed last: eviction takes the rows unchanged for longest first.
    const map = this.entries(table);
    map.delete(row.id);
    map.set(row.id, entry);
    if (remote && row.updated_by !== this.userId()) entry.changedAt = this.clock.now();
    this.touch(table, row.id);
    if (map.size > this.maxRows) this.evictRows(table);
    return true;
  }

  /**
   * Keeps a table within `maxRows`: forgets the rows unchanged for longest that belong to no loaded plan and have no
   * pending write, down to 90 % of the bound. Forgotten rows are not deleted, only no longer held (no change event).
   */
  evictRows(table) {
    const map = this.entries(table);
    const target = Math.floor(this.maxRows * 0.9);
    for (const [id, entry] of map) {
      if (map.size <= target) break;
      if (entry.ops.length > 0) continue;
      const row = entry.base;
      if (row && (this.loadedPlans.has(row.plan_id) || (table === "plan" && this.loadedPlans.has(row.id)))) continue;
      map.delete(id);
    }
  }

  /** Forgets a row the server deleted, and remembers it so that a late replay cannot revive it. */
  applyServerDelete(table, oldRow, { remote = false } = {}) {
    const id = oldRow?.id;
    if (typeof id !== "string") return false;
    const entry = this.entry(table, id);
    if (entry?.base && oldRow.updated_at && timeKey(oldRow.updated_at) < timeKey(entry.base.updated_at)) return false;
    let tombstones = this.tombstones.get(table);
    if (!tombstones) this.tombstones.set(table, (tombstones = new Map()));
    tombstones.delete(id);
    tombstones.set(id, oldRow.updated_at ? timeKey(oldRow.updated_at) : Number.POSITIVE_INFINITY);
    if (tombstones.size > this.maxTombstones) {
      // The oldest go first: a late replay that old is past the stream's resume window in practice.
      const drop = tombstones.size - Math.floor(this.maxTombstones * 0.9);
      let n = 0;
      for (const key of tombstones.keys()) {
        if (n++ >= drop) break;
        tombstones.delete(key);
      }
    }
    if (!entry?.base) return false;
    entry.base = null;
    if (remote) entry.changedAt = this.clock.now();
    this.touch(table, id);
    return true;
  }

  /**
   * Takes a plan's snapshot (`{plan, tasks}` at feed sequence `seq`): its rows become the local rows, and tasks of
   * the plan that the snapshot no longer has are dropped, unless a write of them is pending or a later event
   * brought them.
   */
  applySnapshot(planId, { plan, tasks }, seq) {
    this.applyServerRow("plan", plan, { seq });
    const present = new Set();
    for (const task of tasks) {
      present.add(task.id);
      this.tombstones.get("task")?.delete(task.id);
      this.applyServerRow("task", task, { seq });
    }
    for (const [id, entry] of [...this.entries("task")]) {
      if (present.has(id) || entry.ops.length > 0 || !entry.base || entry.base.plan_id !== planId) continue;
      if (entry.seq > seq) continue;
      entry.base = null;
      this.touch("task", id);
    }
    this.loadedPlans.add(planId);
  }

  /** Stops holding a plan's rows as loaded (they may then be forgotten when the store is full). */
  unloadPlan(planId) {
    this.loadedPlans.delete(planId);
  }
}
