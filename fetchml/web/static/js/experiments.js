// Experiments: the list, one experiment's runs (params, metric summaries; sorted by the server,
// paged by its cursor), and a compare view that overlays the selected runs' curves.
import { fill, h, num, show, time } from "./dom.js";
import { Chart, Series, fetchSeries } from "./charts.js";
import { stateBadge } from "./jobs.js";

export function mount(el, api, name, args) {
  if (name === "compare") return compare(el, api, args[0] || "", (args[1] || "").split(",").filter(Boolean).map(Number));
  if (args[0]) return runs(el, api, args[0]);
  return list(el, api);
}

function list(el, api) {
  fill(el, h("h1", { text: "Experiments" }), h("p", { text: "loading…" }));
  api.json("/api/v1/experiments").then((body) => {
    fill(el, h("h1", { text: "Experiments" }), body.experiments.length
      ? h("table", { class: "experiments" },
        h("thead", {}, h("tr", {}, ["experiment", "runs", "last run"].map((t) => h("th", { text: t })))),
        h("tbody", {}, body.experiments.map((x) => h("tr", {},
          h("td", {}, h("a", { href: `#/experiments/${encodeURIComponent(x.name)}`, text: x.name })),
          h("td", { class: "num", text: x.runs }), h("td", { text: time(x.last_created) })))))
      : h("p", { class: "empty", text: "no experiments yet: queue a job with an experiment name" }));
  }, (err) => fill(el, h("p", { class: "error", text: err.message })));
  return { leave() {} };
}

function runs(el, api, experiment) {
  const state = { sort: "", order: "desc", cursors: [], before: null, filter: "" };
  const selected = new Set();
  let shown = [];
  let left = false;
  const table = h("div", { class: "runs" });
  const compareButton = h("button", { type: "button", id: "compare-button", text: "Compare selected", disabled: true,
    onclick: () => { location.hash = `#/compare/${encodeURIComponent(experiment)}/${[...selected].join(",")}`; } });
  const older = h("button", { type: "button", text: "More ›" });
  const newer = h("button", { type: "button", text: "‹ Back" });
  const filter = h("input", { type: "search", placeholder: "filter runs (name, user, param)",
    oninput: (ev) => { state.filter = ev.target.value.toLowerCase(); draw(); } });
  fill(el, h("h1", {}, h("a", { href: "#/experiments", text: "Experiments" }), " / ", experiment),
    h("div", { class: "toolbar" }, filter, compareButton, h("span", { class: "spacer" }), newer, older), table);

  async function load() {
    const q = new URLSearchParams({ limit: "100", order: state.order });
    if (state.sort) q.set("sort", state.sort);
    if (state.before) q.set("before", state.before);
    let body;
    try {
      body = await api.json(`/api/v1/experiments/${encodeURIComponent(experiment)}/runs?${q}`);
    } catch (err) {
      fill(table, h("p", { class: "error", text: err.message }));
      return;
    }
    if (left) return;
    shown = body.runs;
    older.disabled = !body.next;
    older.onclick = () => { state.cursors.push(state.before); state.before = body.next; load(); };
    newer.disabled = !state.cursors.length;
    newer.onclick = () => { state.before = state.cursors.pop() ?? null; load(); };
    draw();
  }

  function sortBy(metric) {
    state.order = state.sort === metric && state.order === "desc" ? "asc" : "desc";
    state.sort = metric;
    state.cursors = [];
    state.before = null;
    load();
  }

  function draw() {
    const visible = shown.filter((r) => !state.filter ||
      [r.name, r.user, JSON.stringify(r.params)].some((t) => (t || "").toLowerCase().includes(state.filter)));
    // Only params that differ between runs say something; metric columns are every metric seen.
    const paramNames = [...new Set(visible.flatMap((r) => Object.keys(r.params || {})))]
      .filter((p) => new Set(visible.map((r) => JSON.stringify((r.params || {})[p]))).size > 1 || visible.length === 1);
    const metricNames = [...new Set(visible.flatMap((r) => Object.keys(r.metrics || {})))]
      .filter((m) => !m.startsWith("sys/")).sort();
    const arrow = (m) => (state.sort === m ? (state.order === "desc" ? " ▼" : " ▲") : "");
    fill(table, h("table", { class: "runs-table" },
      h("thead", {}, h("tr", {}, h("th", { text: "" }), ["job", "name", "user", "state"].map((t) => h("th", { text: t })),
        paramNames.map((p) => h("th", { class: "param", text: p })),
        metricNames.map((m) => h("th", { class: "metric sortable", text: m + arrow(m), title: "sort by last value", onclick: () => sortBy(m) })),
        h("th", { text: "outcome" }))),
      h("tbody", {}, visible.map((r) => h("tr", {},
        h("td", {}, h("input", { type: "checkbox", class: "pick", checked: selected.has(r.job_id), dataset: { job: r.job_id },
          onchange: (ev) => { if (ev.target.checked) selected.add(r.job_id); else selected.delete(r.job_id); compareButton.disabled = selected.size < 1; } })),
        h("td", { class: "num" }, h("a", { href: `#/job/${r.job_id}`, text: r.job_id })),
        h("td", { text: r.name || "" }), h("td", { text: r.user }), h("td", {}, r.state ? stateBadge(r.state) : ""),
        paramNames.map((p) => h("td", { text: show((r.params || {})[p]) })),
        metricNames.map((m) => h("td", { class: "num", text: r.metrics[m] ? num(r.metrics[m].last) : "" })),
        h("td", { text: r.outcome || "" }))))));
  }

  load();
  return { leave() { left = true; } };
}

