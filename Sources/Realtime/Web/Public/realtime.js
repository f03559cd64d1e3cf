// realtime.js — the browser client of the Realtime server.
//
// One ES module, no dependencies, no build step. It is served by the server at /client/realtime.js:
//
//   import { createClient } from "/client/realtime.js";
//   const client = createClient({ url: location.origin, token, getToken });
//   await client.loadPlan(planId);                    // snapshot: rows + the cursor to stream from
//   client.channel(`plan:${planId}`)
//     .on("postgres_changes", { table: "task", event: "*" }, (change) => { … })
//     .on("presence", (presence) => { … })
//     .on("broadcast", { event: "cursor" }, (message) => { … })
//     .subscribe();
//   client.onChange(({ table, id }) => render(client.record(table, id)));
//   client.from("task").update(taskId, { status: "done" });   // optimistic, queued, reconciled
//
// How it works:
// - Every subscribed channel shares ONE Server-Sent-Events stream (GET /realtime/v1/stream?channel=…), read with
//   fetch so that the token travels in a header and a 401 can be told from a network error. The stream is reopened,
//   from the last cursor, when the channel set changes and after every disconnect (backoff 1, 2, 4 … 30 s with full
//   jitter). `status` says connecting | live | offline | stale.
// - The client keeps a local copy of the rows it has seen (snapshots, events, REST answers): the server's version of
//   each row plus the local writes not yet confirmed. A row shows the server version with the pending writes on top,
//   so an answer and its event may arrive in any order and nothing is applied twice.
// - Writes go through a queue kept in IndexedDB: each is applied at once (optimistic, `pending: true`), sent in
//   order with its own Idempotency-Key, and settled by the answer: confirmed, rolled back (403/404/422, with an
//   error for a toast) or replaced by the server's row (409 stale_update, "updated elsewhere"). A network failure
//   keeps the queue and replays it after reconnecting.
//
// Everything that touches the outside world (fetch, storage, clock, randomness, online/offline and page-hide
// events) can be injected, so that the logic runs under node's test runner.

/** The values of `client.status`. */
export const Status = Object.freeze({ CONNECTING: "connecting", LIVE: "live", OFFLINE: "offline", STALE: "stale" });

/** The REST collection of each table that can be written (the stream names tables in the singular). */
export const TABLE_PATHS = Object.freeze({
  plan: "plans",
  task: "tasks",
  client_card: "client_cards",
  attachment: "attachments",
});

const DEFAULT_STALE_AFTER_MS = 60_000;
const DEFAULT_STALL_TIMEOUT_MS = 45_000;
const DEFAULT_REPORT_DELAY_EVERY_MS = 30_000;
/** What POST /realtime/v1/slo/client-delay takes: at most 100 samples, each at most an hour. */
const MAX_DELAY_SAMPLES = 100;
const MAX_DELAY_SAMPLE_MS = 3_600_000;
const PRESENCE_MIN_INTERVAL_MS = 250;
const DEFAULT_REQUEST_TIMEOUT_MS = 15_000;
const DEFAULT_CONNECT_TIMEOUT_MS = 15_000;
const DEFAULT_MAX_WRITE_ATTEMPTS = 5;
const DEFAULT_MAX_ROWS = 50_000;
const DEFAULT_MAX_TOMBSTONES = 10_000;
/** How long a lower bound of the server's clock taken from a commit timestamp is trusted. */
const COMMIT_FLOOR_TTL_MS = 10 * 60_000;

// ---------------------------------------------------------------------------------------------- small helpers

/** The longest wait before reconnect attempt `attempt` (0-based): 1 s, 2 s, 4 s, 8 s … at most 30 s. */
export function backoffCeiling(attempt, { baseMs = 1000, maxMs = 30_000 } = {}) {
  return Math.min(maxMs, baseMs * 2 ** Math.min(Math.max(attempt, 0), 30));
}

/** The wait before reconnect attempt `attempt`, with full jitter: uniformly random in [0, ceiling). */
export function backoffDelay(attempt, random = Math.random, options = {}) {
  return Math.floor(random() * backoffCeiling(attempt, options));
}

/**
 * A comparable number (microseconds since the epoch) for a timestamp as PostgreSQL renders it,
 * e.g. `2026-11-28T08:21:21.123456+00:00`; Date.parse alone would drop the microseconds.
 */
export function timeKey(timestamp) {
  if (typeof timestamp !== "string") return Number.NEGATIVE_INFINITY;
  const match = /^(\d{4}-\d{2}-\d{2}[T ]\d{2}:\d{2}(?::\d{2})?)(?:\.(\d+))?(.*)$/.exec(timestamp);
  if (!match) {
    const ms = Date.parse(timestamp);
    return Number.isNaN(ms) ? Number.NEGATIVE_INFINITY : ms * 1000;
  }
  const ms = Date.parse(match[1].replace(" ", "T") + match[3]);
  if (Number.isNaN(ms)) return Number.NEGATIVE_INFINITY;
  return ms * 1000 + Number((match[2] ?? "").padEnd(6, "0").slice(0, 6));
}

/** The sequence number at the head of a cursor (`"17"` or a snapshot's `"17~100:105:101"`), or -1. */
export function cursorSequence(cursor) {
  const match = /^(\d+)/.exec(cursor ?? "");
  return match ? Number(match[1]) : -1;
}

/** The `sub` claim of a JWT (the user id), or null; the signature is the server's business. */
export function tokenSubject(token) {
  try {
    const payload = token.split(".")[1].replace(/-/g, "+").replace(/_/g, "/");
    return JSON.parse(atob(payload.padEnd(payload.length + ((4 - (payload.length % 4)) % 4), "="))).sub ?? null;
  } catch {
    return null;
  }
}

/** A random (version 4) UUID; `crypto.randomUUID` needs a secure context, so there is a fallback. */
export function randomUUID(random = Math.random) {
  if (random === Math.random && globalThis.crypto?.randomUUID) return globalThis.crypto.randomUUID();
  const bytes = new Uint8Array(16);
  if (random === Math.random && globalThis.crypto?.getRandomValues) globalThis.crypto.getRandomValues(bytes);
  else for (let i = 0; i < 16; i++) bytes[i] = Math.floor(random() * 256);
  bytes[6] = (bytes[6] & 0x0f) | 0x40;
  bytes[8] = (bytes[8] & 0x3f) | 0x80;
  const hex = Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("");
  return `${hex.slice(0, 8)}-${hex.slice(8, 12)}-${hex.slice(12, 16)}-${hex.slice(16, 20)}-${hex.slice(20)}`;
}

/** The real clock. Tests pass one with the same three methods. */
export const systemClock = Object.freeze({
  now: () => Date.now(),
  setTimeout: (fn, ms) => globalThis.setTimeout(fn, ms),
  clearTimeout: (handle) => globalThis.clearTimeout(handle),
});

/** The browser's online/offline signal (`navigator.onLine` and its events); always online elsewhere. */
export function browserNetwork() {
  const target = globalThis.window ?? null;
  return {
    isOnline: () => globalThis.navigator?.onLine ?? true,
    subscribe(callback) {
      if (!target?.addEventListener) return () => {};
      const online = () => callback(true);
      const offline = () => callback(false);
      target.addEventListener("online", online);
      target.addEventListener("offline", offline);
      return () => {
        target.removeEventListener("online", online);
        target.removeEventListener("offline", offline);
      };
    },
  };
}

/** Calls back when the page is being hidden for good (`pagehide`); nothing outside a browser. */
export function browserPageLifecycle() {
  const target = globalThis.window ?? null;
  return {
    onHide(callback) {
      if (!target?.addEventListener) return () => {};
      target.addEventListener("pagehide", callback);
      return () => target.removeEventListener("pagehide", callback);
    },
  };
}

/** Shallow equality of two rows (column values are JSON scalars or small objects). */
function sameRow(a, b) {
  if (a === b) return true;
  if (!a || !b) return false;
  const keys = Object.keys(a);
  if (keys.length !== Object.keys(b).length) return false;
  return keys.every((key) => JSON.stringify(a[key]) === JSON.stringify(b[key]));
}

/** Reads a JSON body, or null when there is none or it is not JSON. */
async function readJSON(response) {
  try {
    const text = await response.text();
    return text ? JSON.parse(text) : null;
  } catch {
    return null;
  }
}

/** An error object for listeners: what failed, and the server's stable code when there is one. */
function apiError(kind, status, body, extra = {}) {
  return {
    kind,
    status,
    code: body?.error?.code ?? (status ? `http_${status}` : "network_error"),
    message: body?.error?.message ?? (status ? `The server answered ${status}.` : "The server could not be reached."),
    ...extra,
  };
}

// ---------------------------------------------------------------------------------------------- SSE parsing

