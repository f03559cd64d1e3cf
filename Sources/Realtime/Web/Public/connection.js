// connection.js — the transport: REST requests with a deadline, the one Server-Sent-Events stream that carries every
// channel (reconnects with backoff, resume by cursor, a stall watchdog, the connect timeout), the status observable
// (connecting | live | offline | stale, stale counted from the last healthy moment) and the token. What the frames
// mean is the client's business (the `host`); the server's clock is estimated in serverclock.js from the answers.
// One file over 400 lines because the Connection is one state machine: the stream's generation, backoff attempt,
// timers and status are read and set by nearly every method, and REST shares the token and its refresh with it.

import { SSEParser } from "./sse.js";
import { NO_STREAM_OPTIONS, streamOptions, streamQuery } from "./filters.js";
import { ServerClock } from "./serverclock.js";

/** The values of `client.status`. */
export const Status = Object.freeze({ CONNECTING: "connecting", LIVE: "live", OFFLINE: "offline", STALE: "stale" });

export const DEFAULT_STALE_AFTER_MS = 60_000;
export const DEFAULT_STALL_TIMEOUT_MS = 45_000;
export const DEFAULT_REQUEST_TIMEOUT_MS = 15_000;
export const DEFAULT_CONNECT_TIMEOUT_MS = 15_000;

// ---------------------------------------------------------------------------------------------- small helpers

/** The longest wait before reconnect attempt `attempt` (0-based): 1 s, 2 s, 4 s, 8 s … at most 30 s. */
export function backoffCeiling(attempt, { baseMs = 1000, maxMs = 30_000 } = {}) {
  return Math.min(maxMs, baseMs * 2 ** Math.min(Math.max(attempt, 0), 30));
}

