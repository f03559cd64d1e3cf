// Test doubles for the client library: a manual clock, a fake server behind an injected fetch (REST answers and
// controllable SSE streams), a switchable network and helpers to make rows and tokens.

import { createClient, createMemoryStorage, timeKey } from "../../Sources/Realtime/Web/Public/realtime.js";

export const PLAN = "22222222-2222-4222-8222-222222222222";
export const BRANCH = "11111111-1111-4111-8111-111111111111";
export const ME = "aaaaaaaa-0000-4000-8000-000000000002";
export const OTHER = "aaaaaaaa-0000-4000-8000-000000000001";

/** What the server answers to `GET /realtime/v1/tables`: its table registry, the client's only table map. */
export const TABLES = Object.freeze({
  tables: [
    { table: "plan", path: "plans", writable: true, channels: ["plan", "branch"] },
    { table: "task", path: "tasks", writable: true, channels: ["plan", "branch"] },
    { table: "client_card", path: "client_cards", writable: true, channels: ["branch"] },
    { table: "attachment", path: "attachments", writable: true, channels: ["plan", "branch"] },
    { table: "status_history", path: "status_history", writable: false, channels: ["plan", "branch"] },
  ],
});

/** The answer to `GET /realtime/v1/tables`: 200 with `map` (by default TABLES). */
export function tablesAnswer(map = TABLES) {
  return { status: 200, body: map, headers: { "Cache-Control": "no-cache" } };
}

/** Lets pending promises, stream reads and microtasks run. */
export async function settle(rounds = 10) {
  for (let i = 0; i < rounds; i++) await new Promise((resolve) => setImmediate(resolve));
}

/** A clock whose time moves only when told; timers fire in order as it moves. */
export class FakeClock {
  constructor(start = Date.parse("2026-11-28T09:00:00Z")) {
    this.time = start;
    this.timers = new Map();
    this.nextId = 1;
  }

  now() {
    return this.time;
  }

  setTimeout(fn, ms) {
    const id = this.nextId++;
    this.timers.set(id, { at: this.time + Math.max(0, ms || 0), fn });
    return id;
  }

  clearTimeout(id) {
    this.timers.delete(id);
  }

  /** The delays of the pending timers, from now. */
  pending() {
    return [...this.timers.values()].map((timer) => timer.at - this.time).sort((a, b) => a - b);
  }

  /** Moves time forward by `ms`, firing every timer that falls due (and letting async work run after each). */
  async advance(ms) {
    const target = this.time + ms;
    for (;;) {
      await settle();
      let next = null;
      for (const [id, timer] of this.timers) {
        if (timer.at <= target && (!next || timer.at < next[1].at)) next = [id, timer];
      }
      if (!next) break;
      this.timers.delete(next[0]);
      this.time = next[1].at;
      next[1].fn();
    }
    this.time = target;
    await settle();
  }
}

/** A JWT-shaped token for `sub` (the client only reads the payload). */
export function token(sub = ME, tag = "1") {
  const part = (value) => Buffer.from(JSON.stringify(value)).toString("base64url");
  return `${part({ alg: "HS256", typ: "JWT" })}.${part({ sub, role: "authenticated", tag })}.signature`;
}

/** A task row as the server renders it. */
export function task(id, fields = {}) {
  return {
    id,
    branch_id: BRANCH,
    plan_id: PLAN,
    title: `Task ${id.slice(-4)}`,
    starts_at: "2026-11-28T09:00:00+00:00",
    ends_at: "2026-11-28T11:00:00+00:00",
    status: "taken",
    client_card_id: null,
    created_at: "2026-11-28T08:00:00.000001+00:00",
    updated_at: "2026-11-28T08:00:00.000001+00:00",
    updated_by: OTHER,
    ...fields,
  };
}

/** A task id with a readable tail, e.g. taskId(1) → "…000000000001". */
export function taskId(n) {
  return `33333333-3333-4333-8333-${String(n).padStart(12, "0")}`;
}

/** Sequential UUIDs, so that ids and Idempotency-Keys are predictable. */
export function sequentialIds(prefix = "99999999-9999-4999-8999") {
  let n = 0;
  return () => `${prefix}-${String(++n).padStart(12, "0")}`;
}