/**
 * An incremental Server-Sent-Events parser (the WHATWG rules): feed it text as it arrives, in chunks of any size,
 * and it returns the frames it completed, each `{ event, data, id, retry }` (`id` is set only when the frame had an
 * `id:` line; `retry` only on a frame that had a `retry:` line). Comment lines (`: keepalive`) are skipped.
 */
export class SSEParser {
  constructor() {
    this.buffer = "";
    this.skipLineFeed = false;
    this.lastEventId = "";
    this.retry = null;
    this.resetFrame();
  }

  /** Clears the frame being built. */
  resetFrame() {
    this.data = [];
    this.event = "";
    this.frameId = undefined;
    this.frameRetry = undefined;
  }

  /** Feeds `text`; returns the frames it completed. */
  push(text) {
    const frames = [];
    let input = text;
    if (this.skipLineFeed && input.startsWith("\n")) input = input.slice(1);
    this.skipLineFeed = false;
    const source = this.buffer + input;
    let start = 0;
    for (let i = 0; i < source.length; i++) {
      const char = source[i];
      if (char !== "\n" && char !== "\r") continue;
      const line = source.slice(start, i);
      if (char === "\r") {
        if (i + 1 < source.length) {
          if (source[i + 1] === "\n") i++;
        } else {
          this.skipLineFeed = true;
        }
      }
      start = i + 1;
      this.line(line, frames);
    }
    this.buffer = source.slice(start);
    return frames;
  }

  /** Handles one complete line. */
  line(line, frames) {
    if (line === "") {
      if (this.data.length > 0) {
        const frame = { event: this.event || "message", data: this.data.join("\n"), id: this.frameId };
        if (this.frameRetry !== undefined) frame.retry = this.frameRetry;
        frames.push(frame);
      }
      this.resetFrame();
      return;
    }
    if (line.startsWith(":")) return;
    const colon = line.indexOf(":");
    const field = colon === -1 ? line : line.slice(0, colon);
    let value = colon === -1 ? "" : line.slice(colon + 1);
    if (value.startsWith(" ")) value = value.slice(1);
    switch (field) {
      case "data":
        this.data.push(value);
        break;
      case "event":
        this.event = value;
        break;
      case "id":
        if (!value.includes("\0")) {
          this.lastEventId = value;
          this.frameId = value;
        }
        break;
      case "retry":
        if (/^\d+$/.test(value)) {
          this.retry = Number(value);
          this.frameRetry = this.retry;
        }
        break;
      default:
        break;
    }
  }
}

/** Parses a whole SSE text at once; convenient in tests. */
export function parseSSE(text) {
  return new SSEParser().push(text);
}

// ---------------------------------------------------------------------------------------------- storage

/** Key-value storage in memory, with the same async interface as the IndexedDB one. */
export function createMemoryStorage() {
  const map = new Map();
  return {
    kind: "memory",
    async get(key) {
      return map.has(key) ? structuredClone(map.get(key)) : undefined;
    },
    async set(key, value) {
      map.set(key, structuredClone(value));
    },
    async delete(key) {
      map.delete(key);
    },
    /** Every `[key, value]` whose key starts with `prefix`, in key order. */
    async list(prefix) {
      return [...map.keys()]
        .filter((key) => key.startsWith(prefix))
        .sort()
        .map((key) => [key, structuredClone(map.get(key))]);
    },
  };
}

/**
 * Key-value storage in IndexedDB (one object store, `kv`), so that the offline queue survives a reload. Where
 * IndexedDB is missing or refuses to open (some private modes), it falls back to memory.
 */
export function createIndexedDBStorage({ name = "realtime-client", indexedDB = globalThis.indexedDB } = {}) {
  const memory = createMemoryStorage();
  if (!indexedDB) return memory;
  const opened = new Promise((resolve) => {
    try {
      const request = indexedDB.open(name, 1);
      request.onupgradeneeded = () => request.result.createObjectStore("kv");
      request.onsuccess = () => resolve(request.result);
      request.onerror = () => resolve(null);
      request.onblocked = () => resolve(null);
    } catch {
      resolve(null);
    }
  });
  const run = async (mode, action) => {
    const db = await opened;
    if (!db) return undefined;
    return new Promise((resolve, reject) => {
      const transaction = db.transaction("kv", mode);
      const request = action(transaction.objectStore("kv"));
      transaction.oncomplete = () => resolve(request.result);
      transaction.onerror = () => reject(transaction.error);
      transaction.onabort = () => reject(transaction.error);
    });
  };
  return {
    kind: "indexeddb",
    async get(key) {
      return (await opened) ? run("readonly", (store) => store.get(key)) : memory.get(key);
    },
    async set(key, value) {
      return (await opened) ? run("readwrite", (store) => store.put(value, key)) : memory.set(key, value);
    },
    async delete(key) {
      return (await opened) ? run("readwrite", (store) => store.delete(key)) : memory.delete(key);
    },
    async list(prefix) {
      const db = await opened;
      if (!db) return memory.list(prefix);
      return new Promise((resolve, reject) => {
        const transaction = db.transaction("kv", "readonly");
        const found = [];
        const cursor = transaction.objectStore("kv").openCursor(IDBKeyRange.bound(prefix, `${prefix}\uffff`));
        cursor.onsuccess = () => {
          if (!cursor.result) return;
          found.push([cursor.result.key, cursor.result.value]);
          cursor.result.continue();
        };
        transaction.oncomplete = () => resolve(found);
        transaction.onerror = () => reject(transaction.error);
        transaction.onabort = () => reject(transaction.error);
      });
    },
    /** Resolves once IndexedDB has opened (true) or turned out to be unavailable (false). */
    get available() {
      return opened.then((db) => db !== null);
    },
  };
}

// ---------------------------------------------------------------------------------------------- tabs

/**
 * How the tabs of one browser share the write queue: `lock(name, fn)` runs `fn` while no other tab holds `name`
 * (Web Locks), and `channel(name)` is a BroadcastChannel-like port (`postMessage`, `onmessage`, `close`). In one tab
 * alone (no Web Locks, or storage that no other tab sees) the lock is a local mutex and there is no channel.
 */
export function browserTabs() {
  const locks = globalThis.navigator?.locks;
  const Channel = globalThis.BroadcastChannel;
  if (!locks?.request || !Channel) return localTabs();
  return {
    lock: (name, fn) => locks.request(name, () => fn()),
    channel: (name) => new Channel(name),
  };
}

/** Coordination for a single tab: a local mutex per name, no messages. */
export function localTabs() {
  const held = new Map();
  return {
    async lock(name, fn) {
      while (held.has(name)) await held.get(name).catch(() => {});
      const running = Promise.resolve().then(fn);
      held.set(name, running);
      try {
        return await running;
      } finally {
        held.delete(name);
      }
    },
    channel: () => null,
  };
}

// ---------------------------------------------------------------------------------------------- timeouts

/** The error a request that ran out of time rejects with (`name` "TimeoutError", like `AbortSignal.timeout`). */
export function timeoutError(ms) {
  const error = new Error(`no answer within ${ms} ms`);
  error.name = "TimeoutError";
  return error;
}

/**
 * An AbortSignal that fires after `ms` on `clock` (the injected clock, so that tests control time; in a browser this
 * is what `AbortSignal.timeout(ms)` does) or when `outer` fires. `clear()` stops the timer.
 */
export function deadlineSignal(clock, ms, outer = null) {
  const controller = new AbortController();
  const timer = clock.setTimeout(() => controller.abort(timeoutError(ms)), ms);
  const forward = () => controller.abort(outer.reason);
  if (outer?.aborted) forward();
  else outer?.addEventListener?.("abort", forward, { once: true });
  return {
    signal: controller.signal,
    clear() {
      clock.clearTimeout(timer);
      outer?.removeEventListener?.("abort", forward);
    },
  };
}

// ---------------------------------------------------------------------------------------------- filters

/**
 * Tests a row against a stream filter in the server's syntax, `column=op.value` (`eq neq lt lte gt gte in is`,
 * optionally `not.`), e.g. `status=in.(taken,done)`. The stream is shared by all channels, so per-channel filters
 * are applied here.
 */
