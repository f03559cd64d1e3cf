// tables.js — the server's table registry as the client sees it (`GET /realtime/v1/tables`): which tables exist,
// which can be written, and the REST collection of each. The client keeps no copy of its own: the map is fetched
// once per client, the first time a write is sent, through the client's request path.

import { apiError, readJSON } from "./connection.js";

/** Where the server serves its table registry (no token needed). */
export const TABLES_PATH = "/realtime/v1/tables";

/**
 * The table map. `request(method, path)` is the REST call (connection.js); the answer is
 * `{"tables":[{"table","path","writable","channels"}, …]}`. A table is named in the singular, as the stream names it
 * (`task`), or by its REST collection (`tasks`); the singular wins where one table's collection is another's name.
 */
export class TableMap {
  constructor({ request }) {
    this.request = request;
    /** The fetch in progress or done; forgotten when it fails, so that the next need asks again. */
    this.loading = null;
    /** Once fetched: each table's entry under its name and under its collection. */
    this.byName = null;
  }

  /**
   * The map, fetched the first time it is asked for (one request however many ask at once). Rejects on a network
   * error, a timeout, a non-2xx answer or a body that is not a map; then the next call fetches again.
   */
  load() {
    if (!this.loading) {
      const loading = this.fetch();
      this.loading = loading;
      loading.catch(() => {
        if (this.loading === loading) this.loading = null;
      });
    }
    return this.loading;
  }

  async fetch() {
    const response = await this.request("GET", TABLES_PATH);
    const body = await readJSON(response);
    if (!response.ok) throw apiError("tables", response.status, body);
    if (!Array.isArray(body?.tables)) {
      const error = { code: "bad_table_map", message: "The server's table map is not a list of tables." };
      throw apiError("tables", response.status, { error });
    }
    const byName = new Map();
    const entries = [];
    for (const item of body.tables) {
      if (typeof item?.table !== "string" || typeof item.path !== "string") continue;
      const channels = Array.isArray(item.channels) ? item.channels.filter((c) => typeof c === "string") : [];
      const { table, path } = item;
      const entry = Object.freeze({ table, path, writable: item.writable === true, channels: Object.freeze(channels) });
      entries.push(entry);
      byName.set(entry.table, entry);
    }
    for (const entry of entries) if (!byName.has(entry.path)) byName.set(entry.path, entry);
    this.byName = byName;
    return byName;
  }

  /**
   * A table's entry `{table, path, writable, channels}` by either of its names, if the map is here already: the
   * entry, null when the server has no such table, or undefined while the map has not been fetched.
   */
  known(name) {
    if (!this.byName) return undefined;
    return this.byName.get(name) ?? null;
  }

  /** A table's entry by either of its names (fetching the map first if need be), or null when there is none. */
  async resolve(name) {
    await this.load();
    return this.known(name);
  }
}
