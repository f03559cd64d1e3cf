// grid.js — the plan grid: the days of the plan's period as columns, 30-minute time slots as rows, each task in
// the slot it starts in and as tall as it lasts, in its status colour. An empty slot is a button that makes a task
// there; a task has quick status buttons and opens the side panel. Only the slots and tasks in view exist in the DOM
// (thousands of tasks scroll smoothly), and the view is drawn at most once per animation frame. On a narrow screen
// it shows one day at a time. It is an ARIA grid: rows and cells carry their indexes, and every control says which
// task or slot it is about.
// One file over 400 lines because it is one closure over one `view`: placing tasks in slots and lanes, the pooled
// elements and the windowed drawing all read and write it on every frame.

import { STATUSES, dayFormat, longDayFormat, initials, localDay, set, setAttr, setData, timeFormat, usersBySlot } from "./view.js";

const SLOT_MINUTES = 30;
const SLOTS_PER_DAY = (24 * 60) / SLOT_MINUTES;
const SLOT_HEIGHT = 44;
const HEAD_HEIGHT = 40;
const TIME_WIDTH = 64;
const DAY_WIDTH = 184;
const PHONE_WIDTH = 700;
const DAY_MS = 86_400_000;
/** Tasks starting this many slots (2 h) above the view are still drawn (their blocks reach down into it). */
const OVERSCAN_SLOTS = 4;
const FIRST_HOUR_IN_VIEW = 7;