export function matchesFilter(row, filter) {
  if (!filter) return true;
  const eq = filter.indexOf("=");
  if (eq === -1) return false;
  const column = filter.slice(0, eq);
  let expression = filter.slice(eq + 1);
  let negate = false;
  if (expression.startsWith("not.")) {
    negate = true;
    expression = expression.slice(4);
  }
  const dot = expression.indexOf(".");
  if (dot === -1) return false;
  const op = expression.slice(0, dot);
  const text = expression.slice(dot + 1);
  const value = row?.[column];
  const compare = (a, b) => {
    if (typeof a === "number") return a - Number(b);
    if (/^\d{4}-\d{2}-\d{2}[T ]/.test(String(a))) return timeKey(String(a)) - timeKey(b);
    return String(a) < b ? -1 : String(a) > b ? 1 : 0;
  };
  let result;
  switch (op) {
    case "eq":
      result = value !== null && value !== undefined && compare(value, text) === 0;
      break;
    case "neq":
      result = value !== null && value !== undefined && compare(value, text) !== 0;
      break;
    case "lt":
      result = value != null && compare(value, text) < 0;
      break;
    case "lte":
      result = value != null && compare(value, text) <= 0;
      break;
    case "gt":
      result = value != null && compare(value, text) > 0;
      break;
    case "gte":
      result = value != null && compare(value, text) >= 0;
      break;
    case "in": {
      const items = text.replace(/^\(/, "").replace(/\)$/, "").split(",");
      result = value != null && items.some((item) => compare(value, item) === 0);
      break;
    }
    case "is":
      result = text === "null" ? value === null || value === undefined : String(value) === text;
      break;
    default:
      result = false;
  }
  return negate ? !result : result;
}

// ---------------------------------------------------------------------------------------------- channels

/**
 * One subscription of the shared stream, in the shape Supabase users know:
 * `client.channel("plan:<id>").on("postgres_changes", {table, event, filter}, cb).on("presence", cb).subscribe()`.
 */
export class RealtimeChannel {
  constructor(client, name) {
    this.client = client;
    this.name = name;
    this.handlers = [];
    this.state = "closed";
    this.statusCallback = null;
    this.presences = new Map();
    this.tracked = null;
    this.trackTimer = null;
    this.trackSending = null;
    this.lastTrackAt = Number.NEGATIVE_INFINITY;
    /** The HTTP status that errored this channel (400: the server refuses the name; not retried until subscribe()). */
    this.errorStatus = null;
  }

  /**
   * Adds a handler. `type` is "postgres_changes" (filter `{table, event, filter}`, each optional), "presence"
   * (filter `{event: "sync"|"join"|"update"|"leave"}`) or "broadcast" (filter `{event}`); the filter may be omitted.
   */
  on(type, filterOrCallback, maybeCallback) {
    const callback = typeof filterOrCallback === "function" ? filterOrCallback : maybeCallback;
    const filter = typeof filterOrCallback === "function" ? {} : (filterOrCallback ?? {});
    if (!["postgres_changes", "presence", "broadcast"].includes(type)) throw new Error(`unknown event type ${type}`);
    if (typeof callback !== "function") throw new Error("on() needs a callback");
    this.handlers.push({ type, filter, callback });
    if (this.state !== "closed") this.client.channelsChanged();
    return this;
  }

  /** Joins the shared stream; `callback(status, error)` hears SUBSCRIBED, CHANNEL_ERROR and CLOSED. */
  subscribe(callback) {
    if (callback) this.statusCallback = callback;
    if (this.state === "joined" && this.client.channels.get(this.name) === this) {
      this.client.channelsChanged();
      return this;
    }
    this.state = "joining";
    this.errorStatus = null;
    this.client.addChannel(this);
    return this;
  }

  /** Leaves the stream (and presence, if tracked). */
  async unsubscribe() {
    if (this.tracked) await this.untrack();
    this.state = "closed";
    this.client.detachChannel(this);
    this.report("CLOSED");
    return "ok";
  }

  /** Whether this channel listens to presence (then the stream also carries `presence:<name>`). */
  get wantsPresence() {
    return this.handlers.some((handler) => handler.type === "presence");
  }

  /** The presence map: user id → `{ state, online_since, last_seen }`. */
  presenceState() {
    return Object.fromEntries(this.presences);
  }

  /** The REST path of this channel's presence or broadcast endpoint, e.g. `plan/<id>`. */
  get resourcePath() {
    const [kind, id] = this.name.split(":");
    return `${kind}/${id}`;
  }

  /**
   * Announces this user's state on the channel (`{slot, action}`) and heartbeats it while it lasts; a new state
   * replaces the old one. Sends are spaced by at least 250 ms so that fast focus changes never hit the rate limit.
   */
  track(state) {
    this.tracked = { slot: state.slot, action: state.action };
    this.client.watchPageHide();
    this.scheduleTrack(0);
    return this;
  }

  /** Stops heartbeating and tells the server this user left the channel. */
  async untrack() {
    this.tracked = null;
    if (this.trackTimer !== null) this.client.clock.clearTimeout(this.trackTimer);
    this.trackTimer = null;
    // A heartbeat still on its way would otherwise land after the leave and bring the state back.
    await this.trackSending;
    if (this.tracked) return "ok";
    const response = await this.client.request("DELETE", `/realtime/v1/presence/${this.resourcePath}`).catch(() => null);
    return response?.ok ? "ok" : "error";
  }

  /** Sends the tracked state after `delay` ms (and no sooner than the minimum interval allows). */
  scheduleTrack(delay) {
    if (this.trackTimer !== null) this.client.clock.clearTimeout(this.trackTimer);
    const earliest = this.lastTrackAt + PRESENCE_MIN_INTERVAL_MS - this.client.clock.now();
    this.trackTimer = this.client.clock.setTimeout(() => {
      this.trackTimer = null;
      this.sendTrack();
    }, Math.max(delay, earliest, 0));
  }

  /** One presence heartbeat; schedules the next one from the server's `heartbeat_seconds`. */
  sendTrack() {
    if (!this.tracked || this.trackSending) return this.trackSending;
    this.trackSending = this.heartbeat(this.tracked).finally(() => {
      this.trackSending = null;
    });
    return this.trackSending;
  }

  /** POSTs `state`, then schedules the next heartbeat (or the new state, if it changed meanwhile). */
  async heartbeat(state) {
    this.lastTrackAt = this.client.clock.now();
    let next = 10_000;
    try {
      const response = await this.client.request("POST", `/realtime/v1/presence/${this.resourcePath}`, { state });
      if (response.status === 429) {
        next = Math.max(1, Number(response.headers.get("Retry-After")) || 1) * 1000;
      } else if (response.ok) {
        const body = await readJSON(response);
        next = Math.max(1, Number(body?.heartbeat_seconds) || 10) * 1000;
      } else {
        this.client.emitError(apiError("presence", response.status, await readJSON(response), { channel: this.name }));
      }
    } catch {
      next = 2000;
    }
    if (!this.tracked) return;
    queueMicrotask(() => {
      if (this.tracked) this.scheduleTrack(this.tracked === state ? next : 0);
    });
  }

  /** Sends a broadcast to everyone on the channel: `send({type: "broadcast", event, payload})`. */
  async send({ type = "broadcast", event, payload = {} }) {
    if (type !== "broadcast") throw new Error("only broadcast messages can be sent");
    const response = await this.client
      .request("POST", `/realtime/v1/broadcast/${this.resourcePath}`, { event, payload })
      .catch(() => null);
    return response?.ok ? "ok" : "error";
  }

  /** Tells the subscribe() callback. */
  report(status, error) {
    if (status === "SUBSCRIBED") this.state = "joined";
    if (status === "CHANNEL_ERROR") {
      this.state = "errored";
      this.errorStatus = error?.status ?? null;
    }
    try {
      this.statusCallback?.(status, error);
    } catch (callbackError) {
      this.client.reportCallbackError(callbackError);
    }
  }

  /** Delivers a change event to the matching postgres_changes handlers. */
  dispatchChange(payload) {
    for (const handler of this.handlers) {
      if (handler.type !== "postgres_changes") continue;
      const { table, event, filter } = handler.filter;
      if (table && table !== "*" && table !== payload.table) continue;
      if (event && event !== "*" && event.toUpperCase() !== payload.eventType) continue;
      if (filter && !matchesFilter(payload.eventType === "DELETE" ? payload.old : payload.new, filter)) continue;
      this.client.safely(handler.callback, payload);
    }
  }

  /** Updates the presence map from a presence frame and tells the presence handlers. */
  dispatchPresence(message) {
    if (message.event === "sync") {
      this.presences = new Map(
        (message.presences ?? []).map((p) => [p.user_id, { state: p.state, online_since: p.online_since, last_seen: p.last_seen }]),
      );
    } else if (message.event === "join" || message.event === "update") {
      const previous = this.presences.get(message.user_id) ?? {};
      this.presences.set(message.user_id, { ...previous, state: message.state });
    } else if (message.event === "leave") {
      this.presences.delete(message.user_id);
    }
    const payload = { ...message, presences: this.presenceState() };
    for (const handler of this.handlers) {
      if (handler.type !== "presence") continue;
      if (handler.filter.event && handler.filter.event !== "*" && handler.filter.event !== message.event) continue;
      this.client.safely(handler.callback, payload);
    }
  }

