// The queue: one page of jobs at a time (the server pages by id and filters), kept live by a
// subscription to every job event the user may see (pushed, never polled).
import { fill, h, num } from "./dom.js";
import { STATES, actionButtons, age, gpus, resources, runTime, stateBadge } from "./jobs.js";

const PAGE = 50;
const FLUSH_MS = 250;

export function mount(el, api) {
  const all = api.can("jobs:read:all");
  const filters = { state: "", user: "", experiment: "", tag: "", name: "" };
  let cursors = [];       // the `before` of each page before this one
  let before = null;      // this page's `before` (null: the newest jobs)
  let rows = new Map();   // job id -> {job, tr}
  let sub = null;
  let left = false;
  let loading = 0;

  const body = h("tbody");
  const info = h("span", { class: "page-info" });
  const newer = h("button", { type: "button", text: "‹ Newer", onclick: () => page(cursors.pop() ?? null, false) });
  const older = h("button", { type: "button", text: "Older ›", onclick: () => older_() });
  const stateSelect = h("select", { id: "filter-state", onchange: (ev) => set("state", ev.target.value) },
    h("option", { value: "", text: "any state" }),
    h("option", { value: "queued,running", text: "active" }),
    STATES.map((s) => h("option", { value: s, text: s })));
  const text = (name, placeholder) => h("input", {
    id: `filter-${name}`, type: "search", placeholder, spellcheck: "false",
    oninput: debounce((ev) => set(name, ev.target.value.trim()), 250),
  });
  const counts = h("div", { class: "counts" });
  const table = h("table", { class: "jobs", id: "queue-table" },
    h("thead", {}, h("tr", {}, ["id", "name", "user", "state", "priority", "resources", "GPUs", "age", "run time", ""]
      .map((t) => h("th", { text: t })))),
    body);
  fill(el,
    h("div", { class: "toolbar" },
      text("name", "search by name"), stateSelect,
      all ? text("user", "user") : null, text("experiment", "experiment"), text("tag", "tag"),
      h("span", { class: "spacer" }), newer, info, older),
    counts, table);

  function set(name, value) {
    filters[name] = value;
    cursors = [];
    page(null, false);
  }

  function older_() {
    const ids = [...rows.keys()];
    if (ids.length < PAGE) return;
    cursors.push(before);
    page(Math.min(...ids), false);
  }

  function query(beforeId) {
    const args = { limit: PAGE };
    if (beforeId) args.before = beforeId;
    if (filters.state) args.state = filters.state.split(",");
    for (const name of ["user", "experiment", "tag", "name"]) if (filters[name]) args[name] = filters[name];
    return args;
  }

  async function page(beforeId, quiet) {
    const ticket = ++loading;
    let reply;
    try {
      reply = await api.request("list", query(beforeId));
    } catch (err) {
      if (!quiet) fill(body, h("tr", {}, h("td", { colspan: 10, class: "error", text: err.message })));
      return;
    }
    if (ticket !== loading || left) return;
    before = beforeId;
    rows = new Map();
    const trs = reply.jobs.map((job) => {
      const tr = row(job);
      rows.set(job.id, { job, tr });
      return tr;
    });
    fill(body, trs.length ? trs : h("tr", {}, h("td", { colspan: 10, class: "empty", text: "no jobs" })));
    newer.disabled = before === null;
    older.disabled = reply.jobs.length < PAGE;
    info.textContent = reply.jobs.length
      ? `${reply.jobs[0].id} … ${reply.jobs[reply.jobs.length - 1].id}` : "";
  }

  function row(job) {
    const tr = h("tr", { dataset: { job: job.id }, class: `job state-row-${job.state}` });
    fillRow(tr, job);
    return tr;
  }

  function fillRow(tr, job) {
    const spec = job.spec;
    tr.className = `job state-row-${job.state}`;
    fill(tr,
      h("td", { class: "num" }, h("a", { href: `#/job/${job.id}`, text: job.id })),
      h("td", { class: "name" }, h("a", { href: `#/job/${job.id}`, text: spec.name || "" }),
        spec.experiment ? h("span", { class: "chip", text: spec.experiment }) : null,
        (spec.tags || []).map((t) => h("span", { class: "chip tag", text: t }))),
      h("td", { text: job.user }),
      h("td", { title: job.reason || "" }, stateBadge(job.state),
        job.state === "queued" && job.reason ? h("span", { class: "reason", text: job.reason }) : null),
      h("td", { class: "num", text: spec.priority }),
      h("td", { text: resources(job) }),
      h("td", { text: gpus(job) }),
      h("td", { class: "age", text: age(job) }),
      h("td", { class: "runtime", text: runTime(job) }),
      h("td", { class: "actions" }, actionButtons(api, job)));
  }

  function matches(job) {
    const spec = job.spec;
    if (filters.state && !filters.state.split(",").includes(job.state)) return false;
    if (filters.user && job.user !== filters.user) return false;
    if (filters.experiment && spec.experiment !== filters.experiment) return false;
    if (filters.tag && !(spec.tags || []).includes(filters.tag)) return false;
    return !filters.name || (spec.name || "").toLowerCase().includes(filters.name.toLowerCase());
  }

  function update(job) {
    const shown = rows.get(job.id);
    if (shown) {
      if (job.seq < shown.job.seq) return;   // an older version, from a replay
      shown.job = job;
      fillRow(shown.tr, job);
      return;
    }
    // A job not on this page shows only when it is new and this is the first page.
    const top = Math.max(0, ...rows.keys());
    if (before !== null || job.id <= top || !matches(job)) return;
    if (rows.size === 0) fill(body);
    const tr = row(job);
    body.prepend(tr);
    rows = new Map([[job.id, { job, tr }], ...rows]);
    while (rows.size > PAGE) {
      const last = [...rows.keys()].pop();
      rows.get(last).tr.remove();
      rows.delete(last);
    }
  }

  let countsPending = false;
  async function refreshCounts() {
    if (countsPending || left || !api.can("status:read")) return;
    countsPending = true;
    // At most every 2 s, and only when events came: a busy queue costs one status a while.
    setTimeout(async () => {
      countsPending = false;
      try {
        const { status } = await api.request("status");
        if (!left) showCounts(status);
      } catch { /* the next event tries again */ }
    }, 2000);
  }

  function showCounts(status) {
    fill(counts,
      STATES.filter((s) => status.counts[s]).map((s) =>
        h("span", { class: `count state-${s}`, text: `${s} ${num(status.counts[s])}` })));
  }

  // Events are applied at most every FLUSH_MS, in one animation frame, however many came: a busy
  // queue (hundreds of events a second) costs a few layouts and paints a second, not one each.
  let waiting = new Map();   // job id -> its newest version not drawn yet
  let timer = 0;
  let frame = 0;
  let lastFlush = 0;
  function onEvent(ev) {
    const jobs = ev.ev === "job" ? [ev.job] : ev.ev === "jobs" ? ev.events.map((e) => e.job) : [];
    for (const job of jobs) {
      const known = waiting.get(job.id);
      if (!known || known.seq <= job.seq) waiting.set(job.id, job);
    }
    if (!timer && !frame) {
      const wait = Math.max(0, lastFlush + FLUSH_MS - performance.now());
      timer = setTimeout(() => { timer = 0; frame = requestAnimationFrame(flush); }, wait);
    }
    refreshCounts();
  }

  function flush() {
    frame = 0;
    lastFlush = performance.now();
    const jobs = [...waiting.values()].sort((a, b) => a.id - b.id);
    waiting = new Map();
    for (const job of jobs) update(job);
  }

  const tick = setInterval(() => {
    for (const { job, tr } of rows.values()) {
      tr.querySelector(".age").textContent = age(job);
      if (job.state === "running") tr.querySelector(".runtime").textContent = runTime(job);
    }
  }, 1000);

  (async () => {
    try {
      // Subscribe first, then read the page: a job queued in between is in one or the other.
      sub = await api.subscribe({ batch: true }, onEvent, () => page(before, true));
      if (left) sub.close();
    } catch (err) {
      fill(counts, h("span", { class: "error", text: `live updates unavailable: ${err.message}` }));
    }
    await page(null, false);
    if (api.can("status:read")) {
      api.request("status").then(({ status }) => { if (!left) showCounts(status); }, () => {});
    }
  })();

  return {
    leave() {
      left = true;
      clearInterval(tick);
      clearTimeout(timer);
      cancelAnimationFrame(frame);
      if (sub) sub.close();
    },
  };
}

function debounce(fn, ms) {
  let timer = 0;
  return (...args) => { clearTimeout(timer); timer = setTimeout(() => fn(...args), ms); };
}
