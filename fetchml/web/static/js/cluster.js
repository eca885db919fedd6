// The cluster: CPUs, memory and GPUs (total and free), who holds which GPU, per-user counts,
// refreshed when a job event says something changed (never on a timer).
import { fill, h, num } from "./dom.js";

export function mount(el, api) {
  let left = false;
  let sub = null;
  let pending = false;
  const body = h("div", { class: "cluster", id: "cluster" }, h("p", { text: "loading…" }));
  fill(el, h("h1", { text: "Cluster" }), body);

  async function refresh() {
    let status;
    try {
      ({ status } = await api.request("status"));
    } catch (err) {
      fill(body, h("p", { class: "error", text: err.message }));
      return;
    }
    // Who holds which GPU: the running jobs the caller may see, with the GPUs they were given.
    let running = [];
    if (api.can("jobs:read") || api.can("jobs:read:all")) {
      running = (await api.request("list", { state: ["running"], limit: 1000 }).catch(() => ({ jobs: [] }))).jobs;
    }
    if (left) return;
    const holder = new Map();
    for (const job of running) for (const gpu of job.gpus || []) holder.set(gpu, job);
    const used = (total, free) => (total ? Math.round(100 * (total - free) / total) : 0);
    const meter = (label, total, free, unit) => h("div", { class: "meter" },
      h("div", { class: "meter-label", text: `${label}: ${num(total - free)} of ${num(total)} ${unit} in use (${num(free)} free)` }),
      h("div", { class: "bar" }, h("div", { class: `fill p${Math.min(100, Math.round(used(total, free) / 10) * 10)}` })));
    const users = [...new Set([...Object.keys(status.running_by_user), ...Object.keys(status.queued_by_user)])].sort();
    fill(body,
      meter("CPUs", status.cpus_total, status.cpus_free, ""),
      meter("Memory", status.memory_mb_total, status.memory_mb_free, "MB"),
      meter("GPUs", status.gpus_total.length, status.gpus_free.length, ""),
      status.backend_status ? h("p", { class: "error", text: `backend (${status.backend}): ${status.backend_status}` })
        : h("p", { class: "muted", text: `backend: ${status.backend}` }),
      status.gpus_total.length ? h("table", { class: "gpus" },
        h("thead", {}, h("tr", {}, ["GPU", "state", "job", "user"].map((t) => h("th", { text: t })))),
        h("tbody", {}, status.gpus_total.map((gpu) => {
          const job = holder.get(gpu);
          const free = status.gpus_free.includes(gpu);
          return h("tr", {}, h("td", { class: "num", text: gpu }), h("td", { text: free ? "free" : "in use" }),
            h("td", {}, job ? h("a", { href: `#/job/${job.id}`, text: job.spec.name || job.id }) : ""),
            h("td", { text: job ? job.user : free ? "" : "(not visible to you)" }));
        }))) : h("p", { class: "muted", text: "no GPUs on this server" }),
      h("h2", { text: "Jobs" }),
      h("table", { class: "counts-table" },
        h("thead", {}, h("tr", {}, Object.keys(status.counts).map((s) => h("th", { text: s })))),
        h("tbody", {}, h("tr", {}, Object.values(status.counts).map((n) => h("td", { class: "num", text: num(n) }))))),
      h("h2", { text: "Per user" }),
      users.length ? h("table", { class: "users" },
        h("thead", {}, h("tr", {}, ["user", "running", "queued"].map((t) => h("th", { text: t })))),
        h("tbody", {}, users.map((u) => h("tr", {}, h("td", { text: u }),
          h("td", { class: "num", text: status.running_by_user[u] || 0 }),
          h("td", { class: "num", text: status.queued_by_user[u] || 0 }))))) : h("p", { class: "muted", text: "nothing running or queued" }));
  }

  function changed() {
    if (pending || left) return;
    pending = true;
    setTimeout(() => { pending = false; if (!left) refresh(); }, 1000);
  }

  refresh();
  if (api.can("jobs:read") || api.can("jobs:read:all")) {
    api.subscribe({ batch: true }, changed, changed).then((s) => { sub = s; if (left) s.close(); }, () => {});
  }
  return { leave() { left = true; if (sub) sub.close(); } };
}