  /** Delivers a broadcast to the matching broadcast handlers. */
  dispatchBroadcast(message) {
    for (const handler of this.handlers) {
      if (handler.type !== "broadcast") continue;
      if (handler.filter.event && handler.filter.event !== "*" && handler.filter.event !== message.event) continue;
      this.client.safely(handler.callback, message);
    }
  }
}

// ---------------------------------------------------------------------------------------------- the client

/** Creates a client; see the top of this file. */
export function createClient(options) {
  return new RealtimeClient(options);
}

/**
 * The client: one stream for all channels, a local copy of the rows, and the write queue.
 *
 * Options: `url` (the server, default the page's origin), `token` (a JWT), `getToken()` (async, returns a fresh
 * token on 401 or `token_expired`), and for tests or special hosts `fetch`, `storage` (see createIndexedDBStorage),
 * `clock` ({now, setTimeout, clearTimeout}), `random`, `network` ({isOnline, subscribe}), `pageLifecycle`
 * ({onHide}), `staleAfterMs` (60 s: offline for longer makes the status `stale`) and `stallTimeoutMs` (45 s without a
 * byte, keepalives included, counts as a lost connection) and `uuid()` (ids of new rows and Idempotency-Keys).
 * `reportDelayEveryMs` (30 s; 0 turns it off): how often the client reports to the server's service-level window
 * (`POST /realtime/v1/slo/client-delay`) the delays it saw from a change's commit to its arrival — live changes only,
 * measured on the device's clock, so a device clock far off skews them.
 */
export class RealtimeClient {
  constructor({
    url = globalThis.location?.origin ?? "",
    token,
    getToken = null,
    fetch: fetchImpl = globalThis.fetch?.bind(globalThis),
    storage = createIndexedDBStorage(),
    clock = systemClock,
    random = Math.random,
    network = browserNetwork(),
    pageLifecycle = browserPageLifecycle(),
    uuid = () => randomUUID(),
    staleAfterMs = DEFAULT_STALE_AFTER_MS,
    stallTimeoutMs = DEFAULT_STALL_TIMEOUT_MS,
    reportDelayEveryMs = DEFAULT_REPORT_DELAY_EVERY_MS,
    requestTimeoutMs = DEFAULT_REQUEST_TIMEOUT_MS,
    connectTimeoutMs = DEFAULT_CONNECT_TIMEOUT_MS,
    maxWriteAttempts = DEFAULT_MAX_WRITE_ATTEMPTS,
    maxRows = DEFAULT_MAX_ROWS,
    maxTombstones = DEFAULT_MAX_TOMBSTONES,
    tabs = null,
  } = {}) {
    if (!fetchImpl) throw new Error("createClient needs fetch");
    this.url = url.replace(/\/+$/, "");
    this.token = token ?? null;
    this.userId = tokenSubject(this.token ?? "");
    this.getToken = getToken;
    this.fetchImpl = fetchImpl;
    this.storage = storage;
    this.clock = clock;
    this.random = random;
    this.uuid = uuid;
    this.network = network;
    this.pageLifecycle = pageLifecycle;
    this.staleAfterMs = staleAfterMs;
    this.stallTimeoutMs = stallTimeoutMs;
    this.reportDelayEveryMs = reportDelayEveryMs;
    this.requestTimeoutMs = requestTimeoutMs;
    this.connectTimeoutMs = connectTimeoutMs;
    this.maxWriteAttempts = maxWriteAttempts;
    this.maxRows = maxRows;
    this.maxTombstones = maxTombstones;
    /** The server's clock minus this device's: from `Date` headers, and at least what commit timestamps imply. */
    this.dateOffset = null;
    this.commitFloor = null;
    /** When the connection was last known good (stream live, a byte received, or the client created). */
    this.lastHealthyAt = clock.now();
    /** Delays (ms) of live changes not reported yet, when the stream opened, and the timer of the next report. */
    this.delaySamples = [];
    this.streamOpenedAt = null;
    this.delayTimer = null;

    this.listeners = { status: new Set(), change: new Set(), error: new Set(), reset: new Set(), queue: new Set() };
    this.currentStatus = Status.CONNECTING;
    /** Every channel made by channel() and not removed, by name; `channels` holds those subscribed. */
    this.registry = new Map();
    this.channels = new Map();
    this.presenceUnsupported = false;
    this.serverOptionsRefused = false;
    this.cursor = null;
    this.generation = 0;
    this.stream = null;
    this.attempt = 0;
    this.reconnectTimer = null;
    this.staleTimer = null;
    this.stallTimer = null;
    this.offlineSince = null;
    this.openQueued = false;
    this.closed = false;
    this.refreshing = null;

    /** table → id → { base, ops, updatedElsewhere, changedAt, seq, view } */
    this.tables = new Map();
    /** table → id → time key of the deleted row: a late replay of an older event must not bring it back. */
    this.tombstones = new Map();
    this.loadedPlans = new Set();

    /** The writes waiting for the server, this tab's and other tabs' (`own: false`), oldest first. */
    this.queue = [];
    /** Settled writes whose promises resolve once the queue no longer holds them. */
    this.settledWrites = [];
    this.flushing = false;
    this.flushAgain = false;
    this.writerBlocked = false;
    this.authBlocked = false;
    this.writeAttempt = 0;
    this.writeTimer = null;
    this.writeController = null;
    this.writeCounter = 0;
    this.persisting = Promise.resolve();
    this.setQueueScope();
    this.tabs = tabs ?? (storage.kind === "indexeddb" ? browserTabs() : localTabs());
    this.tabPort = this.tabs.channel?.(`realtime-queue:${this.queuePrefix}`) ?? null;
    if (this.tabPort) this.tabPort.onmessage = (event) => this.tabMessage(event.data);
    this.ready = this.loadQueue();

    this.stopNetwork = this.network.subscribe((online) => this.networkChanged(online));
    this.stopPageHide = null;
  }

  // ------------------------------------------------------------------ observing

  /** connecting | live | offline | stale. */
  get status() {
    return this.currentStatus;
  }

  /** Calls `callback(status)` now and at every change; returns an unsubscribe function. */
  onStatus(callback) {
    this.listeners.status.add(callback);
    this.safely(callback, this.currentStatus);
    return () => this.listeners.status.delete(callback);
  }

  /** Calls `callback({table, id, record})` whenever a local row changes (server change, local write, rollback). */
  onChange(callback) {
    this.listeners.change.add(callback);
    return () => this.listeners.change.delete(callback);
  }

  /**
   * Calls `callback(error)` for what the user should hear about: `{kind, status, code, message, …}` with kind
   * "rejected" (a write was rolled back), "conflict" (409: the server's row was taken), "revoked", "auth",
   * "stream" or "presence".
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

  setStatus(status) {
    if (status === this.currentStatus) return;
    this.currentStatus = status;
    this.emit("status", status);
  }

  /** Notes that the connection is good now: the stale period counts from here. */
  healthy() {
    this.lastHealthyAt = this.clock.now();
  }

  /**
   * Arms the timer that makes the status `stale` once `staleAfterMs` have passed since the last healthy moment —
   * whether the stream is offline, connecting or waiting for an answer that never comes.
   */
  armStaleTimer() {
    if (this.closed || this.currentStatus === Status.LIVE || this.currentStatus === Status.STALE) return;
    this.clearTimer("staleTimer");
    const remaining = this.staleAfterMs - (this.clock.now() - this.lastHealthyAt);
    this.staleTimer = this.clock.setTimeout(() => {
      this.staleTimer = null;
      if (this.currentStatus !== Status.LIVE && !this.closed) this.setStatus(Status.STALE);
    }, Math.max(0, remaining));
  }

  // ------------------------------------------------------------------ the server's clock

  /** Now, on the server's clock as far as this client can tell (ms since the epoch). */
  serverNow() {
    return this.clock.now() + this.clockOffset();
  }

  /** The estimated server clock minus this device's clock, in ms. */
  clockOffset() {
    let offset = this.dateOffset ?? 0;
    if (this.commitFloor && this.clock.now() - this.commitFloor.at < COMMIT_FLOOR_TTL_MS) {
      offset = Math.max(offset, this.commitFloor.offset);
    }
    return offset;
  }

  /**
   * Takes the `Date` header of an answer: the server's clock, to the second, somewhere between the request's start
   * and the answer's arrival; the middle of both, and of the second, is the estimate.
   */
  noteServerDate(response, sentAt) {
    const header = response?.headers?.get?.("Date");
    const date = header ? Date.parse(header) : Number.NaN;
    if (!Number.isFinite(date)) return;
    const receivedAt = this.clock.now();
    this.dateOffset = date + 500 - (sentAt + receivedAt) / 2;
  }

