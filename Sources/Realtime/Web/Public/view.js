// view.js — small helpers the page's views share: status names, formats, DOM updates that touch only what changed,
// and people (labels and initials from user ids, display names when the API gives them).

export const STATUSES = ["taken", "done", "posted", "edited"];

export const dayFormat = new Intl.DateTimeFormat(undefined, { weekday: "short", day: "numeric", month: "short" });
export const longDayFormat = new Intl.DateTimeFormat(undefined, { weekday: "long", day: "numeric", month: "long" });
export const timeFormat = new Intl.DateTimeFormat(undefined, { hour: "2-digit", minute: "2-digit", hour12: false });

/** Sets a property only when it differs, so that redrawing an unchanged element touches nothing. */
export function set(element, property, value) {
  if (element[property] !== value) element[property] = value;
}

export function setData(element, key, value) {
  if (element.dataset[key] !== value) element.dataset[key] = value;
}

export function setAttr(element, name, value) {
  if (element.getAttribute(name) !== value) element.setAttribute(name, value);
}

/** A short label for a user from their id only (no personal data): "User 0002". */
export function shortLabel(userId) {
  return `User ${String(userId).replace(/-/g, "").slice(-4)}`;
}

/** Initials of a name ("Ada Lovelace" → "AL"), or of the short label ("User 0002" → "02"). */
export function initials(name) {
  const words = String(name).trim().split(/\s+/).filter(Boolean);
  if (words[0] === "User" && words[1]) return words[1].slice(-2).toUpperCase();
  return words
    .slice(0, 2)
    .map((word) => word[0])
    .join("")
    .toUpperCase();
}

/** Other users' presence by slot: slot (a task id or a slot key) → "Name is editing, Name is selecting". */
export function editorsBySlot(ctx) {
  const bySlot = new Map();
  const presences = ctx.channel?.presenceMap?.() ?? {};
  for (const [userId, presence] of Object.entries(presences)) {
    const { slot, action } = presence.state ?? {};
    if (!slot || userId === ctx.client.userId || (action !== "editing" && action !== "selecting")) continue;
    const label = `${ctx.nameOf(userId)} is ${action}`;
    bySlot.set(slot, bySlot.has(slot) ? `${bySlot.get(slot)}, ${label}` : label);
  }
  return bySlot;
}

/** Users on each slot: slot → [userId]. */
export function usersBySlot(ctx) {
  const bySlot = new Map();
  const presences = ctx.channel?.presenceMap?.() ?? {};
  for (const [userId, presence] of Object.entries(presences)) {
    const slot = presence.state?.slot;
    if (!slot || userId === ctx.client.userId) continue;
    if (!bySlot.has(slot)) bySlot.set(slot, []);
    bySlot.get(slot).push(userId);
  }
  return bySlot;
}

/** A local date as `YYYY-MM-DD`. */
export function localDay(date) {
  const pad = (n) => String(n).padStart(2, "0");
  return `${date.getFullYear()}-${pad(date.getMonth() + 1)}-${pad(date.getDate())}`;
}

/** A local date-time as a `datetime-local` input wants it. */
export function localInputValue(iso) {
  const date = new Date(iso);
  const pad = (n) => String(n).padStart(2, "0");
  return `${localDay(date)}T${pad(date.getHours())}:${pad(date.getMinutes())}`;
}
