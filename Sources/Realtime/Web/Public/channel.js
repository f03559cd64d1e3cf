// channel.js — one subscription of the shared stream, in the shape supabase-js users know:
// `client.channel("plan:<id>").on("postgres_changes", {table, event, filter}, cb).on("presence", {event}, cb)
//   .on("broadcast", {event}, cb).subscribe((status, error) => …)`.

import { matchesFilter } from "./filters.js";
import { PresenceTracker, applyPresenceFrame, presenceStateOf } from "./presence.js";

/** What a subscribe() callback hears, as supabase-js names it. */
export const ChannelStatus = Object.freeze({
  SUBSCRIBED: "SUBSCRIBED",
  TIMED_OUT: "TIMED_OUT",
  CLOSED: "CLOSED",
  CHANNEL_ERROR: "CHANNEL_ERROR",
});

export const DEFAULT_SUBSCRIBE_TIMEOUT_MS = 10_000;

export class RealtimeChannel {
  constructor(client, name) {
    this.client = client;
    this.name = name;
    this.handlers = [];
    /** closed | joining | joined | errored */
    this.state = "closed";
    this.statusCallback = null;
    this.subscribeTimer = null;
    /** user id → { state, online_since, last_seen } */
    this.presences = new Map();
    this.presence = new PresenceTracker(this);
    /** The HTTP status that errored this channel (400: the server refuses the name; not retried until subscribe()). */
    this.errorStatus = null;
  }

  /** supabase-js calls the channel's name its topic. */
  get topic() {
    return this.name;
  }

  /**
   * Adds a handler. `type` is "postgres_changes" (filter `{table, event, filter}`, each optional), "presence"
   * (filter `{event: "sync"|"join"|"update"|"leave"}`) or "broadcast" (filter `{event}`); the filter may be omitted.
   * The postgres_changes filters are also sent to the server (see filters.js), which then sends less.
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

  /**
   * Joins the shared stream; `callback(status, error)` hears SUBSCRIBED, CHANNEL_ERROR, TIMED_OUT (not subscribed
   * within `timeoutMs`, 10 s; SUBSCRIBED may still follow) and CLOSED. Calling it again on an errored channel
   * tries again.
   */
  subscribe(callback, timeoutMs = DEFAULT_SUBSCRIBE_TIMEOUT_MS) {
    if (callback) this.statusCallback = callback;
    if (this.state === "joined" && this.client.channels.get(this.name) === this) {
      this.client.channelsChanged();
      return this;
    }
    this.state = "joining";
    this.errorStatus = null;
    this.client.addChannel(this);
    if (callback && timeoutMs > 0) {
      this.clearSubscribeTimer();
      this.subscribeTimer = this.client.clock.setTimeout(() => {
        this.subscribeTimer = null;
        if (this.state === "joining") this.report(ChannelStatus.TIMED_OUT);
      }, timeoutMs);
    }
    return this;
  }

  clearSubscribeTimer() {
    if (this.subscribeTimer !== null) this.client.clock.clearTimeout(this.subscribeTimer);
    this.subscribeTimer = null;
  }

  /** Leaves the stream (and presence, if tracked); resolves "ok". */
  async unsubscribe() {
    if (this.presence.tracked) await this.untrack();
    this.state = "closed";
    this.clearSubscribeTimer();
    this.client.detachChannel(this);
    this.report(ChannelStatus.CLOSED);
    return "ok";
  }

  /** Whether this channel listens to presence (then the stream also carries `presence:<name>`). */
  get wantsPresence() {
    return this.handlers.some((handler) => handler.type === "presence");
  }

  /** Who is here, as supabase-js has it: `{ [userId]: [{ slot, action, online_since, last_seen }] }`. */
  presenceState() {
    return presenceStateOf(this.presences);
  }

  /** The raw presence map: user id → `{ state, online_since, last_seen }`. */
  presenceMap() {
    return Object.fromEntries(this.presences);
  }

  /** The REST path of this channel's presence or broadcast endpoint, e.g. `plan/<id>`. */
  get resourcePath() {
    const [kind, id] = this.name.split(":");
    return `${kind}/${id}`;
  }

  /** Whether this user's state is being tracked here. */
  get tracked() {
    return this.presence.tracked;
  }

  /**
   * Announces this user's state on the channel (`{slot, action}`) and heartbeats it while it lasts; a new state
   * replaces the old one. Resolves "ok" once the server took it ("error" if it refused).
   */
  track(state) {
    this.client.watchPageHide();
    return this.presence.track(state);
  }

  /** Stops heartbeating and tells the server this user left; resolves "ok" or "error". */
  untrack() {
    return this.presence.untrack();
  }

  /** Sends a broadcast to everyone on the channel: `send({type: "broadcast", event, payload})`; resolves "ok". */
  async send({ type = "broadcast", event, payload = {} }) {
    if (type !== "broadcast") throw new Error("only broadcast messages can be sent");
    const response = await this.client
      .request("POST", `/realtime/v1/broadcast/${this.resourcePath}`, { event, payload })
      .catch(() => null);
    return response?.ok ? "ok" : "error";
  }

  /** Tells the subscribe() callback. */
  report(status, error) {
    if (status === ChannelStatus.SUBSCRIBED) {
      this.state = "joined";
      this.clearSubscribeTimer();
    }
    if (status === ChannelStatus.CHANNEL_ERROR) {
      this.state = "errored";
      this.errorStatus = error?.status ?? null;
      this.clearSubscribeTimer();
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

  /**
   * Updates the presence map from a presence frame and tells the presence handlers. The payload is the frame with
   * `presences` (the whole map), and supabase-js's `key`, `newPresences`, `leftPresences` and `currentPresences`.
   */
  dispatchPresence(message) {
    const { joined, left } = applyPresenceFrame(this.presences, message);
    const metas = (entries) => entries.map(({ key, state, online_since, last_seen }) => ({ key, ...(state ?? {}), online_since, last_seen }));
    const payload = {
      ...message,
      key: message.user_id,
      presences: this.presenceMap(),
      newPresences: metas(joined),
      leftPresences: metas(left),
      currentPresences: this.presenceState()[message.user_id] ?? [],
    };
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
