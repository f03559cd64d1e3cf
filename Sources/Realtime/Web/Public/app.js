// The page: sign in (a demo user or a pasted token), pick a plan, and work on it live — in the plan grid (days ×
// time slots, grid.js) or the task list (list.js) — with a side panel per task (panel.js).
//
// Everything realtime comes from realtime.js; this file wires it to the views. Changes are drawn once per animation
// frame, however many arrive in between. One file over 400 lines because it holds the page's state (session, client,
// plan, channel, role) that each of its parts reads and sets; the views with state of their own have their files.
//
// Query parameters: `plan=<uuid>` preselects a plan; `view=grid|list`; `staleAfterMs` (default 60000) is how long
// the connection may be unhealthy before the yellow banner shows; `updatedMarkMs` (default 5000) is how long another
// user's change stays marked in the list; `measure` records each render as a `performance.measure("render")`.

import { createClient, createIndexedDBStorage, createMemoryStorage } from "./realtime.js";
import { createGridView } from "./grid.js";
import { createListView } from "./list.js";
import { createPanel } from "./panel.js";
import { initials, shortLabel } from "./view.js";

const params = new URLSearchParams(location.search);
const STALE_AFTER_MS = Number(params.get("staleAfterMs")) || 60_000;
const UPDATED_MARK_MS = Number(params.get("updatedMarkMs")) || 5_000;
const MEASURE = params.has("measure");
const SESSION_KEY = "realtime-demo-session";
const VIEW_KEY = "realtime-view";
const UNDO_MS = 8_000;

const $ = (id) => document.getElementById(id);

const page = {
  client: null,
  channel: null,
  planId: null,
  role: null,
  names: new Map(),
  view: params.get("view") ?? localStorage.getItem(VIEW_KEY) ?? "grid",
  frame: 0,
  leaveTimer: 0,
  loading: false,
};

/** What the views and the panel share. */
const ctx = {
  get client() {
    return page.client;
  },
  get channel() {
    return page.channel;
  },
  /** A second client that streams the branch's attachments and client cards only (server-side `table=`). */
  get side() {
    return page.side;
  },
  get readOnly() {
    return page.role === "viewer";
  },
  updatedMarkMs: UPDATED_MARK_MS,
  plan: () => page.client?.record("plan", page.planId)?.data ?? null,
  branchId: () => ctx.plan()?.branch_id ?? null,
  tasks: () => page.client.records("task", (task) => task.plan_id === page.planId),
  nameOf: (userId) => page.names.get(userId) ?? shortLabel(userId),
  scheduleRender,
  toast,
  presenceOn,
  presenceOff,
  openPanel: (id) => panel.open(id),
  createTaskAt,
  deleteTask,
};