/** One open SSE response that a test writes frames into. */
export class FakeStream {
  constructor(request) {
    this.request = request;
    this.encoder = new TextEncoder();
    this.open = true;
    this.body = new ReadableStream({
      start: (controller) => {
        this.controller = controller;
      },
    });
    request.signal?.addEventListener("abort", () => this.fail(new DOMException("aborted", "AbortError")));
  }

  send(text) {
    if (this.open) this.controller.enqueue(this.encoder.encode(text));
  }

  /** Writes a frame: `event`, JSON `data`, and an `id:` line when `id` is given. */
  frame(event, data, id) {
    this.send(`${id !== undefined ? `id: ${id}\n` : ""}event: ${event}\ndata: ${JSON.stringify(data)}\n\n`);
  }

  /** A postgres_changes frame for `record` (UPDATE unless told otherwise). */
  change(
    id,
    record,
    { event = "UPDATE", table = "task", old = {}, channels = [`plan:${PLAN}`], commit = "2026-11-28T09:00:00.000001Z" } = {},
  ) {
    this.frame(
      "postgres_changes",
      {
        type: "postgres_changes",
        schema: "public",
        table,
        event,
        commit_timestamp: commit,
        channels,
        record: event === "DELETE" ? {} : record,
        old_record: event === "DELETE" ? record : old,
      },
      String(id),
    );
  }

  control(type, reason = "test") {
    this.frame(type, { type, reason });
  }

  end() {
    if (!this.open) return;
    this.open = false;
    try {
      this.controller.close();
    } catch {
      // already errored
    }
  }

  fail(error = new TypeError("network error")) {
    if (!this.open) return;
    this.open = false;
    try {
      this.controller.error(error);
    } catch {
      // already closed
    }
  }
}

/**
 * A fake server behind `fetch`. Streams (`/realtime/v1/stream`) answer `streamAnswer(request)` — by default 200 with
 * a new FakeStream; the table map (`/realtime/v1/tables`) answers `tables(request)` — by default TABLES; REST calls
 * answer `rest(request)`. With `online = false` every fetch fails like a lost network.
 */
export function fakeServer() {
  const server = {
    online: true,
    requests: [],
    streams: [],
    streamAnswer: null,
    tables: () => tablesAnswer(),
    rest: () => ({ status: 404, body: { error: { code: "not_found", message: "no such row" } } }),
    /** The REST requests (not streams, nor the table map's), optionally only those with `method`. */
    restRequests(method) {
      return server.requests.filter((r) => !r.stream && !r.tables && (!method || r.method === method));
    },
    /** The requests of the table map. */
    tablesRequests() {
      return server.requests.filter((r) => r.tables);
    },
    get lastStream() {
      return server.streams[server.streams.length - 1];
    },
    async fetch(url, init = {}) {
      const parsed = new URL(url);
      const headers = Object.fromEntries(Object.entries(init.headers ?? {}).map(([k, v]) => [k.toLowerCase(), v]));
      const request = {
        method: init.method ?? "GET",
        url,
        path: parsed.pathname,
        query: parsed.searchParams,
        headers,
        body: init.body ? JSON.parse(init.body) : undefined,
        keepalive: init.keepalive ?? false,
        signal: init.signal,
        stream: parsed.pathname === "/realtime/v1/stream",
        tables: parsed.pathname === "/realtime/v1/tables",
      };
      server.requests.push(request);
      await Promise.resolve();
      if (!server.online) throw new TypeError("Failed to fetch");
      if (request.stream) {
        const answer = server.streamAnswer?.(request);
        if (answer) return jsonResponse(answer);
        const stream = new FakeStream(request);
        server.streams.push(stream);
        return new Response(stream.body, { status: 200, headers: { "Content-Type": "text/event-stream" } });
      }
      if (request.tables && request.method === "GET") return jsonResponse(await server.tables(request));
      const answer = await server.rest(request);
      return jsonResponse(answer);
    },
  };
  return server;
}

function jsonResponse({ status, body, headers = {} }) {
  if (status === 204) return new Response(null, { status, headers });
  return new Response(body === undefined ? null : JSON.stringify(body), {
    status,
    headers: { "Content-Type": "application/json", ...headers },
  });
}

