// list.js — the List view: the plan's tasks in start order, one row each, edited in place. Only the rows in view
// (plus a few) exist in the DOM, placed on a canvas as tall as all rows, and drawn once per animation frame.

import { STATUSES, editorsBySlot, set, setData, timeFormat, dayFormat } from "./view.js";

const ROW_HEIGHT = 44;
const OVERSCAN = 8;

export function createListView(ctx) {
  const grid = document.getElementById("grid");
  const canvas = document.getElementById("grid-canvas");
  const view = {
    order: [],
    index: new Map(),
    starts: new Map(),
    orderDirty: true,
    rows: new Map(),
    pool: [],
    markTimer: 0,
    focusNext: null,
  };

  grid.addEventListener("scroll", () => ctx.scheduleRender(), { passive: true });

  function commitTitle(input) {
    const id = input.closest(".row").dataset.taskId;
    const title = input.value.trim();
    if (!title) {
      input.value = input.dataset.saved;
      return;
    }
    if (title !== input.dataset.saved) ctx.client.from("task").update(id, { title });
  }

  /** One row's elements; their handlers read the row's current task id, since rows are reused while scrolling. */
  function createRow() {
    const row = document.createElement("div");
    row.className = "row";
    row.dataset.testid = "task-row";
    row.innerHTML = `
      <span class="when" data-testid="task-when"></span>
      <input class="title" data-testid="task-title" maxlength="500">
      <select class="status-select" data-testid="task-status">
        ${STATUSES.map((status) => `<option value="${status}">${status}</option>`).join("")}
      </select>
      <span class="marks">
        <span class="mark pending" data-testid="pending-mark" hidden>pending</span>
        <span class="mark updated" data-testid="updated-mark" hidden>updated</span>
        <span class="mark presence" data-testid="presence-label" hidden></span>
        <button class="open" type="button" data-testid="task-open">Details</button>
        <button class="delete" type="button" data-testid="task-delete">×</button>
      </span>`;
    const input = row.querySelector(".title");
    input.addEventListener("focus", () => ctx.presenceOn(row.dataset.taskId, "editing"));
    input.addEventListener("blur", () => ctx.presenceOff());
    input.addEventListener("change", () => commitTitle(input));
    input.addEventListener("keydown", (event) => {
      if (event.key === "Enter") input.blur();
      if (event.key === "Escape") {
        input.value = input.dataset.saved;
        input.blur();
      }
    });
    row.querySelector(".status-select").addEventListener("change", (event) => {
      ctx.client.from("task").update(row.dataset.taskId, { status: event.target.value });
    });
    row.querySelector(".open").addEventListener("click", () => ctx.openPanel(row.dataset.taskId));
    row.querySelector(".delete").addEventListener("click", () => ctx.deleteTask(row.dataset.taskId));
    return row;
  }

  /** Sorts the plan's tasks by start, then id (as the snapshot does). Only when rows came, went or moved. */
  function rebuildOrder() {
    const records = ctx.tasks();
    records.sort((a, b) => (a.data.starts_at < b.data.starts_at ? -1 : a.data.starts_at > b.data.starts_at ? 1 : a.id < b.id ? -1 : 1));
    view.order = records.map((record) => record.id);
    view.index = new Map(view.order.map((id, i) => [id, i]));
    view.starts = new Map(records.map((record) => [record.id, record.data.starts_at]));
    view.orderDirty = false;
    canvas.style.height = `${view.order.length * ROW_HEIGHT}px`;
  }

  function when(task) {
    const starts = new Date(task.starts_at);
    return `${dayFormat.format(starts)} ${timeFormat.format(starts)}–${timeFormat.format(new Date(task.ends_at))}`;
  }

  /** Draws one row; returns when its "updated" mark should fade (ms since the epoch), or Infinity. */
  function drawRow(row, id, editorsLabel) {
    const record = ctx.client.record("task", id);
    if (!record) return Infinity;
    const task = record.data;
    setData(row, "taskId", id);
    setData(row, "status", task.status);
    setData(row, "pending", String(record.pending));
    set(row.style, "transform", `translateY(${view.index.get(id) * ROW_HEIGHT}px)`);
    set(row, "className", `row status-${task.status}${record.pending ? " is-pending" : ""}${record.failed ? " is-failed" : ""}`);
    set(row.querySelector(".when"), "textContent", when(task));

    const input = row.querySelector(".title");
    if (document.activeElement !== input) set(input, "value", task.title);
    setData(input, "saved", task.title);
    input.setAttribute("aria-label", `Title of the task at ${when(task)}`);
    const select = row.querySelector(".status-select");
    if (document.activeElement !== select) set(select, "value", task.status);
    select.setAttribute("aria-label", `Status of ${task.title}`);
    row.querySelector(".open").setAttribute("aria-label", `Details of ${task.title}`);
    row.querySelector(".delete").setAttribute("aria-label", `Delete ${task.title}`);

    set(row.querySelector(".pending"), "hidden", !record.pending);
    set(row.querySelector(".pending"), "textContent", record.failed ? "not saved" : "pending");
    const fadesAt = record.changedAt === null ? -Infinity : record.changedAt + ctx.updatedMarkMs;
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

  return {
    invalidate() {
      view.orderDirty = true;
    },
    /** Whether a change of this task needs a new order (it came, went, or moved). */
    noteChange(id, data) {
      const inPlan = Boolean(data);
      if (inPlan !== view.index.has(id) || (inPlan && view.starts.get(id) !== data.starts_at)) view.orderDirty = true;
    },
    focusTitle(id) {
      view.focusNext = id;
    },
    render() {
      if (view.orderDirty) rebuildOrder();
      if (view.focusNext && view.index.has(view.focusNext)) {
        grid.scrollTop = Math.max(0, view.index.get(view.focusNext) * ROW_HEIGHT - grid.clientHeight / 2);
      }
      const first = Math.max(0, Math.floor(grid.scrollTop / ROW_HEIGHT) - OVERSCAN);
      const last = Math.min(view.order.length, Math.ceil((grid.scrollTop + grid.clientHeight) / ROW_HEIGHT) + OVERSCAN);
      const wanted = new Set(view.order.slice(first, last));
      const focusedId = document.activeElement?.closest?.(".row")?.dataset.taskId;
      if (focusedId && view.index.has(focusedId)) wanted.add(focusedId);

      for (const [id, row] of view.rows) {
        if (wanted.has(id)) continue;
        row.remove();
        view.rows.delete(id);
        view.pool.push(row);
      }
      const editors = editorsBySlot(ctx);
      let nextExpiry = Infinity;
      for (const id of wanted) {
        let row = view.rows.get(id);
        if (!row) {
          row = view.pool.pop() ?? createRow();
          row.dataset.taskId = id;
          view.rows.set(id, row);
          canvas.append(row);
        }
        nextExpiry = Math.min(nextExpiry, drawRow(row, id, editors.get(id)));
      }
      if (view.focusNext && view.rows.has(view.focusNext)) {
        const input = view.rows.get(view.focusNext).querySelector(".title");
        view.focusNext = null;
        input.focus();
        input.select();
      }
      // Redraw when the next "updated" mark is due to fade.
      clearTimeout(view.markTimer);
      if (nextExpiry !== Infinity) view.markTimer = setTimeout(() => ctx.scheduleRender(), Math.max(50, nextExpiry - Date.now()));
      return view.order.length;
    },
    clear() {
      for (const row of view.rows.values()) row.remove();
      view.rows.clear();
    },
  };
}