  /** A change committed at `commitTimestamp` proves the server's clock had reached that time when it arrived. */
  noteCommitTime(commitTimestamp) {
    const committed = timeKey(commitTimestamp) / 1000;
    if (!Number.isFinite(committed)) return;
    const now = this.clock.now();
    const offset = committed - now;
    const current = this.commitFloor;
    if (!current || offset > current.offset || now - current.at >= COMMIT_FLOOR_TTL_MS) this.commitFloor = { offset, at: now };
  }

  // ------------------------------------------------------------------ channels and the stream

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

  /** The channels the stream carries now (errored ones left out). */
  streamChannels() {
    return this.channelNames([...this.channels.values()].filter((channel) => channel.state !== "errored"));
  }

  /** The stream channel names of `channels`, presence included. */
  channelNames(channels) {
    const names = new Set();
    for (const channel of channels) {
      names.add(channel.name);
      if (channel.wantsPresence && !this.presenceUnsupported && channel.name.startsWith("plan:")) {
        names.add(`presence:${channel.name}`);
      }
    }
    return [...names].sort();
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

  /** Reopens the stream (from the last cursor) once the current burst of channel changes is over. */
  channelsChanged() {
    if (this.openQueued || this.closed) return;
    this.openQueued = true;
    queueMicrotask(() => {
      this.openQueued = false;
      this.restartStream();
    });
  }

  /** Closes the stream and opens it again at once, with the current channels and cursor. */
  restartStream() {
    if (this.closed) return;
    this.closeStream();
    this.clearTimer("reconnectTimer");
    if (this.streamChannels().length === 0) return;
    if (this.currentStatus === Status.LIVE) {
      this.healthy();
      this.setStatus(Status.CONNECTING);
    }
    this.connect();
  }

  closeStream() {
    this.generation++;
    this.clearTimer("stallTimer");
    if (this.stream) {
      this.stream.controller.abort();
      this.stream = null;
    }
  }

  clearTimer(name) {
    if (this[name] !== null) this.clock.clearTimeout(this[name]);
    this[name] = null;
  }

  /**
   * The server-side options (`table`, `event`, `filter`) that carry what every subscribed channel's handlers want,
   * so that the server cuts the traffic: the union of tables and events, and a filter only when all handlers share
   * it (the server's filters all must hold). A channel without postgres_changes handlers wants every change (for
   * the local rows). The handlers still filter in the browser: the options only narrow the stream.
   */
  streamOptions(channels = [...this.channels.values()].filter((channel) => channel.state !== "errored")) {
    if (this.serverOptionsRefused) return { table: [], event: [], filter: [] };
    const tables = new Set();
    const events = new Set();
    const filters = new Set();
    let allTables = channels.length === 0;
    let allEvents = allTables;
    let unfiltered = allTables;
    for (const channel of channels) {
      const handlers = channel.handlers.filter((handler) => handler.type === "postgres_changes");
      if (handlers.length === 0) {
        allTables = allEvents = unfiltered = true;
        continue;
      }
      for (const { filter } of handlers) {
        if (!filter.table || filter.table === "*") allTables = true;
        else tables.add(filter.table);
        if (!filter.event || filter.event === "*") allEvents = true;
        else events.add(String(filter.event).toUpperCase());
        if (!filter.filter) unfiltered = true;
        else filters.add(filter.filter);
      }
    }
    return {
      table: allTables ? [] : [...tables].sort(),
      event: allEvents ? [] : [...events].sort(),
      filter: unfiltered || filters.size !== 1 ? [] : [...filters],
    };
  }

  /** The stream URL for `names` (default: the current channels) with the server-side options. */
  streamURL(names = this.streamChannels(), options = this.streamOptions()) {
    const query = names.map((name) => `channel=${encodeURIComponent(name)}`);
    if (options.table.length > 0) query.push(`table=${encodeURIComponent(options.table.join(","))}`);
    if (options.event.length > 0) query.push(`event=${encodeURIComponent(options.event.join(","))}`);
    for (const filter of options.filter) query.push(`filter=${encodeURIComponent(filter)}`);
    return `${this.url}/realtime/v1/stream?${query.join("&")}`;
  }

  /** Opens the stream and reads it until it ends; every way it can end leads to the next step. */
  async connect() {
    if (this.closed) return;
    this.clearTimer("reconnectTimer");
    this.closeStream();
    if (this.streamChannels().length === 0) return;
    const generation = this.generation;
    const controller = new AbortController();
    this.stream = { controller, generation };
    if (!this.network.isOnline()) {
      this.streamFailed(generation, { waitForOnline: true });
      return;
    }
    this.armStaleTimer();
    const headers = { Accept: "text/event-stream" };
    if (this.token) headers.Authorization = `Bearer ${this.token}`;
    if (this.cursor) headers["Last-Event-ID"] = this.cursor;
    let response;
    // A request that gets no answer at all (a proxy that holds it, a server that hangs) is given up after the
    // connect timeout, like any network failure.
    const connectTimer = this.clock.setTimeout(() => controller.abort(timeoutError(this.connectTimeoutMs)), this.connectTimeoutMs);
    const sentAt = this.clock.now();
    try {
      response = await this.fetchImpl(this.streamURL(), { headers, signal: controller.signal, cache: "no-store" });
    } catch {
      this.clock.clearTimeout(connectTimer);
      this.streamFailed(generation);
      return;
    }
    this.clock.clearTimeout(connectTimer);
    this.noteServerDate(response, sentAt);
    if (generation !== this.generation) {
      response.body?.cancel?.().catch(() => {});
      return;
    }
    if (!response.ok) {
      await this.streamRefused(generation, response);
      return;
    }
    this.attempt = 0;
    this.streamOpenedAt = this.clock.now();
    this.goLive();
    for (const channel of this.channels.values()) if (channel.state === "joining") channel.report("SUBSCRIBED");
    await this.readStream(generation, response, controller);
  }

  /** Handles a stream that was refused before it started (401, 404, 400, 5xx …). */
  async streamRefused(generation, response) {
    const body = await readJSON(response);
    if (generation !== this.generation) return;
    if (response.status === 401) {
      if (await this.refreshToken()) {
        if (generation === this.generation) this.connect();
        return;
      }
      this.emitError(apiError("auth", 401, body));
      this.streamFailed(generation);
      return;
    }
    if (response.status === 400 && !this.presenceUnsupported && this.streamChannels().some((n) => n.startsWith("presence:"))) {
      // A server without presence refuses the presence channel: keep the data stream, drop presence.
      this.presenceUnsupported = true;
      this.emitError(apiError("presence", 400, body));
      this.connect();
      return;
    }
    if (response.status === 404 || response.status === 403) {
      this.emitError(apiError("stream", response.status, body));
      const dropped = await this.dropInvisibleChannels();
      if (generation !== this.generation) return;
      if (dropped > 0 && this.streamChannels().length > 0) this.connect();
      else if (dropped === 0) this.streamFailed(generation);
      return;
    }
    if (response.status === 400) {
      await this.isolateRefusedChannels(generation, body);
      return;
    }
    this.streamFailed(generation);
  }

  /**
   * After a 400 for the whole stream: finds which channels the server refuses, each asked alone, and errors only
   * those (retrying cannot help until they change); the others go on. When every channel alone is accepted, the
   * server-side options were the trouble: the stream goes on without them (the handlers filter in the browser).
   */
  async isolateRefusedChannels(generation, body) {
    const candidates = [...this.channels.values()].filter((channel) => channel.state !== "errored");
    let refused = candidates;
    if (candidates.length > 1) {
      refused = [];
      for (const channel of candidates) {
        const status = await this.probeChannel(channel);
        if (status === 400) refused.push(channel);
      }
      if (generation !== this.generation) return;
      if (refused.length === 0 && !this.serverOptionsRefused) {
        this.serverOptionsRefused = true;
        this.connect();
        return;
      }
      if (refused.length === 0) refused = candidates;
    }
    for (const channel of refused) {
      const error = apiError("stream", 400, body, { channel: channel.name });
      this.emitError(error);
      channel.report("CHANNEL_ERROR", error);
    }
    if (this.streamChannels().length > 0) this.connect();
    else this.streamFailed(generation, { noRetry: true });
  }

  /** Asks the server whether it accepts a stream of `channel` alone; the answer's status (the stream is dropped). */
  async probeChannel(channel) {
    const controller = new AbortController();
    const deadline = deadlineSignal(this.clock, this.connectTimeoutMs, controller.signal);
    const headers = { Accept: "text/event-stream" };
    if (this.token) headers.Authorization = `Bearer ${this.token}`;
    try {
      const url = this.streamURL([channel.name], { table: [], event: [], filter: [] });
      const response = await this.fetchImpl(url, { headers, signal: deadline.signal, cache: "no-store" });
      controller.abort();
      response.body?.cancel?.().catch(() => {});
      return response.status;
    } catch {
      return null;
    } finally {
      deadline.clear();
    }
  }

  /** Reads frames until the stream ends; a control frame decides what comes next. */
  async readStream(generation, response, controller) {
    const reader = response.body.getReader();
    const decoder = new TextDecoder();
    const parser = new SSEParser();
    let control = null;
    this.armStallTimer(generation, controller);
    try {
      while (control === null) {
        const { value, done } = await reader.read();
        if (generation !== this.generation) return;
        if (done) break;
        this.healthy();
        this.armStallTimer(generation, controller);
        for (const frame of parser.push(decoder.decode(value, { stream: true }))) {
          control = this.handleFrame(frame);
          if (control) break;
        }
      }
    } catch {
      // The connection broke (or was aborted): handled below.
    }
    if (generation !== this.generation) return;
    this.clearTimer("stallTimer");
    if (control) {
      controller.abort();
      await this.handleControl(generation, control);
    } else {
      this.streamFailed(generation);
    }
  }

  /** A stream that stays silent longer than the keepalive period allows is taken as dead. */
  armStallTimer(generation, controller) {
    this.clearTimer("stallTimer");
    this.stallTimer = this.clock.setTimeout(() => {
      this.stallTimer = null;
      if (generation === this.generation) controller.abort();
    }, this.stallTimeoutMs);
  }

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
        if (frame.id) this.cursor = frame.id;
        this.noteCommitTime(data.commit_timestamp);
        this.noteDelay(data.commit_timestamp);
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
    switch (control.type) {
      case "token_expired":
        if (await this.refreshToken()) {
          if (generation === this.generation) this.connect();
        } else {
          this.emitError({ kind: "auth", status: 401, code: "token_expired", message: control.reason });
          this.streamFailed(generation);
        }
        return;
      case "reset":
        await this.reloadSnapshots();
        if (generation === this.generation) this.connect();
        return;
      case "revoked": {
        this.emitError({ kind: "revoked", status: null, code: "revoked", message: control.reason });
        await this.dropInvisibleChannels();
        if (generation !== this.generation) return;
        if (this.streamChannels().length > 0) this.connect();
        else this.streamFailed(generation, { noRetry: true });
        return;
      }
      default:
        this.streamFailed(generation);
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

  /** The stream is down: go offline and try again after the backoff (or when the browser is back online). */
  streamFailed(generation, { waitForOnline = false, noRetry = false } = {}) {
    if (generation !== this.generation || this.closed) return;
    this.closeStream();
    this.goOffline();
    if (noRetry) return;
    const delay = backoffDelay(this.attempt, this.random);
    this.attempt++;
    this.clearTimer("reconnectTimer");
    this.reconnectTimer = this.clock.setTimeout(() => {
      this.reconnectTimer = null;
      this.connect();
    }, waitForOnline ? Math.max(delay, 1000) : delay);
  }

  goLive() {
    this.clearTimer("staleTimer");
    this.healthy();
    this.offlineSince = null;
    this.setStatus(Status.LIVE);
    this.writerBlocked = false;
    this.kickWriter();
  }

  goOffline() {
    if (this.offlineSince === null) this.offlineSince = this.clock.now();
    if (this.currentStatus !== Status.STALE) this.setStatus(Status.OFFLINE);
    if (this.staleTimer === null) this.armStaleTimer();
  }

  /** Reconnects now, skipping the backoff wait (the page's "retry now"). */
  reconnectNow() {
    if (this.closed) return;
    this.attempt = 0;
    this.closeStream();
    this.connect();
    this.writerBlocked = false;
    this.kickWriter();
  }

  /** The browser went offline (drop the stream now) or online (reconnect and replay now). */
  networkChanged(online) {
    if (this.closed) return;
    if (!online) {
      if (this.stream) this.streamFailed(this.stream.generation, { waitForOnline: true });
      else this.goOffline();
      // A write in flight will not be answered now: give it up (it is sent again, with its key, when back online).
      this.writeController?.abort();
      return;
    }
    this.attempt = 0;
    this.writeAttempt = 0;
    if (this.currentStatus !== Status.LIVE && this.streamChannels().length > 0) {
      this.closeStream();
      this.connect();
    }
    this.writerBlocked = false;
    this.kickWriter();
  }

  /** Asks `getToken()` for a fresh token (one call at a time); true when it gave one. */
  async refreshToken() {
    if (!this.getToken) return false;
    if (!this.refreshing) {
      this.refreshing = (async () => {
        try {
          const token = await this.getToken();
          if (!token) return false;
          this.setToken(token);
          return true;
        } catch {
          return false;
        } finally {
          this.refreshing = null;
        }
      })();
    }
    return this.refreshing;
  }

  /** Replaces the token (e.g. after a new login of the same user); `setAuth` also resumes what waited for it. */
  setToken(token) {
    this.token = token;
    this.userId = tokenSubject(token) ?? this.userId;
  }

  /**
   * Gives the client a new token (as supabase-js's `setAuth`): the stream reopens with it, writes that stopped on a
   * 401 are sent again, and channels refused for access (not for their name) try again.
   */
  setAuth(token) {
    const changed = token !== this.token;
    this.setToken(token);
    this.authBlocked = false;
    let rejoined = false;
    for (const channel of this.channels.values()) {
      if (channel.state === "errored" && channel.errorStatus !== 400) {
        channel.state = "joining";
        rejoined = true;
      }
    }
    for (const channel of this.registry.values()) {
      if (channel.state === "errored" && channel.errorStatus !== 400 && !this.channels.has(channel.name)) {
        channel.subscribe();
        rejoined = true;
      }
    }
    if ((changed || rejoined) && this.streamChannels().length > 0) this.channelsChanged();
    this.writerBlocked = false;
    this.kickWriter();
  }

  /** Stops everything: the stream, timers, presence (a keepalive leave) and listeners of the window. */
  close() {
    this.leaveAll();
    this.closed = true;
    this.closeStream();
    for (const name of ["reconnectTimer", "staleTimer", "writeTimer", "delayTimer"]) this.clearTimer(name);
    for (const channel of this.channels.values()) {
      if (channel.trackTimer !== null) this.clock.clearTimeout(channel.trackTimer);
      channel.trackTimer = null;
    }
    this.stopNetwork?.();
    this.stopPageHide?.();
    this.writeController?.abort();
    this.tabPort?.close?.();
  }

  // ------------------------------------------------------------------ the delays this device saw

  /**
   * Notes the delay of a change committed at `commitTimestamp`. Changes committed before the stream opened (less a
   * second of clock skew) are its catch-up after a (re)connect, old by design: they are not counted, as the server
   * does not count them either. Beyond 100 samples per report, random ones are replaced.
   */
  noteDelay(commitTimestamp) {
    if (!this.reportDelayEveryMs || this.streamOpenedAt === null) return;
    const committed = Date.parse(commitTimestamp ?? "");
    if (!Number.isFinite(committed) || committed < this.streamOpenedAt - 1000) return;
    const delay = Math.min(MAX_DELAY_SAMPLE_MS, Math.max(0, this.serverNow() - committed));
    if (this.delaySamples.length < MAX_DELAY_SAMPLES) {
      this.delaySamples.push(delay);
    } else {
      this.delaySamples[Math.floor(this.random() * MAX_DELAY_SAMPLES)] = delay;
    }
    if (this.delayTimer === null) {
      this.delayTimer = this.clock.setTimeout(() => this.reportDelays(), this.reportDelayEveryMs);
    }
  }

  /** Sends the delays noted since the last report; a failed report is dropped (the next one carries new samples). */
  async reportDelays() {
    this.delayTimer = null;
    const samples = this.delaySamples.splice(0);
    if (samples.length === 0 || this.closed) return;
    try {
      await this.request("POST", "/realtime/v1/slo/client-delay", { samples_ms: samples });
    } catch {
      // offline: these samples are lost, which only thins the window
    }
  }

  // ------------------------------------------------------------------ presence on page hide

  /** Installs (once) the page-hide handler that tells the server this user left. */
  watchPageHide() {
    if (this.stopPageHide) return;
    this.stopPageHide = this.pageLifecycle.onHide(() => this.leaveAll());
  }

  /** Leaves every tracked channel with `keepalive` fetches, which outlive the page. */
  leaveAll() {
    for (const channel of this.channels.values()) {
      if (!channel.tracked) continue;
      channel.tracked = null;
      if (channel.trackTimer !== null) this.clock.clearTimeout(channel.trackTimer);
      channel.trackTimer = null;
      this.request("DELETE", `/realtime/v1/presence/${channel.resourcePath}`, undefined, { keepalive: true }).catch(() => {});
    }
  }

  // ------------------------------------------------------------------ REST

  /**
   * A REST call with the token (and one retry after a token refresh on 401). Every call has a deadline
   * (`requestTimeoutMs`, 15 s) for the whole answer, body included: it rejects with a TimeoutError rather than hang.
   * The answer is read in full; what it returns has `status`, `ok`, `headers` and `text()`/`json()`.
   */
  async request(method, path, body, { headers = {}, keepalive = false, retried = false, signal = null } = {}) {
    const init = { method, headers: { Accept: "application/json", ...headers }, keepalive };
    if (this.token) init.headers.Authorization = `Bearer ${this.token}`;
    if (body !== undefined) {
      init.headers["Content-Type"] = "application/json";
      init.body = JSON.stringify(body);
    }
    const deadline = deadlineSignal(this.clock, this.requestTimeoutMs, signal);
    init.signal = deadline.signal;
    const sentAt = this.clock.now();
    let response;
    try {
      const raw = await this.fetchImpl(`${this.url}${path}`, init);
      const text = raw.status === 204 ? "" : await raw.text();
      response = {
        status: raw.status,
        ok: raw.ok,
        headers: raw.headers,
        text: async () => text,
        json: async () => JSON.parse(text),
      };
    } catch (error) {
      throw deadline.signal.aborted && deadline.signal.reason?.name === "TimeoutError" ? deadline.signal.reason : error;
    } finally {
      deadline.clear();
    }
    this.noteServerDate(response, sentAt);
    if (response.status === 401 && !retried && !keepalive && (await this.refreshToken())) {
      return this.request(method, path, body, { headers, keepalive, retried: true, signal });
    }
    return response;
  }

  // ------------------------------------------------------------------ the local rows

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
   * `{ table, id, data, pending, updatedElsewhere, changedAt }`, or null when it does not exist (or is deleted).
   * `pending` is true while a write of it waits in the queue; `updatedElsewhere` after a 409 took the server's
   * row; `changedAt` is when (client clock, ms) another user's change last reached it.
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

  /** Recomputes a row's view and tells the change listeners (when something visible changed). */
  touch(table, id) {
    const entry = this.entry(table, id);
    if (entry) {
      entry.view = undefined;
      if (!entry.base && entry.ops.length === 0) this.entries(table).delete(id);
    }
    this.emit("change", { table, id, record: this.record(table, id) });
  }

  /**
   * Takes a row as the server has it, unless the local copy is already newer (`updated_at` only ever grows on the
   * server, so an older one is a late replay). Returns whether anything changed.
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
    if (remote && row.updated_by !== this.userId) entry.changedAt = this.clock.now();
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

  /** Stops holding a plan's rows as loaded (they may then be forgotten when the store is full). */
  unloadPlan(planId) {
    this.loadedPlans.delete(planId);
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

  /** Applies a `postgres_changes` event to the local rows, then hands it to the channels it names. */
  applyChangeEvent(event, id) {
    const seq = cursorSequence(id);
    if (event.event === "DELETE") this.applyServerDelete(event.table, event.old_record, { remote: true });
    else this.applyServerRow(event.table, event.record, { remote: true, seq });
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

  /**
   * Loads a plan's snapshot (`GET /rest/v1/plans/{id}/snapshot`): the plan and its tasks become the local rows
   * (tasks of the plan that the snapshot no longer has are dropped, unless a write of them is pending), and the
   * stream resumes from the snapshot's cursor when that is earlier than its own. Rejects with `{status, code}`.
   */
  async loadPlan(planId) {
    const response = await this.request("GET", `/rest/v1/plans/${planId}/snapshot`);
    const body = await readJSON(response);
    if (!response.ok) throw apiError("snapshot", response.status, body, { plan_id: planId });
    const seq = cursorSequence(body.cursor);
    this.applyServerRow("plan", body.plan, { seq });
    const present = new Set();
    for (const task of body.tasks) {
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
    this.rewindCursor(body.cursor);
    return body;
  }

  /** Moves the stream's cursor back to `cursor` when it is earlier (and reopens a running stream). */
  rewindCursor(cursor) {
    if (!cursor) return;
    if (this.cursor !== null && cursorSequence(cursor) > cursorSequence(this.cursor)) return;
    if (this.cursor === cursor) return;
    this.cursor = cursor;
    if (this.stream && this.currentStatus === Status.LIVE) this.channelsChanged();
  }

  /** After `reset`: the cursor is useless, so every loaded plan is read again and streaming starts from there. */
  async reloadSnapshots() {
    this.cursor = null;
    for (const planId of [...this.loadedPlans]) {
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
   * Writes on one table: `insert(values)`, `update(id, patch)` (or `update(patch).eq("id", id)`, as supabase-js
   * has it), `delete(id)` (or `delete().eq("id", id)`). Each applies at once, joins the queue and returns a promise
   * of `{ data, error }`, settled when the server has answered (which, offline, may be after a reconnect). An insert
   * without an `id` gets a new UUID (the temp id, which the server keeps). The table is named in the singular, as
   * the stream names it (`task`), or as its REST collection (`tasks`).
   */
  from(name) {
    const table = TABLE_PATHS[name] ? name : Object.keys(TABLE_PATHS).find((key) => TABLE_PATHS[key] === name);
    if (!table) throw new Error(`${name} cannot be written`);
    const byId = (run) => ({
      eq: (column, value) => {
        if (column !== "id") throw new Error("writes select their row by id: .eq('id', id)");
        return run(value);
      },
    });
    return {
      insert: (values) => this.enqueue("insert", table, values.id ?? this.uuid(), values),
      update: (idOrPatch, patch) =>
        typeof idOrPatch === "string"
          ? this.enqueue("update", table, idOrPatch, patch)
          : byId((id) => this.enqueue("update", table, id, idOrPatch)),
      delete: (id) => (typeof id === "string" ? this.enqueue("delete", table, id, null) : byId((rowId) => this.enqueue("delete", table, rowId, null))),
    };
  }

  /** A fresh UUID for a row made here. */
  newId() {
    return this.uuid();
  }

  /**
   * The writes waiting for the server, oldest first, each with `pending: true`, `failed` (retries used up: the page
   * offers `retryWrite(key)` or `discardWrite(key)`), the last `error`, and `own` (false for another tab's write).
   */
  pendingWrites() {
    return this.queue.map((op) => ({
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

  /** Where this user's writes are stored: one record per write under `queuePrefix` (and the old single key). */
  setQueueScope() {
    const scope = `${this.url}:${this.userId ?? "anonymous"}`;
    this.queueKey = `realtime:queue:${scope}`;
    this.queuePrefix = `realtime:write:${scope}:`;
    this.lockName = `realtime-writer:${scope}`;
  }

  enqueue(kind, table, id, values) {
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
      storageKey: `${this.queuePrefix}${String(createdAt).padStart(15, "0")}:${String(++this.writeCounter).padStart(8, "0")}:${key}`,
      attempts: 0,
      failed: false,
      error: null,
      own: true,
    };
    if (kind === "insert") op.values.id = id;
    const promise = new Promise((resolve) => {
      op.resolve = resolve;
    });
    this.addOp(op);
    this.entry(table, id, true).updatedElsewhere = false;
    this.touch(table, id);
    this.persist(op);
    this.tell({ type: "added", record: this.storedRecord(op) });
    this.queueChanged();
    if (!this.writerBlocked) this.kickWriter();
    return promise;
  }

  /** Puts a write in the queue (ordered by its storage key) and on its row. */
  addOp(op) {
    let index = this.queue.length;
    while (index > 0 && this.queue[index - 1].storageKey > op.storageKey) index--;
    this.queue.splice(index, 0, op);
    const entry = this.entry(op.table, op.id, true);
    entry.ops = this.queue.filter((other) => other.table === op.table && other.id === op.id);
  }

  /** Takes a write out of the queue (its row's ops are the caller's business). */
  dropOp(op) {
    this.queue = this.queue.filter((other) => other !== op);
  }

  /** What is stored (and told to other tabs) of a write. */
  storedRecord(op) {
    const { key, kind, table, id, values, createdAt, storageKey, attempts, failed, error } = op;
    return { key, kind, table, id, values, createdAt, storageKey, attempts, failed, error };
  }

  /** A write restored from storage or told by another tab: no promise here. */
  foreignOp(record) {
    return { attempts: 0, failed: false, error: null, ...record, own: false, resolve: null };
  }

  /** Saves one write's record (saves run in order, one at a time). */
  persist(op) {
    const record = this.storedRecord(op);
    this.persisting = this.persisting
      .then(() => this.storage.set(op.storageKey, record))
      .catch((error) => this.reportCallbackError(error));
    return this.persisting;
  }

  /** Deletes one write's record. */
  unpersist(op) {
    this.persisting = this.persisting
      .then(() => this.storage.delete(op.storageKey))
      .catch((error) => this.reportCallbackError(error));
    return this.persisting;
  }

  /** Tells the other tabs of this user what happened to the queue. */
  tell(message) {
    try {
      this.tabPort?.postMessage(message);
    } catch (error) {
      this.reportCallbackError(error);
    }
  }

  /** Tells the queue listeners. */
  queueChanged() {
    this.emit("queue", this.pendingWrites());
  }

  /** What another tab told: a write added, changed (failed, retried) or settled. */
  tabMessage(message) {
    if (this.closed || !message) return;
    const op = this.queue.find((other) => other.key === (message.key ?? message.record?.key));
    switch (message.type) {
      case "added":
      case "updated":
        if (op) {
          Object.assign(op, { attempts: message.record.attempts, failed: message.record.failed, error: message.record.error });
        } else {
          this.addOp(this.foreignOp(message.record));
        }
        this.touch(message.record.table, message.record.id);
        this.queueChanged();
        if (message.type === "updated" && !message.record.failed) this.kickWriter();
        return;
      case "settled":
        if (!op) return;
        this.settle(op, message);
        this.dropOp(op);
        this.releaseSettled();
        this.queueChanged();
        return;
      case "rolledback":
        if (!op) return;
        this.rollback(op, message.error);
        this.dropOp(op);
        this.releaseSettled();
        this.queueChanged();
        return;
      default:
    }
  }

  /**
   * Restores the writes stored by a previous page or by other open tabs (their rows show as pending at once) and
   * starts replaying them. A queue stored the old way (one array under one key) is moved to one record per write.
   */
  async loadQueue() {
    let records = [];
    try {
      const legacy = await this.storage.get(this.queueKey);
      if (Array.isArray(legacy) && legacy.length > 0 && this.storage.list) {
        let n = 0;
        for (const op of legacy) {
          const storageKey = `${this.queuePrefix}${String(op.createdAt ?? 0).padStart(15, "0")}:${String(n++).padStart(8, "0")}:${op.key}`;
          await this.storage.set(storageKey, { ...op, storageKey, attempts: 0, failed: false, error: null });
        }
        await this.storage.delete(this.queueKey);
      }
      records = this.storage.list ? await this.storage.list(this.queuePrefix) : [];
    } catch (error) {
      this.reportCallbackError(error);
    }
    const touched = new Set();
    for (const [storageKey, record] of records) {
      if (this.queue.some((op) => op.key === record.key)) continue;
      this.addOp(this.foreignOp({ ...record, storageKey }));
      touched.add(`${record.table}\u0000${record.id}`);
    }
    for (const key of touched) {
      const [table, id] = key.split("\u0000");
      this.touch(table, id);
    }
    if (touched.size > 0) this.queueChanged();
    this.kickWriter();
  }

  /** Starts replaying the queue (or asks the running replay to go round again). */
  kickWriter() {
    if (this.closed) return;
    if (this.flushing) {
      this.flushAgain = true;
      return;
    }
    this.clearTimer("writeTimer");
    this.flush();
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
        if (this.flushAgain) this.clearTimer("writeTimer");
      } while (this.flushAgain && !this.closed);
    } catch (error) {
      this.reportCallbackError(error);
    } finally {
      this.flushing = false;
    }
  }

  /** Sends the queued writes one by one, in order; stops at the first that cannot reach the server. */
  async replay() {
    for (;;) {
      if (this.closed || this.authBlocked) return;
      const op = this.queue.find((other) => !other.failed);
      if (!op) return;
      if (!this.network.isOnline()) {
        this.writerBlocked = true;
        return;
      }
      if (this.tabPort && (await this.storage.get(op.storageKey)) === undefined) {
        // Another tab sent it meanwhile (its message may still be on the way).
        if (this.queue.includes(op)) this.settledElsewhere(op);
        continue;
      }
      this.inFlight = op;
      const outcome = await this.send(op);
      this.inFlight = null;
      if (outcome === "retry") {
        this.writerBlocked = true;
        const delay = backoffDelay(this.writeAttempt++, this.random);
        this.clearTimer("writeTimer");
        this.writeTimer = this.clock.setTimeout(() => {
          this.writeTimer = null;
          this.kickWriter();
        }, delay);
        return;
      }
      if (outcome === "blocked") return;
      this.writeAttempt = 0;
      this.writerBlocked = false;
      if (outcome === "failed") continue;
      this.dropOp(op);
      this.unpersist(op);
      this.queueChanged();
      this.releaseSettled();
    }
  }

  /** Resolves the promises of the writes settled so far. */
  releaseSettled() {
    for (const [settled, value] of this.settledWrites.splice(0)) settled.resolve?.(value);
  }

  /** A write whose record another tab removed without a word reaching here: it was sent; the stream brings its row. */
  settledElsewhere(op) {
    const entry = this.entry(op.table, op.id, true);
    entry.ops = entry.ops.filter((other) => other !== op);
    this.dropOp(op);
    this.touch(op.table, op.id);
    op.resolve?.({ data: this.record(op.table, op.id)?.data ?? null, error: null });
    this.queueChanged();
  }

  /**
   * Sends one queued write. Returns "done" (settled either way), "retry" (not reached, or a 5xx/408/429/timeout
   * with tries left), "failed" (tries used up: kept, marked failed, the queue moves on) or "blocked" (401 with no
   * fresh token: the queue waits for setAuth()).
   */
  async send(op) {
    const collection = `/rest/v1/${TABLE_PATHS[op.table]}`;
    const headers = { "Idempotency-Key": op.key };
    const controller = new AbortController();
    this.writeController = controller;
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
      if (this.writeController === controller) this.writeController = null;
    }
    const body = response.status === 204 ? null : await readJSON(response);
    const settled = (outcome) => {
      this.settle(op, outcome);
      this.tell({ type: "settled", key: op.key, ...outcome });
      return "done";
    };
    if (response.ok) {
      return op.kind === "delete" ? settled({ deleted: true }) : settled({ row: body });
    }
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
    const error = apiError("rejected", response.status, body, { table: op.table, id: op.id, op: op.kind });
    this.rollback(op, error);
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
    this.tell({ type: "updated", record: this.storedRecord(op) });
    this.touch(op.table, op.id);
    this.queueChanged();
    this.emitError({ ...error, kind: "failed", table: op.table, id: op.id, key: op.key });
    return "failed";
  }

  /** Sends a failed write again (its tries start over). Returns whether there was such a write. */
  retryWrite(key) {
    const op = this.queue.find((other) => other.key === key);
    if (!op) return false;
    Object.assign(op, { failed: false, attempts: 0, error: null });
    this.persist(op);
    this.tell({ type: "updated", record: this.storedRecord(op) });
    this.touch(op.table, op.id);
    this.queueChanged();
    this.writerBlocked = false;
    this.writeAttempt = 0;
    this.kickWriter();
    return true;
  }

  /**
   * Gives up a write that is not being sent right now (typically a failed one): the row goes back to the server's
   * version and the write's promise resolves with the error `discarded`. Returns whether it was discarded.
   */
  discardWrite(key) {
    const op = this.queue.find((other) => other.key === key);
    if (!op || op === this.inFlight) return false;
    const error = { kind: "discarded", status: null, code: "discarded", message: "The change was discarded.", table: op.table, id: op.id };
    this.rollback(op, error, { report: false });
    this.dropOp(op);
    this.unpersist(op);
    this.tell({ type: "rolledback", key: op.key, error });
    this.releaseSettled();
    this.queueChanged();
    return true;
  }

  /** Takes the server's answer for a write: its row (or the deletion) replaces the optimistic state. */
  settle(op, { row = null, deleted = false, conflict = false }) {
    const entry = this.entry(op.table, op.id, true);
    entry.ops = entry.ops.filter((other) => other !== op);
    if (deleted) {
      this.applyServerDelete(op.table, { ...(entry.base ?? {}), id: op.id, updated_at: undefined });
    } else if (row) {
      this.applyServerRow(op.table, row);
    }
    if (conflict) {
      entry.updatedElsewhere = true;
      entry.changedAt = this.clock.now();
    }
    this.touch(op.table, op.id);
    this.settledWrites.push([op, { data: deleted ? null : row, error: conflict ? { code: "stale_update", status: 409 } : null }]);
  }

  /** Undoes a refused write (and the queued writes of a row whose insert was refused), and reports it. */
  rollback(op, error, { report = true } = {}) {
    const entry = this.entry(op.table, op.id, true);
    const dropped = new Set([op]);
    if (op.kind === "insert" && !entry.base) {
      for (const other of this.queue) if (other.table === op.table && other.id === op.id) dropped.add(other);
    }
    entry.ops = entry.ops.filter((other) => !dropped.has(other));
    for (const other of dropped) {
      if (other === op) continue;
      this.dropOp(other);
      this.unpersist(other);
    }
    this.touch(op.table, op.id);
    for (const other of dropped) this.settledWrites.push([other, { data: null, error }]);
    if (report) this.emitError(error);
  }
}