function compare(el, api, experiment, jobIds) {
  const charts = [];
  let left = false;
  fill(el, h("h1", {}, h("a", { href: "#/experiments", text: "Experiments" }), " / ",
    h("a", { href: `#/experiments/${encodeURIComponent(experiment)}`, text: experiment }), " / compare"),
  h("p", { text: "loading…" }));
  (async () => {
    const runs = await Promise.all(jobIds.map((id) => api.json(`/api/v1/jobs/${id}/metrics`).catch(() => null)));
    if (left) return;
    const ok = runs.map((r, i) => [jobIds[i], r]).filter(([, r]) => r);
    const metricNames = [...new Set(ok.flatMap(([, r]) => r.metrics.map((m) => m.name)))].filter((m) => !m.startsWith("sys/")).sort();
    const paramNames = [...new Set(ok.flatMap(([, r]) => Object.keys(r.params || {})))].sort();
    const grid = h("div", { class: "charts", id: "compare-charts" });
    fill(el, el.firstChild,
      h("table", { class: "compare" },
        h("thead", {}, h("tr", {}, h("th", { text: "" }), ok.map(([id]) => h("th", {}, h("a", { href: `#/job/${id}`, text: `job ${id}` }))))),
        h("tbody", {},
          paramNames.map((p) => {
            const values = ok.map(([, r]) => show((r.params || {})[p]));
            return h("tr", { class: new Set(values).size > 1 ? "differs" : "" }, h("th", { text: p }), values.map((v) => h("td", { text: v })));
          }),
          metricNames.map((m) => h("tr", {}, h("th", { text: `${m} (last / min / max)` }), ok.map(([, r]) => {
            const s = r.metrics.find((x) => x.name === m);
            return h("td", { class: "num", text: s ? `${num(s.last)} / ${num(s.min)} / ${num(s.max)}` : "" });
          }))),
          ["hypothesis", "intent", "expected_outcome"].map((k) => h("tr", {}, h("th", { text: k }),
            ok.map(([, r]) => h("td", { text: (r.narrative || {})[k] || "" })))),
          h("tr", {}, h("th", { text: "outcome" }), ok.map(([, r]) => h("td", { text: r.outcome || "" }))))),
      grid);
    for (const m of metricNames.slice(0, 12)) {
      const box = h("div", { class: "chart", dataset: { metric: m } });
      grid.appendChild(box);
      const series = await Promise.all(ok.map(async ([id]) => {
        const s = new Series(`${id}`);
        const body = await fetchSeries(api, id, m).catch(() => null);
        if (body) s.fromServer({ ...body, downsampled: false });
        return s;
      }));
      if (left) return;
      const chart = new Chart(box, m, ok.map(([id]) => `job ${id}`));
      charts.push(chart);
      chart.draw(series);
    }
  })();
  return { leave() { left = true; charts.forEach((c) => c.destroy()); } };
}