/** A network whose online/offline state a test switches. */
export function fakeNetwork() {
  const listeners = new Set();
  const network = {
    online: true,
    isOnline: () => network.online,
    subscribe(callback) {
      listeners.add(callback);
      return () => listeners.delete(callback);
    },
    set(online) {
      network.online = online;
      for (const callback of listeners) callback(online);
    },
  };
  return network;
}

/** A client wired to the fakes; `options` override any of them. */
export function makeClient(server, clock, options = {}) {
  const network = options.network ?? fakeNetwork();
  const hide = new Set();
  const client = createClient({
    url: "http://realtime.test",
    token: token(),
    fetch: server.fetch,
    storage: createMemoryStorage(),
    clock,
    random: () => 0.5,
    uuid: sequentialIds(),
    network,
    reportDelayEveryMs: 0,
    pageLifecycle: {
      onHide(callback) {
        hide.add(callback);
        return () => hide.delete(callback);
      },
    },
    ...options,
  });
  client.testNetwork = network;
  client.hidePage = () => {
    for (const callback of hide) callback();
  };
  return client;
}

/** A snapshot answer for the plan with `tasks`. */
export function snapshot(tasks, cursor = "10~100:100:") {
  return {
    status: 200,
    body: {
      plan: {
        id: PLAN,
        branch_id: BRANCH,
        title: "Demo week",
        period_start: "2026-11-28",
        period_end: "2026-12-04",
        created_at: "2026-11-28T08:00:00+00:00",
        updated_at: "2026-11-28T08:00:00+00:00",
        updated_by: OTHER,
      },
      tasks,
      cursor,
    },
  };
}

/** Answers REST calls like the real server for one plan's tasks: snapshot, POST, PATCH (with LWW) and DELETE. */
export function taskBackend(server, initialTasks, { clock } = {}) {
  const rows = new Map(initialTasks.map((row) => [row.id, { ...row }]));
  const keys = new Map();
  const backend = { rows, keys, cursor: "10~100:100:", refuse: null };
  server.rest = (request) => {
    const refused = backend.refuse?.(request);
    if (refused) return refused;
    const stamp = (clientTime) => {
      const now = clock ? new Date(clock.now()).toISOString() : new Date().toISOString();
      return clientTime && timeKey(clientTime) < timeKey(now) ? clientTime : now;
    };
    if (request.method === "GET" && request.path === `/rest/v1/plans/${PLAN}/snapshot`) {
      return snapshot([...rows.values()], backend.cursor);
    }
    const match = /^\/rest\/v1\/tasks(?:\/([^/]+))?$/.exec(request.path);
    if (!match) return { status: 404, body: { error: { code: "not_found", message: "no route" } } };
    const id = match[1];
    if (request.method === "POST") {
      const key = request.headers["idempotency-key"];
      if (key && keys.has(key)) return keys.get(key);
      if (rows.has(request.body.id)) return { status: 409, body: { error: { code: "duplicate", message: "exists" } } };
      const row = task(request.body.id, { ...request.body, updated_at: stamp(request.body.updated_at), updated_by: ME });
      rows.set(row.id, row);
      const answer = { status: 201, body: row };
      if (key) keys.set(key, answer);
      return answer;
    }
    const row = rows.get(id);
    if (!row) return { status: 404, body: { error: { code: "not_found", message: "no such row" } } };
    if (request.method === "PATCH") {
      const { updated_at: clientTime, ...fields } = request.body;
      if (clientTime && timeKey(row.updated_at) > timeKey(clientTime)) {
        return { status: 409, body: { error: { code: "stale_update", message: "newer" }, current: row } };
      }
      const updated = { ...row, ...fields, updated_at: stamp(clientTime), updated_by: ME };
      rows.set(id, updated);
      return { status: 200, body: updated };
    }
    if (request.method === "DELETE") {
      rows.delete(id);
      return { status: 204 };
    }
    if (request.method === "GET") return { status: 200, body: row };
    return { status: 405, body: { error: { code: "method_not_allowed", message: "no" } } };
  };
  return backend;
}
