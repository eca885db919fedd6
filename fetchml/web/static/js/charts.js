// Metric charts (uPlot, loaded only when a chart is first drawn).  A series is read over HTTP
// (the server downsamples by min/max per bucket, so spikes survive) and live points from the
// job's subscription are merged into it by step.

let uPlotModule = null;
export async function loadUPlot() {
  if (!uPlotModule) uPlotModule = import("../vendor/uplot/uPlot.esm.js").then((m) => m.default);
  return uPlotModule;
}

const COLORS = ["#2563eb", "#dc2626", "#16a34a", "#9333ea", "#ea580c", "#0891b2", "#be185d", "#4d7c0f"];

/** One metric's points: steps, last values, and each bucket's min and max. */
export class Series {
  constructor(name) {
    this.name = name;
    this.step = [];
    this.last = [];
    this.min = [];
    this.max = [];
    this.downsampled = false;
  }

  /** Take what the server answered for ``GET .../metrics/{name}?points=N``, keeping the live
   * points already merged that come after it. */
  fromServer(body) {
    const lastStep = body.step.length ? body.step[body.step.length - 1] : -Infinity;
    const later = this.step.findIndex((s) => s > lastStep);
    const keep = later < 0 ? 0 : this.step.length - later;
    const tail = (a) => (keep ? a.slice(a.length - keep) : []);
    this.step = body.step.concat(tail(this.step));
    this.last = body.last.concat(tail(this.last));
    this.min = body.min.concat(tail(this.min));
    this.max = body.max.concat(tail(this.max));
    this.downsampled = !!body.downsampled;
  }

  /** A live point: appended if past the last step, else it replaces the value at its step. */
  add(step, value) {
    const n = this.step.length;
    if (n === 0 || step > this.step[n - 1]) {
      this.step.push(step);
      this.last.push(value);
      this.min.push(value);
      this.max.push(value);
      return;
    }
    const i = search(this.step, step);
    if (this.step[i] === step && !this.downsampled) {
      this.last[i] = this.min[i] = this.max[i] = value;
    }
    // Within a downsampled bucket the server's min/max already count it.
  }
}

function search(a, x) {
  let lo = 0, hi = a.length - 1;
  while (lo < hi) {
    const mid = (lo + hi) >> 1;
    if (a[mid] < x) lo = mid + 1; else hi = mid;
  }
  return lo;
}

/** A chart of one or more series (an overlay), redrawn at most once a frame. */
export class Chart {
  constructor(container, title, labels) {
    this.container = container;
    this.title = title;
    this.labels = labels;       // one per series
    this.series = [];
    this.plot = null;
    this.frame = 0;
  }

  async draw(series) {
    this.series = series;
    const uPlot = await loadUPlot();
    const data = this.data();
    if (this.plot && this.plot.series.length === data.length) {
      this.plot.setData(data);
      return;
    }
    this.destroy();   // none yet, or the series changed shape (now downsampled)
    const width = Math.max(240, this.container.clientWidth || 480);
    const band = series.length === 1 && series[0].downsampled;
    const lines = band
      ? [{ label: "min", stroke: "#93c5fd", width: 1 }, { label: "max", stroke: "#93c5fd", width: 1 },
        { label: this.labels[0], stroke: COLORS[0], width: 1.5 }]
      : series.map((s, i) => ({ label: this.labels[i], stroke: COLORS[i % COLORS.length], width: 1.5 }));
    this.plot = new uPlot({
      title: this.title,
      width,
      height: 220,
      scales: { x: { time: false } },
      axes: [{ label: "step" }, {}],
      series: [{ label: "step" }, ...lines],
      legend: { live: true },
    }, data, this.container);
    this.resizer = new ResizeObserver(() => {
      const w = this.container.clientWidth;
      if (this.plot && w && Math.abs(w - this.plot.width) > 4) this.plot.setSize({ width: w, height: 220 });
    });
    this.resizer.observe(this.container);
  }

  data() {
    const s = this.series;
    // How many points are drawn, for people reading the page's DOM (and its tests).
    this.container.dataset.points = String(s.reduce((n, x) => n + x.step.length, 0));
    if (s.length === 1) {
      return s[0].downsampled ? [s[0].step, s[0].min, s[0].max, s[0].last] : [s[0].step, s[0].last];
    }
    // Several runs on one x axis: the union of their steps, null where a run has none.
    const steps = [...new Set(s.flatMap((x) => x.step))].sort((a, b) => a - b);
    const index = new Map(steps.map((step, i) => [step, i]));
    const ys = s.map((x) => {
      const y = new Array(steps.length).fill(null);
      x.step.forEach((step, i) => { y[index.get(step)] = x.last[i]; });
      return y;
    });
    return [steps, ...ys];
  }

  /** Redraw soon (live points), once per animation frame at most. */
  update() {
    if (this.frame || !this.plot) return;
    this.frame = requestAnimationFrame(() => {
      this.frame = 0;
      if (!this.plot) return;
      const data = this.data();
      if (this.plot.series.length === data.length) this.plot.setData(data);
      else this.draw(this.series);
    });
  }

  destroy() {
    if (this.resizer) this.resizer.disconnect();
    if (this.plot) this.plot.destroy();
    this.plot = null;
  }
}

/** The series of metric ``name`` of job ``jobId``, ``points`` buckets at most. */
export async function fetchSeries(api, jobId, name, points = 1000) {
  const path = `/api/v1/jobs/${jobId}/metrics/${encodeURIComponent(name)}?points=${points}`;
  return api.json(path);
}
