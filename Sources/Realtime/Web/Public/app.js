// The demo page: log in (a demo user or a pasted token), open a plan, and edit its tasks live.
//
// Everything realtime comes from realtime.js; this file only draws. Rows are drawn once per animation frame, and only
// those in view (plus a few) exist in the DOM, so that a plan with thousands of tasks scrolls smoothly.
//
// Query parameters: `plan=<uuid>` preselects a plan; `staleAfterMs` (default 60000) is how long the connection may be
// down before the yellow banner shows; `updatedMarkMs` (default 5000) is how long another user's change stays marked;
// `measure` records each render as a `performance.measure("render")` entry (the browser test reads them).

import { createClient, createIndexedDBStorage } from "./realtime.js";

const params = new URLSearchParams(location.search);
const STALE_AFTER_MS = Number(params.get("staleAfterMs")) || 60_000;
const UPDATED_MARK_MS = Number(params.get("updatedMarkMs")) || 5_000;
const MEASURE = params.has("measure");
const ROW_HEIGHT = 44;
const OVERSCAN = 8;
const STATUSES = ["taken", "done", "posted", "edited"];
const SESSION_KEY = "realtime-demo-session";

const $ = (id) => document.getElementById(id);
const grid = $("grid");
const canvas = $("grid-canvas");

const page = {
  client: null,
  channel: null,
  planId: null,
  /** Task ids of the plan in display order, and each one's index and start (to notice reordering). */
  order: [],
  index: new Map(),
  starts: new Map(),
  orderDirty: true,
  /** Row elements in the DOM by task id, and spare ones to reuse. */
  rows: new Map(),
  pool: [],
  frame: 0,
  markTimer: 0,
  focusNext: null,
  leaveTimer: 0,
};

/** A short label for a user, from their id only (no personal data): "User 0002". */
function shortLabel(userId) {
  return `User ${String(userId).replace(/-/g, "").slice(-4)}`;
}

// ------------------------------------------------------------------------------------------------ login

/** The embedded demo's users and plan (`/client/demo.json`), or null when the server runs without it. */
async function fetchDemo() {
  try {
    const response = await fetch("/client/demo.json", { cache: "no-store" });
    return response.ok ? await response.json() : null;
  } catch {
    return null;
  }
}

async function start() {
  const saved = JSON.parse(sessionStorage.getItem(SESSION_KEY) ?? "null");
  if (saved?.token) {
    openPlan(saved);
    return;
  }
  const demo = await fetchDemo();
  $("login").hidden = false;
  $("plan-input").value = params.get("plan") ?? demo?.plan_id ?? "";
  if (demo?.users?.length) {
    $("demo-users").hidden = false;
    for (const user of demo.users) {
      const button = document.createElement("button");
      button.type = "button";
      button.textContent = `${user.name} (${user.role})`;
      button.dataset.testid = `demo-user-${user.role}`;
      button.addEventListener("click", () =>
        openPlan({ token: user.token, planId: $("plan-input").value.trim() || demo.plan_id, demoUserId: user.user_id }),
      );
      $("demo-list").append(button);
    }
  }
  $("login-form").addEventListener("submit", (event) => {
    event.preventDefault();
    openPlan({ token: $("token-input").value.trim(), planId: $("plan-input").value.trim() || null });
  });
}

/** After `token_expired`: a demo user gets a fresh token from demo.json; a pasted token cannot be renewed. */
async function renewDemoToken(userId) {
  const demo = await fetchDemo();
  return demo?.users?.find((user) => user.user_id === userId)?.token ?? null;
}

function logOut() {
  page.client?.close();
  sessionStorage.removeItem(SESSION_KEY);
  location.reload();
}

// ------------------------------------------------------------------------------------------------ the plan

