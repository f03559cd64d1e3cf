// filters.js — the stream's filter syntax (`column=op.value`), tested on rows in the browser, and the server-side
// options (`table=`, `event=`, `filter=`) that narrow a stream to what its channels' handlers want.

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

/** No server-side narrowing: every table, every operation, no filter. */
export const NO_STREAM_OPTIONS = Object.freeze({ table: [], event: [], filter: [] });

/**
 * The server-side options that carry what every one of `channels` wants (each channel: `{handlers}` with
 * `{type, filter: {table, event, filter}}`), so that the server cuts the traffic: the union of tables and of
 * events, and a filter only when all handlers share one (the server's filters must all hold, so two different
 * filters cannot be sent). A channel without postgres_changes handlers wants every change (for the local rows).
 * The handlers still filter in the browser: the options only narrow the stream.
 */
export function streamOptions(channels) {
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

/** The query of a stream of channel `names` with `options`: `channel=…&table=…&event=…&filter=…`. */
export function streamQuery(names, options = NO_STREAM_OPTIONS) {
  const query = names.map((name) => `channel=${encodeURIComponent(name)}`);
  if (options.table.length > 0) query.push(`table=${encodeURIComponent(options.table.join(","))}`);
  if (options.event.length > 0) query.push(`event=${encodeURIComponent(options.event.join(","))}`);
  for (const filter of options.filter) query.push(`filter=${encodeURIComponent(filter)}`);
  return query.join("&");
}
