// One job: summary and actions, its live log, metric charts, state history, spec, run manifest
// (provenance) and output files.  One subscription carries the job's events (replayed from the
// start, so the history is complete), its log from where the tail read ended, and its metrics.
import { bytes, fill, h, saveBlob, show, time, toast } from "./dom.js";
import { Chart, Series, fetchSeries } from "./charts.js";
import { LogView } from "./logview.js";
import { TERMINAL, actionButtons, gpus, resources, runTime, stateBadge } from "./jobs.js";

const TABS = ["log", "metrics", "history", "spec", "manifest", "files"];
const MAX_CHARTS = 24;

export function mount(el, api, _name, args) {
  const jobId = Number(args[0]);
  let job = null;
  let sub = null;
  let left = false;
  const history = [];
  const log = new LogView(api, jobId);
  const series = new Map();   // metric name -> Series
  const charts = new Map();   // metric name -> Chart
  let metricsRead = false;

  const head = h("div", { class: "job-head" });
  const summary = h("dl", { class: "summary", id: "job-summary" });
  const panes = Object.fromEntries(TABS.map((t) => [t, h("div", { class: `pane pane-${t}`, id: `pane-${t}`, hidden: t !== "log" })]));
  const tabs = h("div", { class: "tabs", role: "tablist" }, TABS.map((t) =>
    h("button", { type: "button", class: t === "log" ? "tab active" : "tab", id: `tab-${t}`, dataset: { tab: t }, text: t, onclick: () => show_(t) })));
  fill(panes.log, log.status, log.el);
  fill(el, head, summary, tabs, ...Object.values(panes));

  function show_(tab) {
    for (const button of tabs.children) button.classList.toggle("active", button.dataset.tab === tab);
    for (const [t, pane] of Object.entries(panes)) pane.hidden = t !== tab;
    if (tab === "metrics") drawCharts();
    if (tab === "manifest") loadManifest();
    if (tab === "files") loadFiles();
    if (tab === "log") log.draw();
  }

  function render() {
    const spec = job.spec;
    fill(head, h("h1", {}, `Job ${job.id} `, h("span", { class: "job-name", text: spec.name || "" })),
      stateBadge(job.state), h("span", { class: "spacer" }), actionButtons(api, job));
    const items = [
      ["user", job.user], ["state", job.state], ["reason", job.reason], ["priority", spec.priority],
      ["resources", resources(job)], ["GPUs", gpus(job)], ["experiment", spec.experiment],
      ["tags", (spec.tags || []).join(", ")], ["created", time(job.created_at)],
      ["started", time(job.started_at)], ["finished", time(job.finished_at)],
      ["run time", runTime(job)], ["attempts", job.attempts], ["exit code", job.exit_code],
      ["command", Array.isArray(spec.command) ? spec.command.join(" ") : spec.command],
    ];
    fill(summary, items.filter(([, v]) => v !== null && v !== undefined && v !== "")
      .map(([k, v]) => [h("dt", { text: k }), h("dd", { text: show(v) })]));
    fill(panes.spec, h("pre", { class: "json", text: JSON.stringify(spec, null, 2) }));
    fill(panes.history, h("table", { class: "history" },
      h("thead", {}, h("tr", {}, ["seq", "state", "attempt", "detail"].map((t) => h("th", { text: t })))),
      h("tbody", {}, history.map((e) => h("tr", {},
        h("td", { class: "num", text: e.seq }), h("td", {}, stateBadge(e.state)),
        h("td", { class: "num", text: e.attempts }), h("td", { text: e.detail }))))));
  }

  function onJob(next) {
    const prev = history[history.length - 1];
    if (!prev || prev.state !== next.state || prev.attempts !== next.attempts) {
      const detail = next.state === "running" ? `started ${time(next.started_at)}`
        : TERMINAL.has(next.state) ? [next.reason, next.exit_code !== null ? `exit ${next.exit_code}` : ""].filter(Boolean).join(", ")
          : next.reason || "";
      history.push({ seq: next.seq, state: next.state, attempts: next.attempts, detail });
    }
    if (!job || next.seq >= job.seq) job = next;
    render();
  }

  function onEvent(frame) {
    if (frame.ev === "job") onJob(frame.job);
    else if (frame.ev === "jobs") frame.events.forEach((e) => onJob(e.job));
    else if (frame.ev === "log") log.appendChunk(frame);
    else if (frame.ev === "metric") onPoints(frame.points);
  }

  function onPoints(points) {
    const touched = new Set();
    for (const [name, step, value] of points) {
      let s = series.get(name);
      if (!s) {
        s = new Series(name);
        series.set(name, s);
      }
      s.add(step, value);
      touched.add(name);
    }
    for (const name of touched) {
      const chart = charts.get(name);
      if (chart) chart.update();
    }
    if ([...touched].some((n) => !charts.has(n)) && !panes.metrics.hidden) drawCharts();
    refreshSummary();
  }

  let summaryTimer = 0;
  function refreshSummary() {
    // The summaries (count, last, min, max) change with the points: re-read them now and then.
    if (summaryTimer || !metricsRead) return;
    summaryTimer = setTimeout(async () => {
      summaryTimer = 0;
      const body = await api.json(`/api/v1/jobs/${jobId}/metrics`).catch(() => null);
      if (body && !left) renderMetricTable(body);
    }, 1500);
  }

  async function readMetrics() {
    let body;
    try {
      body = await api.json(`/api/v1/jobs/${jobId}/metrics`);
    } catch (err) {
      fill(panes.metrics, h("p", { class: "error", text: `metrics: ${err.message}` }));
      return;
    }
    const names = body.metrics.map((m) => m.name).sort(byGroup).slice(0, MAX_CHARTS);
    await Promise.all(names.map(async (name) => {
      const got = await fetchSeries(api, jobId, name).catch(() => null);
      if (!got) return;
      if (!series.has(name)) series.set(name, new Series(name));
      series.get(name).fromServer(got);
    }));
    metricsRead = true;
    renderMetricTable(body);
    if (!panes.metrics.hidden) drawCharts();
  }

  const metricTable = h("div", { class: "metric-summary" });
  const chartGrid = h("div", { class: "charts", id: "charts" });
  fill(panes.metrics, metricTable, chartGrid);

  function renderMetricTable(body) {
    const rows = body.metrics.map((m) => h("tr", {}, [m.name, m.count, m.last, m.min, m.max, m.last_step]
      .map((v, i) => h("td", { class: i ? "num" : "", text: show(v) }))));
    const params = Object.entries(body.params || {});
    fill(metricTable,
      rows.length ? h("table", { class: "metrics" },
        h("thead", {}, h("tr", {}, ["metric", "count", "last", "min", "max", "last step"].map((t) => h("th", { text: t })))),
        h("tbody", {}, rows)) : h("p", { class: "empty", text: "no metrics logged yet" }),
      params.length ? h("table", { class: "params" }, h("tbody", {}, params.map(([k, v]) =>
        h("tr", {}, h("th", { text: k }), h("td", { text: show(v) }))))) : null);
  }

  function drawCharts() {
    if (!metricsRead) return;
    const names = [...series.keys()].sort(byGroup).slice(0, MAX_CHARTS);
    for (const name of names) {
      if (charts.has(name)) continue;
      const box = h("div", { class: "chart", dataset: { metric: name } });
      chartGrid.appendChild(box);
      const chart = new Chart(box, name, [name]);
      charts.set(name, chart);
      chart.draw([series.get(name)]);
    }
  }

  let manifestRead = false;
  async function loadManifest() {
    if (manifestRead) return;
    manifestRead = true;
    try {
      const manifest = await api.json(`/api/v1/jobs/${jobId}/manifest`);
      const git = (manifest.spec && manifest.spec.provenance && manifest.spec.provenance.git) || null;
      fill(panes.manifest,
        git ? h("dl", { class: "summary" },
          [["commit", git.commit], ["branch", git.branch], ["remote", git.remote], ["dirty", git.dirty ? "yes" : "no"]]
            .filter(([, v]) => v).map(([k, v]) => [h("dt", { text: k }), h("dd", { text: v })])) : null,
        git && git.diff ? [h("h3", { text: "diff" }), h("pre", { class: "diff", text: git.diff })] : null,
        h("h3", { text: "run_manifest.json" }),
        h("pre", { class: "json", text: JSON.stringify(manifest, null, 2) }));
    } catch (err) {
      manifestRead = false;
      fill(panes.manifest, h("p", { class: "empty", text: err.status === 404 ? "no run manifest yet (the job has not started)" : err.message }));
    }
  }

  async function loadFiles() {
    try {
      const body = await api.json(`/api/v1/jobs/${jobId}/files`);
      fill(panes.files, body.files.length ? h("table", { class: "files" },
        h("thead", {}, h("tr", {}, ["path", "size", "modified", "sha256", ""].map((t) => h("th", { text: t })))),
        h("tbody", {}, body.files.map((f) => h("tr", {},
          h("td", { text: f.path }), h("td", { class: "num", text: bytes(f.size) }),
          h("td", { text: time(f.mtime) }), h("td", { class: "hash", text: (f.sha256 || "").slice(0, 16) }),
          h("td", {}, h("button", { type: "button", text: "Download", onclick: () => download(f.path) }))))))
        : h("p", { class: "empty", text: "no output files" }),
      h("button", { type: "button", text: "Download all (tar)", onclick: () => download("") }));
    } catch (err) {
      fill(panes.files, h("p", { class: "error", text: err.message }));
    }
  }

  async function download(path) {
    // fetch with the key in the header, then a Blob: the key never goes into a URL.
    try {
      const encoded = path.split("/").map(encodeURIComponent).join("/");
      const response = await api.http(`/api/v1/jobs/${jobId}/files/${encoded || "."}`);
      saveBlob(await response.blob(), path ? path.split("/").pop() : `job-${jobId}-output.tar`);
    } catch (err) {
      toast(`Download failed: ${err.message}`, true);
    }
  }

  const tick = setInterval(() => {
    if (job && job.state === "running") render();
  }, 1000);

  (async () => {
    try {
      job = (await api.request("get", { job_id: jobId })).job;
      render();
      const offset = await log.loadTail();
      if (left) return;
      sub = await api.subscribe({ job_id: jobId, since: 0, logs: true, offset, metrics: true }, onEvent,
        () => readMetrics());
      if (left) { sub.close(); return; }
      await readMetrics();
    } catch (err) {
      fill(el, h("p", { class: "error", text: `Job ${jobId}: ${err.message}` }));
    }
  })();

  return {
    leave() {
      left = true;
      clearInterval(tick);
      clearTimeout(summaryTimer);
      if (sub) sub.close();
      log.destroy();
      for (const chart of charts.values()) chart.destroy();
    },
  };
}

// Training metrics first, the server's sys/ series after them.
function byGroup(a, b) {
  const sa = a.startsWith("sys/"), sb = b.startsWith("sys/");
  return sa === sb ? a.localeCompare(b) : sa ? 1 : -1;
}