async function openPlan(session) {
  sessionStorage.setItem(SESSION_KEY, JSON.stringify(session));
  $("login").hidden = true;
  $("plan").hidden = false;
  $("logout").hidden = false;
  $("status").hidden = false;
  $("logout").addEventListener("click", logOut);

  const client = createClient({
    url: location.origin,
    token: session.token,
    getToken: session.demoUserId ? () => renewDemoToken(session.demoUserId) : null,
    storage: createIndexedDBStorage(),
    staleAfterMs: STALE_AFTER_MS,
  });
  page.client = client;
  $("whoami").textContent = client.userId ? `You: ${shortLabel(client.userId)}` : "";

  client.onStatus(showStatus);
  client.onQueue((writes) => {
    $("pending-count").hidden = writes.length === 0;
    $("pending-count").textContent = `${writes.length} pending`;
  });
  client.onError(showError);
  client.onChange(({ table, id, record }) => {
    if (table === "plan" && id === page.planId) showPlanTitle();
    if (table !== "task") return;
    const data = record?.data;
    const inPlan = data && data.plan_id === page.planId;
    if (inPlan !== page.index.has(id) || (inPlan && page.starts.get(id) !== data.starts_at)) page.orderDirty = true;
    scheduleRender();
  });

  page.planId = session.planId || (await latestPlanId(client));
  if (!page.planId) {
    showPlanError("No plan to show: this user cannot see any plan.");
    return;
  }
  if (!(await loadPlan(client))) return;
  page.channel = client
    .channel(`plan:${page.planId}`)
    .on("presence", scheduleRender)
    .subscribe((status, error) => {
      if (status === "CHANNEL_ERROR") showPlanError(error?.message ?? "This plan is no longer available.");
    });
  grid.addEventListener("scroll", scheduleRender, { passive: true });
  window.addEventListener("resize", scheduleRender);
  $("add-task").addEventListener("click", addTask);
}

/** The user's most recent plan, when none was named. */
async function latestPlanId(client) {
  try {
    const response = await client.request("GET", "/rest/v1/plans?order=period_start.desc,id.asc&limit=1");
    const plans = response.ok ? await response.json() : [];
    return plans[0]?.id ?? null;
  } catch {
    return null;
  }
}

/** Loads the plan's snapshot; retries while the server cannot be reached. Returns false if the plan is not visible. */
async function loadPlan(client) {
  for (let attempt = 0; ; attempt++) {
    try {
      await client.loadPlan(page.planId);
      $("plan-error").hidden = true;
      showPlanTitle();
      page.orderDirty = true;
      scheduleRender();
      return true;
    } catch (error) {
      if (error.status === 404 || error.status === 403 || error.status === 400 || error.status === 401) {
        showPlanError(error.status === 401 ? "This token is not valid (or has expired)." : "No such plan, or you may not see it.");
        return false;
      }
      showPlanError("Cannot reach the server; trying again…");
      await new Promise((resolve) => setTimeout(resolve, Math.min(30_000, 1000 * 2 ** attempt)));
    }
  }
}

function showPlanTitle() {
  const plan = page.client.record("plan", page.planId)?.data;
  if (!plan) return;
  $("plan-title").textContent = plan.title;
  document.title = `${plan.title} · Realtime plan`;
}

function showPlanError(message) {
  $("plan-error").hidden = false;
  $("plan-error").textContent = message;
}

function showStatus(status) {
  const pill = $("status");
  pill.textContent = status;
  pill.dataset.status = status;
  $("stale-banner").hidden = status !== "stale";
}

/** Toasts for what the user must know: a refused write (undone), a conflict, lost access, an expired login. */
function showError(error) {
  switch (error.kind) {
    case "rejected": {
      const why =
        error.status === 403
          ? "you are not allowed to change this plan"
          : error.status === 404
            ? "the task no longer exists"
            : error.message;
      toast(`Your change was not saved (${why}); it has been undone.`);
      break;
    }
    case "conflict":
      toast("Someone changed this task after your edit; their newer version was kept.", "info");
      break;
    case "revoked":
      toast("You no longer have access to this plan.");
      break;
    case "auth":
      toast("Your login has expired: log out and in again.");
      break;
    default:
      console.warn("realtime:", error);
  }
}

function toast(text, kind = "error") {
  const element = document.createElement("div");
  element.className = `toast ${kind}`;
  element.dataset.testid = "toast";
  element.textContent = text;
  $("toasts").append(element);
  setTimeout(() => element.remove(), 8000);
}

// ------------------------------------------------------------------------------------------------ editing

function addTask() {
  const last = page.order.length ? page.client.record("task", page.order.at(-1))?.data : null;
  const plan = page.client.record("plan", page.planId)?.data;
  const startsAt = last ? new Date(last.ends_at) : new Date(`${plan?.period_start ?? new Date().toISOString().slice(0, 10)}T09:00:00`);
  const endsAt = new Date(startsAt.getTime() + 3_600_000);
  const id = page.client.newId();
  page.focusNext = id;
  page.client.from("task").insert({
    id,
    plan_id: page.planId,
    title: "New task",
    starts_at: startsAt.toISOString(),
    ends_at: endsAt.toISOString(),
  });
}

