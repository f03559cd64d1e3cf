// realtime.js — the browser client of the Realtime server: the entry point, re-exporting the modules beside it.
// Plain ES modules, no dependencies, no build step; the server serves them at /client/<name>:
//
//   import { createClient } from "/client/realtime.js";
//   const client = createClient({ url: location.origin, token, getToken });
//   await client.loadPlan(planId);                    // snapshot: rows + the cursor to stream from
//   client.channel(`plan:${planId}`)
//     .on("postgres_changes", { table: "task", event: "*" }, (change) => { … })
//     .on("presence", { event: "join" }, ({ key, newPresences }) => { … })
//     .on("broadcast", { event: "cursor" }, (message) => { … })
//     .subscribe((status) => { … });                  // SUBSCRIBED | CHANNEL_ERROR | TIMED_OUT | CLOSED
//   client.onChange(({ table, id }) => render(client.record(table, id)));
//   client.from("tasks").update({ status: "done" }).eq("id", taskId);   // optimistic, queued, reconciled
//
// The modules, by job:
// - sse.js         Server-Sent-Events parsing
// - platform.js    the browser's clock, network and page-hide signals, and random UUIDs (the defaults)
// - connection.js  REST with deadlines, the one stream for all channels, status, token
// - serverclock.js the estimate of the server's clock (Date headers, commit timestamps)
// - channel.js     channels: handlers, subscribe status, presence and broadcast endpoints
// - presence.js    the presence map and the heartbeats of tracked state
// - filters.js     the stream's filter syntax, and the server-side stream options
// - store.js       the local rows: server versions with pending writes on top, bounded
// - tables.js      the server's table map: which tables can be written, and where
// - queue.js       the write queue: optimistic, stored, replayed by one tab, bounded retries
// - storage.js     IndexedDB / memory storage, and the tabs' lock and messages
// - delays.js      the reports of the delays this device saw, commit to arrival
// - client.js      RealtimeClient, which puts them together

export * from "./sse.js";
export * from "./filters.js";
export * from "./storage.js";
export * from "./platform.js";
export * from "./serverclock.js";
export * from "./connection.js";
export * from "./presence.js";
export * from "./channel.js";
export * from "./store.js";
export * from "./tables.js";
export * from "./queue.js";
export * from "./delays.js";
export * from "./client.js";
