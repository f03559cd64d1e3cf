// presence.js — who is on a plan and which slot they are on: the presence map kept from the stream's presence frames
// (sync, join, update, leave), and the heartbeats that announce this user's state while it is tracked. Presence
// carries user ids and `{slot, action}` only: names come from the REST API, never through presence.

import { apiError, readJSON } from "./connection.js";

/** Sends are spaced by at least this much, so that fast focus changes never hit the rate limit (4 a second). */
export const PRESENCE_MIN_INTERVAL_MS = 250;

/**
 * Applies one presence frame to `map` (user id → `{ state, online_since, last_seen }`), in place. Returns the
 * users who joined (or changed state) and those who left, as `[{ key, state, … }]` — supabase-js calls them
 * `newPresences` and `leftPresences`.
 */
export function applyPresenceFrame(map, message) {
  const joined = [];
  const left = [];
  if (message.event === "sync") {
    const next = new Map(
      (message.presences ?? []).map((p) => [p.user_id, { state: p.state, online_since: p.online_since, last_seen: p.last_seen }]),
    );
    for (const [key, value] of map) if (!next.has(key)) left.push({ key, ...value });
    for (const [key, value] of next) {
      if (JSON.stringify(map.get(key)?.state) !== JSON.stringify(value.state)) joined.push({ key, ...value });
    }
    map.clear();
    for (const [key, value] of next) map.set(key, value);
  } else if (message.event === "join" || message.event === "update") {
    const previous = map.get(message.user_id) ?? {};
    const value = { ...previous, state: message.state };
    map.set(message.user_id, value);
    joined.push({ key: message.user_id, ...value });
  } else if (message.event === "leave") {
    const previous = map.get(message.user_id);
    map.delete(message.user_id);
    left.push({ key: message.user_id, ...(previous ?? { state: message.state ?? {} }) });
  }
  return { joined, left };
}

/**
 * The map in supabase-js's shape: `{ [userId]: [meta] }`, each meta the tracked state (`slot`, `action`) with
 * `online_since` and `last_seen` when the server sent them. One user has one meta here (the server keeps one state
 * per user and channel).
 */
export function presenceStateOf(map) {
  const state = {};
  for (const [key, value] of map) {
    const meta = { ...(value.state ?? {}) };
    if (value.online_since !== undefined) meta.online_since = value.online_since;
    if (value.last_seen !== undefined) meta.last_seen = value.last_seen;
    state[key] = [meta];
  }
  return state;
}

/**
 * This user's presence on one channel: announces the tracked state (`{slot, action}`) and heartbeats it at the
 * server's `heartbeat_seconds` while it lasts; a new state replaces the old one at once (spaced by 250 ms).
 * `channel` gives `client` (request, clock, emitError) and `resourcePath`.
 */
export class PresenceTracker {
  constructor(channel) {
    this.channel = channel;
    this.tracked = null;
    this.timer = null;
    this.sending = null;
    this.lastSentAt = Number.NEGATIVE_INFINITY;
    /** Resolves the promises of track() calls once their state has been answered. */
    this.waiting = [];
  }

  get client() {
    return this.channel.client;
  }

  get path() {
    return `/realtime/v1/presence/${this.channel.resourcePath}`;
  }

  /** Starts (or changes) the tracked state; resolves "ok" once the server took it, or "error". */
  track(state) {
    this.tracked = { slot: state.slot, action: state.action };
    const answered = new Promise((resolve) => this.waiting.push(resolve));
    this.schedule(0);
    return answered;
  }

  /** Stops heartbeating and tells the server this user left. */
  async untrack() {
    this.tracked = null;
    this.stopTimer();
    this.answer("ok");
    // A heartbeat still on its way would otherwise land after the leave and bring the state back.
    await this.sending;
    if (this.tracked) return "ok";
    const response = await this.client.request("DELETE", this.path).catch(() => null);
    return response?.ok ? "ok" : "error";
  }

  /** Leaves with a keepalive request, which outlives the page. */
  leaveOnHide() {
    if (!this.tracked) return false;
    this.tracked = null;
    this.stopTimer();
    this.answer("ok");
    this.client.request("DELETE", this.path, undefined, { keepalive: true }).catch(() => {});
    return true;
  }

  stopTimer() {
    if (this.timer !== null) this.client.clock.clearTimeout(this.timer);
    this.timer = null;
  }

  answer(result) {
    for (const resolve of this.waiting.splice(0)) resolve(result);
  }

  /** Sends the tracked state after `delay` ms (and no sooner than the minimum interval allows). */
  schedule(delay) {
    this.stopTimer();
    const earliest = this.lastSentAt + PRESENCE_MIN_INTERVAL_MS - this.client.clock.now();
    this.timer = this.client.clock.setTimeout(() => {
      this.timer = null;
      this.send();
    }, Math.max(delay, earliest, 0));
  }

  /** One heartbeat (unless one is on its way). */
  send() {
    if (!this.tracked || this.sending) return this.sending;
    this.sending = this.heartbeat(this.tracked).finally(() => {
      this.sending = null;
    });
    return this.sending;
  }

  /** POSTs `state`, then schedules the next heartbeat (or the new state, if it changed meanwhile). */
  async heartbeat(state) {
    this.lastSentAt = this.client.clock.now();
    let next = 10_000;
    try {
      const response = await this.client.request("POST", this.path, { state });
      if (response.status === 429) {
        next = Math.max(1, Number(response.headers.get("Retry-After")) || 1) * 1000;
      } else if (response.ok) {
        const body = await readJSON(response);
        next = Math.max(1, Number(body?.heartbeat_seconds) || 10) * 1000;
        if (this.tracked === state) this.answer("ok");
      } else {
        this.client.emitError(apiError("presence", response.status, await readJSON(response), { channel: this.channel.name }));
        if (this.tracked === state) this.answer("error");
      }
    } catch {
      next = 2000;
    }
    if (!this.tracked) return;
    queueMicrotask(() => {
      if (this.tracked) this.schedule(this.tracked === state ? next : 0);
    });
  }
}