const grid = createGridView(ctx);
const list = createListView(ctx);
const panel = createPanel(ctx);

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
  setView(page.view);
  $("view-grid").addEventListener("click", () => setView("grid"));
  $("view-list").addEventListener("click", () => setView("list"));
  const saved = JSON.parse(sessionStorage.getItem(SESSION_KEY) ?? "null");
  if (saved?.token) {
    openSession(saved);
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
        openSession({ token: user.token, planId: $("plan-input").value.trim() || demo.plan_id, demoUserId: user.user_id }),
      );
      $("demo-list").append(button);
    }
  }
  $("login-form").addEventListener("submit", (event) => {
    event.preventDefault();
    openSession({ token: $("token-input").value.trim(), planId: $("plan-input").value.trim() || null });
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

function setView(view) {
  page.view = view === "list" ? "list" : "grid";
  localStorage.setItem(VIEW_KEY, page.view);
  $("slots-view").hidden = page.view !== "grid";
  $("list-view").hidden = page.view !== "list";
  $("view-grid").setAttribute("aria-pressed", String(page.view === "grid"));
  $("view-list").setAttribute("aria-pressed", String(page.view === "list"));
  grid.invalidate();
  list.invalidate();
  scheduleRender();
}

// ------------------------------------------------------------------------------------------------ the session

async function openSession(session) {
  sessionStorage.setItem(SESSION_KEY, JSON.stringify(session));
  $("login").hidden = true;
  $("plan").hidden = false;
  $("logout").hidden = false;
  $("status").hidden = false;
  $("logout").addEventListener("click", logOut);
  setLoading(true);

  const storage = createIndexedDBStorage();
  const client = createClient({
    url: location.origin,
    token: session.token,
    getToken: session.demoUserId ? () => renewDemoToken(session.demoUserId) : null,
    storage,
    staleAfterMs: STALE_AFTER_MS,
  });
  page.client = client;
  // A handle for the browser's console (and the browser tests): the client of this page.
  window.realtimeClient = client;
  Promise.resolve(storage.available ?? storage.kind === "indexeddb").then((available) => {
    $("storage-banner").hidden = Boolean(available);
  });
  $("whoami").textContent = client.userId ? `You: ${ctx.nameOf(client.userId)}` : "";

  client.onStatus(showStatus);
  client.onQueue(showQueue);
  client.onError(showError);
  client.onChange(({ table, id, record }) => {
    if (table === "plan" && id === page.planId) {
      showPlanTitle();
      grid.invalidate();
    }
    if (table === "task") {
      const data = record?.data?.plan_id === page.planId ? record.data : null;
      list.noteChange(id, data);
      grid.noteChange(id, data);
    }
    panel.changed(table, id, record);
    scheduleRender();
  });
  $("retry-now").addEventListener("click", () => client.reconnectNow());
  $("pending-count").addEventListener("click", () => {
    $("failed-writes").hidden = !$("failed-writes").hidden || client.pendingWrites().every((w) => !w.failed);
  });
  $("add-task").addEventListener("click", addTaskAfterLast);
  $("plan-picker").addEventListener("change", (event) => switchPlan(event.target.value));
  window.addEventListener("resize", scheduleRender);

  const plans = await listPlans(client);
  const planId = session.planId || plans[0]?.id || null;
  if (!planId) {
    setLoading(false);
    showPlanError("No plan to show: this user cannot see any plan.");
    return;
  }
  showPlanPicker(plans, planId);
  await switchPlan(planId);
}

/** The user's plans, newest first (for the picker). */
async function listPlans(client) {
  try {
    const response = await client.request("GET", "/rest/v1/plans?order=period_start.desc,id.asc&limit=200");
    return response.ok ? await response.json() : [];
  } catch {
    return [];
  }
}

function showPlanPicker(plans, planId) {
  const picker = $("plan-picker");
  const options = plans.map((plan) => new Option(`${plan.title} (${plan.period_start} – ${plan.period_end})`, plan.id));
  if (!plans.some((plan) => plan.id === planId)) options.unshift(new Option("This plan", planId));
  picker.replaceChildren(...options);
  picker.value = planId;
  $("plan-picker-label").hidden = plans.length < 1;
}

/** Opens a plan: its snapshot, its channel (changes and presence), its role; closes the previous one. */
async function switchPlan(planId) {
  const client = page.client;
  if (page.channel) {
    await client.removeChannel(page.channel);
    client.unloadPlan(page.planId);
    page.channel = null;
  }
  page.side?.close();
  page.side = null;
  panel.close();
  page.planId = planId;
  const session = JSON.parse(sessionStorage.getItem(SESSION_KEY) ?? "{}");
  sessionStorage.setItem(SESSION_KEY, JSON.stringify({ ...session, planId }));
  setLoading(true);
  grid.invalidate();
  list.invalidate();
  if (!(await loadPlan(client))) return;
  await loadRole(client);
  page.channel = client
    .channel(`plan:${planId}`)
    .on("presence", () => {
      showOnline();
      scheduleRender();
    })
    .on("postgres_changes", { event: "*" }, (change) => {
      if (change.table === "status_history") panel.historyEvent(change.new);
      if (change.table === "task" && change.new?.client_card_id) ensureCard(change.new.client_card_id);
    })
    .subscribe((status, error) => {
      if (status === "CHANNEL_ERROR") showPlanError(error?.message ?? "This plan is no longer available.");
    });
  for (const task of ctx.tasks()) if (task.data.client_card_id) ensureCard(task.data.client_card_id);
  openSideStream(client);
}

/**
 * Attachments of tasks and client cards are not on the plan's channel (the server sends an attachment there only
 * when it belongs to the plan itself): a second, read-only client streams them from the branch's channel, narrowed
 * by the server to those two tables. Its changes redraw the panel.
 */
function openSideStream(client) {
  const branchId = ctx.branchId();
  if (!branchId) return;
  const side = createClient({ url: location.origin, token: client.token, storage: createMemoryStorage(), staleAfterMs: STALE_AFTER_MS });
  page.side = side;
  side.onChange(({ table, id, record }) => {
    panel.changed(table, id, record);
    if (table === "client_card") scheduleRender();
  });
  side
    .channel(`branch:${branchId}`)
    .on("postgres_changes", { table: "attachment" }, () => {})
    .on("postgres_changes", { table: "client_card" }, () => {})
    .subscribe();
}

/** Loads the plan's snapshot; retries while the server cannot be reached. Returns false if the plan is not visible. */
async function loadPlan(client) {
  for (let attempt = 0; ; attempt++) {
    try {
      await client.loadPlan(page.planId);
      $("plan-error").hidden = true;
      setLoading(false);
      showPlanTitle();
      grid.invalidate();
      list.invalidate();
      scheduleRender();
      return true;
    } catch (error) {
      if (error.status === 404 || error.status === 403 || error.status === 400 || error.status === 401) {
        setLoading(false);
        showPlanError(error.status === 401 ? "This token is not valid (or has expired)." : "No such plan, or you may not see it.");
        return false;
      }
      showPlanError("Cannot reach the server; trying again…");
      await new Promise((resolve) => setTimeout(resolve, Math.min(30_000, 1000 * 2 ** attempt)));
    }
  }
}

/** This user's role in the plan's branch: viewers get a read-only grid. */
async function loadRole(client) {
  const branchId = ctx.branchId();
  page.role = null;
  try {
    const response = await client.request("GET", `/rest/v1/branches/${branchId}/members`);
    const members = response.ok ? await response.json() : [];
    page.role = members.find((member) => member.user_id === client.userId)?.role ?? null;
    for (const member of members) if (member.display_name) page.names.set(member.user_id, member.display_name);
    $("whoami").textContent = client.userId ? `You: ${ctx.nameOf(client.userId)}` : "";
  } catch {
    page.role = null;
  }
  $("readonly-banner").hidden = !ctx.readOnly;
  $("add-task").hidden = ctx.readOnly;
  document.body.classList.toggle("read-only", ctx.readOnly);
  grid.invalidate();
  scheduleRender();
}

/** Fetches a client card the local rows do not hold yet (a task linked to it arrived). */
const cardsAsked = new Set();
async function ensureCard(cardId) {
  if (page.client.record("client_card", cardId) || cardsAsked.has(cardId)) return;
  cardsAsked.add(cardId);
  try {
    const response = await page.client.request("GET", `/rest/v1/client_cards/${cardId}`);
    if (response.ok) {
      const card = await response.json();
      page.client.remember("client_card", [card]);
      page.side?.remember("client_card", [card]);
    }
  } catch {
    cardsAsked.delete(cardId);
  }
}

function setLoading(loading) {
  page.loading = loading;
  $("plan-loading").hidden = !loading;
  scheduleRender();
}

function showPlanTitle() {
  const plan = ctx.plan();
  if (!plan) return;
  $("plan-title").textContent = plan.title;
  document.title = `${plan.title} · Realtime plan`;
}

function showPlanError(message) {
  $("plan-error").hidden = false;
  $("plan-error").textContent = message;
}

// ------------------------------------------------------------------------------------------------ state shown

const STATUS_TEXT = { connecting: "connecting", live: "live", offline: "reconnecting", stale: "reconnecting" };

function showStatus(status) {
  const pill = $("status");
  pill.textContent = STATUS_TEXT[status] ?? status;
  pill.dataset.status = status;
  pill.title = status === "stale" ? "Disconnected for over a minute; reconnecting" : "Connection to the server";
  $("stale-banner").hidden = status !== "stale";
  $("retry-now").hidden = status !== "offline" && status !== "stale";
}

function showQueue(writes) {
  const failed = writes.filter((write) => write.failed);
  $("pending-count").hidden = writes.length === 0;
  $("pending-count").textContent = failed.length > 0 ? `${writes.length} pending, ${failed.length} not saved` : `${writes.length} pending`;
  const items = failed.map((write) => {
    const item = document.createElement("li");
    item.dataset.testid = "failed-write";
    const title = page.client.record(write.table, write.id)?.data?.title ?? write.table;
    item.append(`${write.kind} of ${title}: ${write.error?.message ?? "not saved"} `);
    const retry = document.createElement("button");
    retry.type = "button";
    retry.textContent = "Retry";
    retry.dataset.testid = "failed-retry";
    retry.addEventListener("click", () => page.client.retryWrite(write.key));
    const discard = document.createElement("button");
    discard.type = "button";
    discard.textContent = "Discard";
    discard.dataset.testid = "failed-discard";
    discard.addEventListener("click", () => page.client.discardWrite(write.key));
    item.append(retry, " ", discard);
    return item;
  });
  $("failed-list").replaceChildren(...items);
  if (failed.length === 0) $("failed-writes").hidden = true;
}

/** Who is on the plan now, as initials with their names for assistive technology. */
function showOnline() {
  const presences = page.channel?.presenceMap() ?? {};
  const items = Object.keys(presences)
    .filter((userId) => userId !== page.client.userId)
    .map((userId) => {
      const item = document.createElement("li");
      item.className = "avatar";
      item.textContent = initials(ctx.nameOf(userId));
      item.title = ctx.nameOf(userId);
      item.setAttribute("aria-label", ctx.nameOf(userId));
      return item;
    });
  $("online").replaceChildren(...items);
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
    case "failed":
      toast("A change could not be saved after several tries.", "error", {
        label: "Show",
        run: () => {
          $("failed-writes").hidden = false;
        },
      });
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

/** A toast that goes away by itself, or when dismissed; `action` adds a button (e.g. Undo). */
function toast(text, kind = "error", action = null) {
  const element = document.createElement("div");
  element.className = `toast ${kind}`;
  element.setAttribute("role", kind === "error" ? "alert" : "status");
  const message = document.createElement("span");
  message.dataset.testid = "toast";
  message.textContent = text;
  element.append(message);
  if (action) {
    const button = document.createElement("button");
    button.type = "button";
    button.className = "toast-action";
    button.dataset.testid = "toast-action";
    button.textContent = action.label;
    button.addEventListener("click", () => {
      element.remove();
      action.run();
    });
    element.append(button);
  }
  const close = document.createElement("button");
  close.type = "button";
  close.className = "toast-close";
  close.dataset.testid = "toast-close";
  close.setAttribute("aria-label", "Dismiss");
  close.textContent = "×";
  close.addEventListener("click", () => element.remove());
  element.append(close);
  $("toasts").append(element);
  setTimeout(() => element.remove(), action ? UNDO_MS : 8000);
}

// ------------------------------------------------------------------------------------------------ editing

/** Presence: this user is on a slot (a task id or an empty slot's key); heartbeats go on while it lasts. */
function presenceOn(slot, action) {
  clearTimeout(page.leaveTimer);
  page.channel?.track({ slot, action });
}

/** Leaves presence shortly after focus leaves (moving to the next control keeps it). */
function presenceOff() {
  clearTimeout(page.leaveTimer);
  page.leaveTimer = setTimeout(() => {
    const active = document.activeElement;
    if (!active?.closest?.(".row, .task, .cell, #panel")) page.channel?.untrack();
  }, 150);
}

/** A new task in the slot that was clicked, an hour long; the panel opens on it. */
function createTaskAt(start) {
  if (ctx.readOnly) return;
  const id = page.client.newId();
  const ends = new Date(start.getTime() + 3_600_000);
  page.client.from("task").insert({ id, plan_id: page.planId, title: "New task", starts_at: start.toISOString(), ends_at: ends.toISOString() });
  panel.open(id);
  const title = $("task-title-input");
  title.focus();
  title.select();
}

/** "Add task": after the last task (the list view focuses its title). */
function addTaskAfterLast() {
  const tasks = ctx.tasks().sort((a, b) => (a.data.ends_at < b.data.ends_at ? -1 : 1));
  const last = tasks.at(-1)?.data;
  const plan = ctx.plan();
  const startsAt = last ? new Date(last.ends_at) : new Date(`${plan?.period_start ?? new Date().toISOString().slice(0, 10)}T09:00:00`);
  const endsAt = new Date(startsAt.getTime() + 3_600_000);
  const id = page.client.newId();
  page.client.from("task").insert({ id, plan_id: page.planId, title: "New task", starts_at: startsAt.toISOString(), ends_at: endsAt.toISOString() });
  if (page.view === "list") {
    list.focusTitle(id);
  } else {
    grid.reveal(id);
    panel.open(id);
    $("task-title-input").focus();
    $("task-title-input").select();
  }
}

/** Deletes a task and offers to undo it (a new insert of the same row) for a few seconds. */
function deleteTask(id) {
  const before = page.client.record("task", id)?.data;
  if (!before) return;
  page.client.from("task").delete(id);
  toast(`Deleted “${before.title}”.`, "info", {
    label: "Undo",
    run: () => {
      const { id: taskId, plan_id, title, starts_at, ends_at, status, client_card_id } = before;
      page.client.from("task").insert({ id: taskId, plan_id, title, starts_at, ends_at, status, client_card_id });
    },
  });
}

// ------------------------------------------------------------------------------------------------ drawing

function scheduleRender() {
  if (!page.frame) page.frame = requestAnimationFrame(render);
}

function render() {
  page.frame = 0;
  if (!page.client || !page.planId) return;
  const started = performance.now();
  let count;
  let meta;
  if (page.view === "list") {
    count = list.render();
    meta = `${count} task${count === 1 ? "" : "s"}`;
  } else {
    const { placed, outside } = grid.render();
    count = placed + outside;
    meta = `${count} task${count === 1 ? "" : "s"}${outside ? ` (${outside} outside the plan's days: see List)` : ""}`;
  }
  // Only what changed: a text set every frame would restyle the header every frame.
  if ($("plan-meta").textContent !== meta) $("plan-meta").textContent = meta;
  const empty = page.loading || count > 0 || !ctx.plan();
  if ($("plan-empty").hidden !== empty) $("plan-empty").hidden = empty;
  if (MEASURE) performance.measure("render", { start: started });
}

start();