export function createGridView(ctx) {
  const scroller = document.getElementById("slots");
  const canvas = document.getElementById("slots-canvas");
  const view = {
    days: [],
    dayIndex: new Map(),
    /** "dayIndex:slot" → task ids starting there, and id → that key. */
    buckets: new Map(),
    placed: new Map(),
    /** id → { lane, lanes }: tasks that overlap in time stand side by side (laneTasks). */
    lanes: new Map(),
    outside: 0,
    dirty: true,
    headRow: null,
    rows: new Map(),
    pool: [],
    /** Spare cells and task blocks, reused rather than made anew while scrolling. */
    cellPool: [],
    taskPool: [],
    phone: false,
    dayInView: 0,
    scrolledToMorning: false,
  };

  scroller.addEventListener("scroll", () => ctx.scheduleRender(), { passive: true });
  document.getElementById("day-prev").addEventListener("click", () => showDay(view.dayInView - 1));
  document.getElementById("day-next").addEventListener("click", () => showDay(view.dayInView + 1));

  function showDay(index) {
    view.dayInView = Math.max(0, Math.min(view.days.length - 1, index));
    ctx.scheduleRender();
  }

  /** The plan's days, local midnight each, from period_start to period_end. */
  function planDays() {
    const plan = ctx.plan();
    if (!plan) return [];
    const [y1, m1, d1] = plan.period_start.split("-").map(Number);
    const [y2, m2, d2] = plan.period_end.split("-").map(Number);
    const days = [];
    for (let day = new Date(y1, m1 - 1, d1); day <= new Date(y2, m2 - 1, d2) && days.length < 400; day.setDate(day.getDate() + 1)) {
      days.push(new Date(day));
    }
    return days;
  }

  /** Where a task starts: its day's index in the plan and its slot, or null outside the period. */
  function placeOf(task) {
    const start = new Date(task.starts_at);
    const key = localDay(start);
    const dayIndex = view.dayIndex.get(key);
    if (dayIndex === undefined) return null;
    return { dayIndex, slot: Math.floor((start.getHours() * 60 + start.getMinutes()) / SLOT_MINUTES) };
  }

  function rebuild() {
    view.days = planDays();
    view.dayKeys = view.days.map((day) => localDay(day));
    view.dayLabels = view.days.map((day) => dayFormat.format(day));
    view.dayIndex = new Map(view.dayKeys.map((key, i) => [key, i]));
    view.buckets = new Map();
    view.placed = new Map();
    view.outside = 0;
    for (const record of ctx.tasks()) {
      const place = placeOf(record.data);
      if (!place) {
        view.outside++;
        continue;
      }
      const key = `${place.dayIndex}:${place.slot}`;
      if (!view.buckets.has(key)) view.buckets.set(key, []);
      view.buckets.get(key).push(record.id);
      view.placed.set(record.id, key);
    }
    for (const ids of view.buckets.values()) ids.sort();
    view.lanes = laneTasks();
    view.dirty = false;
    if (view.dayInView >= view.days.length) view.dayInView = Math.max(0, view.days.length - 1);
  }

  /**
   * Side-by-side lanes for tasks that overlap in time on a day: each task takes the first lane free at its start, and
   * every task of a group that overlaps (directly or through others) shares the group's lane count, so none hides
   * another. Returns id → { lane, lanes }.
   */
  function laneTasks() {
    const lanes = new Map();
    const byDay = new Map();
    for (const [id, key] of view.placed) {
      const record = ctx.client.record("task", id);
      if (!record) continue;
      const { start, end } = timesOf(record);
      const day = key.slice(0, key.indexOf(":"));
      if (!byDay.has(day)) byDay.set(day, []);
      byDay.get(day).push({ id, start: start.getTime(), end: Math.max(end.getTime(), start.getTime() + 1) });
    }
    for (const tasks of byDay.values()) {
      tasks.sort((a, b) => a.start - b.start || (a.id < b.id ? -1 : a.id > b.id ? 1 : 0));
      let group = [];
      let groupEnd = -Infinity;
      let laneEnds = [];
      const close = () => {
        for (const task of group) lanes.set(task.id, { lane: task.lane, lanes: laneEnds.length });
        group = [];
        laneEnds = [];
      };
      for (const task of tasks) {
        if (task.start >= groupEnd) {
          close();
          groupEnd = -Infinity;
        }
        let lane = laneEnds.findIndex((end) => end <= task.start);
        if (lane === -1) lane = laneEnds.push(task.end) - 1;
        else laneEnds[lane] = task.end;
        task.lane = lane;
        group.push(task);
        groupEnd = Math.max(groupEnd, task.end);
      }
      close();
    }
    return lanes;
  }

  function slotStart(dayIndex, slot) {
    const day = view.days[dayIndex];
    return new Date(day.getFullYear(), day.getMonth(), day.getDate(), 0, slot * SLOT_MINUTES);
  }

  const SLOT_LABELS = Array.from({ length: SLOTS_PER_DAY }, (_, slot) => timeFormat.format(new Date(2000, 0, 1, 0, slot * SLOT_MINUTES)));

  /** A slot's name for presence: `YYYY-MM-DDTHH:MM` in local time. */
  function slotKey(dayIndex, slot) {
    return `${view.dayKeys[dayIndex]}T${SLOT_LABELS[slot]}`;
  }

  function slotLabel(slot) {
    return SLOT_LABELS[slot];
  }

  // ------------------------------------------------------------------ elements

  function headRow() {
    if (view.headRow) return view.headRow;
    const row = document.createElement("div");
    row.className = "slot-head";
    row.setAttribute("role", "row");
    row.setAttribute("aria-rowindex", "1");
    const corner = document.createElement("div");
    corner.className = "corner";
    corner.setAttribute("role", "columnheader");
    corner.setAttribute("aria-colindex", "1");
    corner.textContent = "Time";
    row.append(corner);
    row.days = new Map();
    canvas.prepend(row);
    view.headRow = row;
    return row;
  }

  function createSlotRow() {
    const row = document.createElement("div");
    row.className = "slot-row";
    row.setAttribute("role", "row");
    const time = document.createElement("div");
    time.className = "time";
    time.setAttribute("role", "rowheader");
    time.setAttribute("aria-colindex", "1");
    row.append(time);
    row.cells = new Map();
    return row;
  }

  function createCell() {
    const cell = document.createElement("div");
    cell.className = "cell";
    cell.setAttribute("role", "gridcell");
    const add = document.createElement("button");
    add.type = "button";
    add.className = "slot-add";
    add.dataset.testid = "slot-add";
    const slotOf = () => Number(cell.parentElement.dataset.slot);
    add.addEventListener("click", () => ctx.createTaskAt(slotStart(Number(cell.dataset.day), slotOf())));
    add.addEventListener("focus", () => ctx.presenceOn(slotKey(Number(cell.dataset.day), slotOf()), "selecting"));
    add.addEventListener("blur", () => ctx.presenceOff());
    const people = document.createElement("span");
    people.className = "people";
    cell.append(add, people);
    cell.tasks = new Map();
    return cell;
  }

  function releaseTask(block) {
    block.remove();
    block.drawnRecord = null;
    view.taskPool.push(block);
  }

  function createTask() {
    const block = document.createElement("div");
    block.className = "task";
    block.dataset.testid = "grid-task";
    block.innerHTML = `
      <button type="button" class="task-open" data-testid="grid-task-open"><span class="task-title"></span><span class="task-time"></span></button>
      <span class="task-marks"><span class="people"></span><span class="mark-pending" hidden></span></span>
      <span class="quick" role="group">
        ${STATUSES.map((status) => `<button type="button" class="quick-${status}" data-status="${status}" data-testid="quick-${status}">${status[0].toUpperCase()}</button>`).join("")}
      </span>`;
    block.refs = {
      open: block.querySelector(".task-open"),
      title: block.querySelector(".task-title"),
      time: block.querySelector(".task-time"),
      pending: block.querySelector(".mark-pending"),
      people: block.querySelector(".task-marks .people"),
      quick: block.querySelector(".quick"),
      buttons: [...block.querySelectorAll(".quick button")],
    };
    block.querySelector(".task-open").addEventListener("click", () => ctx.openPanel(block.dataset.taskId));
    block.querySelector(".task-open").addEventListener("focus", () => ctx.presenceOn(block.dataset.taskId, "selecting"));
    block.querySelector(".task-open").addEventListener("blur", () => ctx.presenceOff());
    for (const button of block.querySelectorAll(".quick button")) {
      button.addEventListener("click", () => ctx.client.from("task").update(block.dataset.taskId, { status: button.dataset.status }));
    }
    return block;
  }

  function drawPeople(element, userIds) {
    const text = (userIds ?? []).map((id) => initials(ctx.nameOf(id))).join(" ");
    set(element, "textContent", text);
    set(element, "hidden", text === "");
    setAttr(element, "title", (userIds ?? []).map((id) => ctx.nameOf(id)).join(", "));
    if (text) setAttr(element, "aria-label", `Here: ${(userIds ?? []).map((id) => ctx.nameOf(id)).join(", ")}`);
  }

  /** A task's times, formatted once per version of the row (Intl formatting is slow for thousands of blocks). */
  const formatted = new WeakMap();
  function timesOf(record) {
    let times = formatted.get(record);
    if (!times) {
      const start = new Date(record.data.starts_at);
      const end = new Date(record.data.ends_at);
      times = { start, end, when: `${timeFormat.format(start)}–${timeFormat.format(end)}`, day: dayFormat.format(start) };
      formatted.set(record, times);
    }
    return times;
  }

  /** Draws one task block; skips it when nothing it shows has changed since the last frame. */
  function drawTask(block, id, index, count, people) {
    const record = ctx.client.record("task", id);
    if (!record) return;
    const signature = `${index}/${count}/${people ?? ""}/${ctx.readOnly}`;
    if (block.drawnRecord === record && block.drawnSignature === signature) return;
    block.drawnRecord = record;
    block.drawnSignature = signature;
    const task = record.data;
    const { start, end, when, day } = timesOf(record);
    const span = Math.max(1, (end - start) / (SLOT_MINUTES * 60_000));
    const width = (DAY_WIDTH - 6) / count;
    setData(block, "taskId", id);
    setData(block, "status", task.status);
    setData(block, "pending", String(record.pending));
    set(block, "className", `task status-${task.status}${record.pending ? " is-pending" : ""}${record.failed ? " is-failed" : ""}${ctx.readOnly ? " read-only" : ""}`);
    set(block.style, "height", `${Math.min(span, SLOTS_PER_DAY * 2) * SLOT_HEIGHT - 3}px`);
    set(block.style, "width", `${width - 2}px`);
    set(block.style, "left", `${3 + index * width}px`);
    const refs = block.refs;
    set(refs.title, "textContent", task.title);
    set(refs.time, "textContent", when);
    setAttr(refs.open, "aria-label", `${task.title}, ${day} ${when}, ${task.status}${record.pending ? ", not saved yet" : ""}: open details`);
    set(refs.pending, "hidden", !record.pending);
    set(refs.pending, "textContent", record.failed ? "not saved" : "pending");
    drawPeople(refs.people, people);
    set(refs.quick, "hidden", ctx.readOnly);
    setAttr(refs.quick, "aria-label", `Status of ${task.title}`);
    for (const button of refs.buttons) {
      setAttr(button, "aria-label", `Mark ${task.title} as ${button.dataset.status}`);
      setAttr(button, "aria-pressed", String(button.dataset.status === task.status));
    }
  }

  // ------------------------------------------------------------------ drawing

  function render() {
    if (view.dirty) rebuild();
    const days = view.days.length;
    view.phone = scroller.clientWidth < PHONE_WIDTH;
    set(document.getElementById("day-nav"), "hidden", !view.phone);
    const dayWidth = view.phone ? Math.max(160, scroller.clientWidth - TIME_WIDTH - 2) : DAY_WIDTH;
    // Only when it changes: setting a custom property restyles everything in the grid.
    if (view.dayWidth !== dayWidth) {
      view.dayWidth = dayWidth;
      scroller.style.setProperty("--day-width", `${dayWidth}px`);
    }
    const shownDays = view.phone ? (days ? 1 : 0) : days;
    set(canvas.style, "width", `${TIME_WIDTH + shownDays * dayWidth}px`);
    set(canvas.style, "height", `${HEAD_HEIGHT + SLOTS_PER_DAY * SLOT_HEIGHT}px`);
    setAttr(scroller, "aria-rowcount", String(SLOTS_PER_DAY + 1));
    setAttr(scroller, "aria-colcount", String(days + 1));
    if (!view.scrolledToMorning && days > 0) {
      scroller.scrollTop = FIRST_HOUR_IN_VIEW * (60 / SLOT_MINUTES) * SLOT_HEIGHT;
      view.scrolledToMorning = true;
    }
    if (view.phone && days > 0) {
      const day = view.days[view.dayInView];
      set(document.getElementById("day-label"), "textContent", longDayFormat.format(day));
      document.getElementById("day-prev").disabled = view.dayInView === 0;
      document.getElementById("day-next").disabled = view.dayInView >= days - 1;
    }

    // The days and slots in view.
    const firstDay = view.phone ? view.dayInView : Math.max(0, Math.floor((scroller.scrollLeft - TIME_WIDTH) / dayWidth));
    const lastDay = view.phone ? view.dayInView + 1 : Math.min(days, Math.ceil((scroller.scrollLeft + scroller.clientWidth) / dayWidth) + 1);
    const firstSlot = Math.max(0, Math.floor((scroller.scrollTop - HEAD_HEIGHT) / SLOT_HEIGHT) - OVERSCAN_SLOTS);
    const lastSlot = Math.min(SLOTS_PER_DAY, Math.ceil((scroller.scrollTop + scroller.clientHeight) / SLOT_HEIGHT) + 1);
    const columnOf = (dayIndex) => (view.phone ? 0 : dayIndex);

    const head = headRow();
    for (const [dayIndex, cell] of head.days) {
      if (dayIndex >= firstDay && dayIndex < lastDay) continue;
      cell.remove();
      head.days.delete(dayIndex);
    }
    for (let d = firstDay; d < lastDay && d < days; d++) {
      let cell = head.days.get(d);
      if (!cell) {
        cell = document.createElement("div");
        cell.className = "day-head";
        cell.setAttribute("role", "columnheader");
        head.append(cell);
        head.days.set(d, cell);
      }
      setAttr(cell, "aria-colindex", String(d + 2));
      set(cell, "textContent", view.dayLabels[d]);
      set(cell.style, "left", `${TIME_WIDTH + columnOf(d) * dayWidth}px`);
    }

    const people = usersBySlot(ctx);
    for (const [slot, row] of view.rows) {
      if (slot >= firstSlot && slot < lastSlot) continue;
      row.remove();
      view.rows.delete(slot);
      for (const cell of row.cells.values()) {
        cell.remove();
        for (const block of cell.tasks.values()) releaseTask(block);
        cell.tasks.clear();
        cell.drawnSignature = null;
        view.cellPool.push(cell);
      }
      row.cells.clear();
      view.pool.push(row);
    }
    let drawn = 0;
    for (let slot = firstSlot; slot < lastSlot; slot++) {
      let row = view.rows.get(slot);
      if (!row) {
        row = view.pool.pop() ?? createSlotRow();
        view.rows.set(slot, row);
        canvas.append(row);
      }
      setData(row, "slot", String(slot));
      setAttr(row, "aria-rowindex", String(slot + 2));
      // `top`, not a transform: a transform would make each row a stacking context, and a task reaching down into
      // the next rows would be drawn under them.
      set(row.style, "top", `${HEAD_HEIGHT + slot * SLOT_HEIGHT}px`);
      set(row.firstChild, "textContent", slot % 2 === 0 ? slotLabel(slot) : "");
      setAttr(row.firstChild, "aria-label", slotLabel(slot));
      for (const [dayIndex, cell] of row.cells) {
        if (dayIndex >= firstDay && dayIndex < lastDay) continue;
        cell.remove();
        row.cells.delete(dayIndex);
        for (const block of cell.tasks.values()) releaseTask(block);
        cell.tasks.clear();
        cell.drawnSignature = null;
        view.cellPool.push(cell);
      }
      for (let d = firstDay; d < lastDay && d < days; d++) {
        let cell = row.cells.get(d);
        if (!cell) {
          cell = view.cellPool.pop() ?? createCell();
          row.cells.set(d, cell);
          row.append(cell);
        }
        const key = slotKey(d, slot);
        const here = people.get(key);
        const cellSignature = `${key}/${columnOf(d)}/${dayWidth}/${ctx.readOnly}/${here ?? ""}`;
        if (cell.drawnSignature !== cellSignature) {
          cell.drawnSignature = cellSignature;
          setData(cell, "day", String(d));
          setAttr(cell, "aria-colindex", String(d + 2));
          set(cell.style, "left", `${TIME_WIDTH + columnOf(d) * dayWidth}px`);
          setData(cell, "slotKey", key);
          const add = cell.firstChild;
          set(add, "hidden", ctx.readOnly);
          setAttr(add, "aria-label", `Add a task on ${view.dayLabels[d]} at ${slotLabel(slot)}`);
          drawPeople(cell.children[1], here);
        }
        const ids = view.buckets.get(`${d}:${slot}`) ?? [];
        for (const [id, block] of cell.tasks) {
          if (ids.includes(id)) continue;
          cell.tasks.delete(id);
          releaseTask(block);
        }
        ids.forEach((id, i) => {
          let block = cell.tasks.get(id);
          if (!block) {
            block = view.taskPool.pop() ?? createTask();
            block.dataset.taskId = id;
            cell.tasks.set(id, block);
            cell.append(block);
          }
          const place = view.lanes.get(id) ?? { lane: i, lanes: ids.length };
          drawTask(block, id, place.lane, place.lanes, people.get(id));
          drawn++;
        });
      }
    }
    return { placed: view.placed.size, outside: view.outside, drawn };
  }

  return {
    invalidate() {
      view.dirty = true;
    },
    /** Whether a change of this task moves it to another slot (or in or out of the plan). */
    noteChange(id, data) {
      const key = data ? placeOf(data) : null;
      const now = key ? `${key.dayIndex}:${key.slot}` : undefined;
      if (view.placed.get(id) !== now) view.dirty = true;
    },
    /** Scrolls so that a task is in view (and, on a phone, shows its day). */
    reveal(id) {
      const record = ctx.client.record("task", id);
      if (!record) return;
      const place = placeOf(record.data);
      if (!place) return;
      if (view.phone) view.dayInView = place.dayIndex;
      const top = HEAD_HEIGHT + place.slot * SLOT_HEIGHT;
      if (top < scroller.scrollTop + HEAD_HEIGHT || top > scroller.scrollTop + scroller.clientHeight - SLOT_HEIGHT) {
        scroller.scrollTop = Math.max(0, top - scroller.clientHeight / 3);
      }
    },
    render,
  };
}
