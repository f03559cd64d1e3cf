// panel.js — the side panel of one task: its title and times, status buttons, status history, client card
// (link, create, edit) and attachments (add, remove), and deleting it (asks first, then offers undo). Everything
// is read through the permission-checked REST API and written through the client's queue, so it is optimistic,
// survives going offline, and reaches other users live; the panel redraws when a change of its task arrives.

import { STATUSES, localInputValue, timeFormat, dayFormat } from "./view.js";

const $ = (id) => document.getElementById(id);

export function createPanel(ctx) {
  const panel = $("panel");
  const state = { taskId: null, history: [], attachments: [], cards: [], loadToken: 0 };

  const statusBox = panel.querySelector(".status-buttons");
  for (const status of STATUSES) {
    const button = document.createElement("button");
    button.type = "button";
    button.className = `status-button status-${status}`;
    button.dataset.status = status;
    button.dataset.testid = `panel-status-${status}`;
    button.textContent = status;
    button.addEventListener("click", () => {
      if (state.taskId) ctx.client.from("task").update(state.taskId, { status });
    });
    statusBox.append(button);
  }

  $("panel-close").addEventListener("click", close);
  panel.addEventListener("keydown", (event) => {
    if (event.key === "Escape") close();
  });

  $("task-form").addEventListener("submit", (event) => {
    event.preventDefault();
    const task = current();
    if (!task) return;
    const starts = new Date($("task-starts").value);
    const ends = new Date($("task-ends").value);
    if (!(ends > starts)) {
      ctx.toast("A task must end after it starts.");
      return;
    }
    const patch = {};
    const title = $("task-title-input").value.trim();
    if (title && title !== task.title) patch.title = title;
    if (starts.toISOString() !== new Date(task.starts_at).toISOString()) patch.starts_at = starts.toISOString();
    if (ends.toISOString() !== new Date(task.ends_at).toISOString()) patch.ends_at = ends.toISOString();
    if (Object.keys(patch).length > 0) ctx.client.from("task").update(task.id, patch);
  });
  $("task-title-input").addEventListener("focus", () => state.taskId && ctx.presenceOn(state.taskId, "editing"));
  $("task-title-input").addEventListener("blur", () => ctx.presenceOff());

  // ------------------------------------------------------------------ client card

  $("card-select").addEventListener("change", async (event) => {
    const task = current();
    if (!task) return;
    const value = event.target.value;
    if (value === "__new") {
      const id = ctx.client.newId();
      const name = "New client";
      const { data, error } = await ctx.client.from("client_card").insert({ id, branch_id: ctx.branchId(), name });
      if (data) ctx.side?.remember("client_card", [data]);
      if (!error) {
        state.cards.push({ id, name });
        ctx.client.from("task").update(task.id, { client_card_id: id });
      }
      return;
    }
    ctx.client.from("task").update(task.id, { client_card_id: value || null });
  });
  $("card-form").addEventListener("submit", (event) => {
    event.preventDefault();
    const cardId = current()?.client_card_id;
    if (!cardId) return;
    ctx.client.from("client_card").update(cardId, {
      name: $("card-name").value.trim(),
      phone: $("card-phone").value.trim() || null,
      notes: $("card-notes").value,
    });
  });

  // ------------------------------------------------------------------ attachments

  $("attachment-form").addEventListener("submit", async (event) => {
    event.preventDefault();
    const task = current();
    if (!task) return;
    const values = {
      id: ctx.client.newId(),
      branch_id: task.branch_id,
      task_id: task.id,
      file_name: $("att-name").value.trim(),
      content_type: $("att-type").value.trim(),
      byte_size: Number($("att-size").value),
      storage_url: $("att-url").value.trim(),
    };
    $("att-name").value = "";
    $("att-url").value = "";
    const write = ctx.client.from("attachment").insert(values);
    drawAttachments();
    const { data } = await write;
    if (data) ctx.side?.remember("attachment", [data]);
    drawAttachments();
  });

  // ------------------------------------------------------------------ delete

  $("task-delete").addEventListener("click", () => {
    $("delete-confirm").hidden = false;
    $("delete-no").focus();
  });
  $("delete-no").addEventListener("click", () => {
    $("delete-confirm").hidden = true;
    $("task-delete").focus();
  });
  $("delete-yes").addEventListener("click", () => {
    const id = state.taskId;
    $("delete-confirm").hidden = true;
    close();
    ctx.deleteTask(id, { confirmed: true });
  });

  // ------------------------------------------------------------------ reading

  function current() {
    return state.taskId ? (ctx.client.record("task", state.taskId)?.data ?? null) : null;
  }

  async function readRows(path) {
    try {
      const response = await ctx.client.request("GET", path);
      return response.ok ? await response.json() : [];
    } catch {
      return [];
    }
  }

  async function load() {
    const token = ++state.loadToken;
    const id = state.taskId;
    const [history, attachments, cards] = await Promise.all([
      readRows(`/rest/v1/status_history?task_id=eq.${id}&order=changed_at.asc&limit=200`),
      readRows(`/rest/v1/attachments?task_id=eq.${id}&order=created_at.asc&limit=200`),
      readRows(`/rest/v1/client_cards?branch_id=eq.${ctx.branchId()}&order=name.asc&limit=500`),
    ]);
    if (token !== state.loadToken) return;
    state.history = history;
    ctx.side?.remember("attachment", attachments);
    ctx.client.remember("client_card", cards);
    ctx.side?.remember("client_card", cards);
    state.cards = cards.map((card) => ({ id: card.id, name: card.name }));
    draw();
  }

  // ------------------------------------------------------------------ drawing

  function drawHistory() {
    const list = $("history");
    list.replaceChildren();
    if (state.history.length === 0) {
      const empty = document.createElement("li");
      empty.className = "muted";
      empty.textContent = "No status changes yet.";
      list.append(empty);
    }
    for (const entry of state.history) {
      const item = document.createElement("li");
      item.dataset.testid = "history-entry";
      const at = new Date(entry.changed_at);
      item.textContent = `${dayFormat.format(at)} ${timeFormat.format(at)}: ${entry.from_status ?? "new"} → ${entry.to_status} (${ctx.nameOf(entry.changed_by)})`;
      list.append(item);
    }
  }

  /** A client card: this user's pending edit if any, else the side stream's live copy, else what was read. */
  function cardRecord(id) {
    const mine = ctx.client.record("client_card", id);
    if (mine?.pending) return mine.data;
    return ctx.side?.record("client_card", id)?.data ?? mine?.data ?? null;
  }

  function drawCard(task) {
    const select = $("card-select");
    const options = [["", "No client card"], ...state.cards.map((card) => [card.id, cardRecord(card.id)?.name ?? card.name])];
    if (!ctx.readOnly) options.push(["__new", "New client card…"]);
    if (task.client_card_id && !state.cards.some((card) => card.id === task.client_card_id)) {
      options.splice(1, 0, [task.client_card_id, cardRecord(task.client_card_id)?.name ?? "Linked card"]);
    }
    select.replaceChildren(...options.map(([value, label]) => new Option(label, value)));
    select.value = task.client_card_id ?? "";
    select.disabled = ctx.readOnly;
    const card = task.client_card_id ? cardRecord(task.client_card_id) : null;
    $("card-form").hidden = !card;
    if (card && !$("card-form").contains(document.activeElement)) {
      $("card-name").value = card.name ?? "";
      $("card-phone").value = card.phone ?? "";
      $("card-notes").value = card.notes ?? "";
    }
    for (const element of $("card-form").elements) element.disabled = ctx.readOnly;
  }

  /**
   * The open task's attachments: the server's, as the side stream keeps them, with this user's writes not yet
   * answered on top (an insert shows at once, a delete hides at once).
   */
  function attachmentRows() {
    const mine = (row) => row.task_id === state.taskId;
    const byId = new Map();
    for (const record of ctx.side?.records("attachment", mine) ?? []) byId.set(record.id, record);
    for (const write of ctx.client.pendingWrites()) {
      if (write.table !== "attachment") continue;
      const record = ctx.client.record("attachment", write.id);
      if (record && mine(record.data)) byId.set(write.id, record);
      else byId.delete(write.id);
    }
    return [...byId.values()];
  }

  function drawAttachments() {
    const list = $("attachments");
    list.replaceChildren();
    const rows = attachmentRows();
    if (rows.length === 0) {
      const empty = document.createElement("li");
      empty.className = "muted";
      empty.textContent = "No attachments.";
      list.append(empty);
    }
    for (const { id, data, pending } of rows) {
      const item = document.createElement("li");
      item.dataset.testid = "attachment";
      item.dataset.attachmentId = id;
      const link = document.createElement("a");
      link.href = data.storage_url;
      link.textContent = data.file_name;
      link.rel = "noopener noreferrer";
      link.target = "_blank";
      const meta = document.createElement("span");
      meta.className = "muted";
      meta.textContent = ` ${data.content_type}, ${formatSize(data.byte_size)}${pending ? " (saving…)" : ""}`;
      item.append(link, meta);
      if (!ctx.readOnly) {
        const remove = document.createElement("button");
        remove.type = "button";
        remove.className = "link-button";
        remove.dataset.testid = "attachment-remove";
        remove.textContent = "Remove";
        remove.setAttribute("aria-label", `Remove ${data.file_name}`);
        remove.addEventListener("click", () => {
          // The main client deletes (queued, optimistic); it needs the row to show the delete as pending.
          ctx.client.remember("attachment", [data]);
          ctx.client.from("attachment").delete(id);
          drawAttachments();
        });
        item.append(" ", remove);
      }
      list.append(item);
    }
    $("attachment-form").hidden = ctx.readOnly;
  }

  function draw() {
    const task = current();
    if (!task) {
      if (state.taskId) close();
      return;
    }
    $("panel-title").textContent = task.title;
    const title = $("task-title-input");
    if (document.activeElement !== title) title.value = task.title;
    if (document.activeElement !== $("task-starts")) $("task-starts").value = localInputValue(task.starts_at);
    if (document.activeElement !== $("task-ends")) $("task-ends").value = localInputValue(task.ends_at);
    for (const element of $("task-form").elements) element.disabled = ctx.readOnly;
    for (const button of statusBox.querySelectorAll("button")) {
      button.setAttribute("aria-pressed", String(button.dataset.status === task.status));
      button.setAttribute("aria-label", `Mark ${task.title} as ${button.dataset.status}`);
      button.disabled = ctx.readOnly;
    }
    title.setAttribute("aria-label", `Title of ${task.title}`);
    $("task-starts").setAttribute("aria-label", `Start of ${task.title}`);
    $("task-ends").setAttribute("aria-label", `End of ${task.title}`);
    $("task-delete").hidden = ctx.readOnly;
    drawHistory();
    drawCard(task);
    drawAttachments();
  }

  function open(taskId) {
    const changed = state.taskId !== taskId;
    state.taskId = taskId;
    panel.hidden = false;
    document.body.classList.add("panel-open");
    $("delete-confirm").hidden = true;
    if (changed) {
      state.history = [];
      draw();
      load();
    } else {
      draw();
    }
    $("panel-close").focus();
  }

  function close() {
    state.taskId = null;
    state.loadToken++;
    panel.hidden = true;
    document.body.classList.remove("panel-open");
  }

  return {
    open,
    close,
    get taskId() {
      return state.taskId;
    },
    /** A change reached the client: redraw when it concerns the open task. */
    changed(table, id, record) {
      if (!state.taskId) return;
      if (table === "task" && id === state.taskId) draw();
      else if (table === "attachment" && (record?.data.task_id === state.taskId || !record)) drawAttachments();
      else if (table === "client_card" && current()) drawCard(current());
    },
    /** A status change of the open task arrived on the stream. */
    historyEvent(row) {
      if (row?.task_id !== state.taskId || state.history.some((entry) => entry.id === row.id)) return;
      state.history.push(row);
      drawHistory();
    },
  };
}

function formatSize(bytes) {
  if (bytes < 1024) return `${bytes} B`;
  if (bytes < 1024 * 1024) return `${(bytes / 1024).toFixed(1)} KB`;
  return `${(bytes / 1024 / 1024).toFixed(1)} MB`;
}