/** Presence: this user is editing a slot (heartbeats go on while the title has focus). */
function editStarted(taskId) {
  clearTimeout(page.leaveTimer);
  page.channel?.track({ slot: taskId, action: "editing" });
}

/** Leaves presence shortly after the last edit ends (moving to the next title keeps it). */
function editEnded() {
  clearTimeout(page.leaveTimer);
  page.leaveTimer = setTimeout(() => {
    if (!document.activeElement?.classList.contains("title")) page.channel?.untrack();
  }, 150);
}

function commitTitle(input) {
  const id = input.closest(".row").dataset.taskId;
  const title = input.value.trim();
  if (!title) {
    input.value = input.dataset.saved;
    return;
  }
  if (title !== input.dataset.saved) page.client.from("task").update(id, { title });
}

/** One row's elements; their handlers read the row's current task id, since rows are reused while scrolling. */
function createRow() {
  const row = document.createElement("div");
  row.className = "row";
  row.dataset.testid = "task-row";
  row.innerHTML = `
    <span class="when" data-testid="task-when"></span>
    <input class="title" data-testid="task-title" aria-label="Title" maxlength="500">
    <select class="status-select" data-testid="task-status" aria-label="Status">
      ${STATUSES.map((status) => `<option value="${status}">${status}</option>`).join("")}
    </select>
    <span class="marks">
      <span class="mark pending" data-testid="pending-mark" hidden>pending</span>
      <span class="mark updated" data-testid="updated-mark" hidden>updated</span>
      <span class="mark presence" data-testid="presence-label" hidden></span>
      <button class="delete" type="button" data-testid="task-delete" title="Delete task" aria-label="Delete task">×</button>
    </span>`;
  const input = row.querySelector(".title");
  input.addEventListener("focus", () => editStarted(row.dataset.taskId));
  input.addEventListener("blur", editEnded);
  input.addEventListener("change", () => commitTitle(input));
  input.addEventListener("keydown", (event) => {
    if (event.key === "Enter") input.blur();
    if (event.key === "Escape") {
      input.value = input.dataset.saved;
      input.blur();
    }
  });
  row.querySelector(".status-select").addEventListener("change", (event) => {
    page.client.from("task").update(row.dataset.taskId, { status: event.target.value });
  });
  row.querySelector(".delete").addEventListener("click", () => page.client.from("task").delete(row.dataset.taskId));
  return row;
}

// ------------------------------------------------------------------------------------------------ drawing

function scheduleRender() {
  if (!page.frame) page.frame = requestAnimationFrame(render);
}

/** Sorts the plan's tasks by start, then id (as the snapshot does). Only when rows came, went or moved. */
function rebuildOrder() {
  const records = page.client.records("task", (task) => task.plan_id === page.planId);
  records.sort((a, b) => (a.data.starts_at < b.data.starts_at ? -1 : a.data.starts_at > b.data.starts_at ? 1 : a.id < b.id ? -1 : 1));
  page.order = records.map((record) => record.id);
  page.index = new Map(page.order.map((id, i) => [id, i]));
  page.starts = new Map(records.map((record) => [record.id, record.data.starts_at]));
  page.orderDirty = false;
  canvas.style.height = `${page.order.length * ROW_HEIGHT}px`;
}