/** The wait before reconnect attempt `attempt`, with full jitter: uniformly random in [0, ceiling). */
export function backoffDelay(attempt, random = Math.random, options = {}) {
  return Math.floor(random() * backoffCeiling(attempt, options));
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

/** Reads a JSON body, or null when there is none or it is not JSON. */
export async function readJSON(response) {
  try {
    const text = await response.text();
    return text ? JSON.parse(text) : null;
  } catch {
    return null;
  }
}

/** An error object for listeners: what failed, and the server's stable code when there is one. */
export function apiError(kind, status, body, extra = {}) {
  return {
    kind,
    status,
    code: body?.error?.code ?? (status ? `http_${status}` : "network_error"),
    message: body?.error?.message ?? (status ? `The server answered ${status}.` : "The server could not be reached."),
    ...extra,
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

// ---------------------------------------------------------------------------------------------- the connection

/**
 * The transport of one client. `host` is the client: it holds the subscribed `channels` (a Map of name → channel
 * with `name`, `state`, `handlers`, `wantsPresence`) and hears `statusChanged(status)`, `emitError(error)`,
 * `handleFrame(frame)` (returns a control event that ends the stream, or null), `handleControl(generation,
 * control)`, `dropInvisibleChannels()`, `streamLive()` and `tokenChanged()`.
 */
export class Connection {
  constructor(
    host,
    {
      url,
      token = null,
      getToken = null,
      fetch: fetchImpl,
      clock,
      serverClock = new ServerClock(clock),
      random = Math.random,
      network,
      staleAfterMs = DEFAULT_STALE_AFTER_MS,
      stallTimeoutMs = DEFAULT_STALL_TIMEOUT_MS,
      requestTimeoutMs = DEFAULT_REQUEST_TIMEOUT_MS,
      connectTimeoutMs = DEFAULT_CONNECT_TIMEOUT_MS,
    },
  ) {
    if (!fetchImpl) throw new Error("createClient needs fetch");
    this.host = host;
    this.url = url.replace(/\/+$/, "");
    this.token = token ?? null;
    this.userId = tokenSubject(this.token ?? "");
    this.getToken = getToken;
    this.fetchImpl = fetchImpl;
    this.clock = clock;
    /** The estimate of the server's clock, which the `Date` header of every answer narrows. */
    this.serverClock = serverClock;
    this.random = random;
    this.network = network;
    this.staleAfterMs = staleAfterMs;
    this.stallTimeoutMs = stallTimeoutMs;
    this.requestTimeoutMs = requestTimeoutMs;
    this.connectTimeoutMs = connectTimeoutMs;

    this.status = Status.CONNECTING;
    /** When the connection was last known good (stream live, a byte received, or the client created). */
    this.lastHealthyAt = clock.now();
    this.streamOpenedAt = null;
    this.presenceUnsupported = false;
    this.serverOptionsRefused = false;
    this.cursor = null;
    this.generation = 0;
    this.stream = null;
    this.attempt = 0;
    this.reconnectTimer = null;
    this.staleTimer = null;
    this.stallTimer = null;
    /** The watchdog took the stream as dead: the stale period counts from its last bytes, not from now. */
    this.stalled = false;
    this.offlineSince = null;
    this.openQueued = false;
    this.closed = false;
    this.refreshing = null;
  }

  // ------------------------------------------------------------------ status

  setStatus(status) {
    if (status === this.status) return;
    this.status = status;
    this.host.statusChanged(status);
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
    if (this.closed || this.status === Status.LIVE || this.status === Status.STALE) return;
    this.clearTimer("staleTimer");
    const remaining = this.staleAfterMs - (this.clock.now() - this.lastHealthyAt);
    this.staleTimer = this.clock.setTimeout(() => {
      this.staleTimer = null;
      if (this.status !== Status.LIVE && !this.closed) this.setStatus(Status.STALE);
    }, Math.max(0, remaining));
  }

  clearTimer(name) {
    if (this[name] !== null) this.clock.clearTimeout(this[name]);
    this[name] = null;
  }

  // ------------------------------------------------------------------ the token

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

  /** Replaces the token; returns whether it changed. */
  setToken(token) {
    const changed = token !== this.token;
    this.token = token;
    this.userId = tokenSubject(token) ?? this.userId;
    return changed;
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
    this.serverClock.noteServerDate(response, sentAt);
    if (response.status === 401 && !retried && !keepalive && (await this.refreshToken())) {
      return this.request(method, path, body, { headers, keepalive, retried: true, signal });
    }
    return response;
  }

  // ------------------------------------------------------------------ the stream

  /** The subscribed channels the stream carries (errored ones left out). */
  activeChannels() {
    return [...this.host.channels.values()].filter((channel) => channel.state !== "errored");
  }

  /** The stream channel names of the active channels, presence included. */
  streamChannels() {
    return this.channelNames(this.activeChannels());
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

  /** The server-side options for the active channels (none once the server refused them). */
  streamOptions() {
    return this.serverOptionsRefused ? NO_STREAM_OPTIONS : streamOptions(this.activeChannels());
  }

  /** The stream URL for `names` (default: the active channels) with the server-side options. */
  streamURL(names = this.streamChannels(), options = this.streamOptions()) {
    return `${this.url}/realtime/v1/stream?${streamQuery(names, options)}`;
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
    if (this.status === Status.LIVE) {
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
    this.serverClock.noteServerDate(response, sentAt);
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
    for (const channel of this.host.channels.values()) if (channel.state === "joining") channel.report("SUBSCRIBED");
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
      this.host.emitError(apiError("auth", 401, body));
      this.streamFailed(generation);
      return;
    }
    if (response.status === 400 && !this.presenceUnsupported && this.streamChannels().some((n) => n.startsWith("presence:"))) {
      // A server without presence refuses the presence channel: keep the data stream, drop presence.
      this.presenceUnsupported = true;
      this.host.emitError(apiError("presence", 400, body));
      this.connect();
      return;
    }
    if (response.status === 404 || response.status === 403) {
      this.host.emitError(apiError("stream", response.status, body));
      const dropped = await this.host.dropInvisibleChannels();
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
    const candidates = this.activeChannels();
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
      this.host.emitError(error);
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
      const url = this.streamURL([channel.name], NO_STREAM_OPTIONS);
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
          control = this.host.handleFrame(frame);
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
      await this.host.handleControl(generation, control);
    } else {
      this.streamFailed(generation);
    }
  }

  /** A stream that stays silent longer than the keepalive period allows is taken as dead. */
  armStallTimer(generation, controller) {
    this.clearTimer("stallTimer");
    this.stallTimer = this.clock.setTimeout(() => {
      this.stallTimer = null;
      if (generation !== this.generation) return;
      this.stalled = true;
      controller.abort();
    }, this.stallTimeoutMs);
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
    this.stalled = false;
    this.healthy();
    this.offlineSince = null;
    this.setStatus(Status.LIVE);
    this.host.streamLive();
  }

  goOffline() {
    // A live stream was healthy until now, however quiet; one the watchdog gave up on, only until its last bytes.
    if (this.status === Status.LIVE && !this.stalled) this.healthy();
    this.stalled = false;
    if (this.offlineSince === null) this.offlineSince = this.clock.now();
    if (this.status !== Status.STALE) this.setStatus(Status.OFFLINE);
    if (this.staleTimer === null) this.armStaleTimer();
  }

  /** Reconnects now, skipping the backoff wait (the page's "retry now"). */
  reconnectNow() {
    if (this.closed) return;
    this.attempt = 0;
    this.closeStream();
    this.connect();
  }

  /** The browser went offline (drop the stream now) or online (reconnect now). */
  networkChanged(online) {
    if (this.closed) return;
    if (!online) {
      if (this.stream) this.streamFailed(this.stream.generation, { waitForOnline: true });
      else this.goOffline();
      return;
    }
    this.attempt = 0;
    if (this.status !== Status.LIVE && this.streamChannels().length > 0) {
      this.closeStream();
      this.connect();
    }
  }

  /** Stops the stream and the timers. */
  close() {
    this.closed = true;
    this.closeStream();
    for (const name of ["reconnectTimer", "staleTimer"]) this.clearTimer(name);
  }
}