/** Draws the rows in view: reuses row elements, keeps the one being edited, updates only what changed. */
function render() {
  page.frame = 0;
  if (!page.client) return;
  const started = performance.now();
  if (page.orderDirty) rebuildOrder();
  if (page.focusNext && page.index.has(page.focusNext)) {
    grid.scrollTop = Math.max(0, page.index.get(page.focusNext) * ROW_HEIGHT - grid.clientHeight / 2);
  }
  const first = Math.max(0, Math.floor(grid.scrollTop / ROW_HEIGHT) - OVERSCAN);
  const last = Math.min(page.order.length, Math.ceil((grid.scrollTop + grid.clientHeight) / ROW_HEIGHT) + OVERSCAN);
  const wanted = new Set(page.order.slice(first, last));
  const focusedId = document.activeElement?.closest?.(".row")?.dataset.taskId;
  if (focusedId && page.index.has(focusedId)) wanted.add(focusedId);

  for (const [id, row] of page.rows) {
    if (wanted.has(id)) continue;
    row.remove();
    page.rows.delete(id);
    page.pool.push(row);
  }
  const editors = editorsBySlot();
  let nextExpiry = Infinity;
  for (const id of wanted) {
    let row = page.rows.get(id);
    if (!row) {
      row = page.pool.pop() ?? createRow();
      row.dataset.taskId = id;
      page.rows.set(id, row);
      canvas.append(row);
    }
    nextExpiry = Math.min(nextExpiry, drawRow(row, id, editors.get(id)));
  }
  $("plan-meta").textContent = `${page.order.length} task${page.order.length === 1 ? "" : "s"}`;

  if (page.focusNext && page.rows.has(page.focusNext)) {
    const input = page.rows.get(page.focusNext).querySelector(".title");
    page.focusNext = null;
    input.focus();
    input.select();
  }
  // Redraw when the next "updated" mark is due to fade.
  clearTimeout(page.markTimer);
  if (nextExpiry !== Infinity) page.markTimer = setTimeout(scheduleRender, Math.max(50, nextExpiry - Date.now()));
  if (MEASURE) performance.measure("render", { start: started });
}

/** Other users' presence by slot: task id → "User 0001 is editing". */
function editorsBySlot() {
  const bySlot = new Map();
  const presences = page.channel?.presenceState() ?? {};
  for (const [userId, presence] of Object.entries(presences)) {
    const { slot, action } = presence.state ?? {};
    if (!slot || userId === page.client.userId || (action !== "editing" && action !== "selecting")) continue;
    const label = `${shortLabel(userId)} is ${action}`;
    bySlot.set(slot, bySlot.has(slot) ? `${bySlot.get(slot)}, ${label}` : label);
  }
  return bySlot;
}

/** Sets a property only when it differs, so that redrawing an unchanged row touches nothing. */
function set(element, property, value) {
  if (element[property] !== value) element[property] = value;
}

function setData(element, key, value) {
  if (element.dataset[key] !== value) element.dataset[key] = value;
}

const dayFormat = new Intl.DateTimeFormat(undefined, { weekday: "short", day: "numeric", month: "short" });
const timeFormat = new Intl.DateTimeFormat(undefined, { hour: "2-digit", minute: "2-digit", hour12: false });

function when(task) {
  const starts = new Date(task.starts_at);
  return `${dayFormat.format(starts)} ${timeFormat.format(starts)}–${timeFormat.format(new Date(task.ends_at))}`;
}

/** Draws one row; returns when its "updated" mark should fade (ms since the epoch), or Infinity. */
function drawRow(row, id, editorsLabel) {
  const record = page.client.record("task", id);
  if (!record) return Infinity;
  const task = record.data;
  setData(row, "taskId", id);
  setData(row, "status", task.status);
  setData(row, "pending", String(record.pending));
  set(row.style, "transform", `translateY(${page.index.get(id) * ROW_HEIGHT}px)`);
  set(row, "className", `row status-${task.status}${record.pending ? " is-pending" : ""}`);
  set(row.querySelector(".when"), "textContent", when(task));

  const input = row.querySelector(".title");
  if (document.activeElement !== input) set(input, "value", task.title);
  setData(input, "saved", task.title);
  const select = row.querySelector(".status-select");
  if (document.activeElement !== select) set(select, "value", task.status);

  set(row.querySelector(".pending"), "hidden", !record.pending);
  const fadesAt = record.changedAt === null ? -Infinity : record.changedAt + UPDATED_MARK_MS;
  const recent = fadesAt > Date.now();
  const updated = row.querySelector(".updated");
  set(updated, "hidden", !(record.updatedElsewhere || recent));
  set(updated, "textContent", record.updatedElsewhere ? "updated elsewhere" : "updated");
  set(updated, "className", `mark updated${record.updatedElsewhere ? " elsewhere" : ""}`);
  setData(row, "updated", String(record.updatedElsewhere || recent));
  const presence = row.querySelector(".presence");
  set(presence, "hidden", !editorsLabel);
  set(presence, "textContent", editorsLabel ?? "");
  return recent ? fadesAt : Infinity;
}

start();
