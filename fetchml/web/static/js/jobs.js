// What the queue and the job page share: how a job's parts read, and the actions on a job.
import { duration, h, now, toast } from "./dom.js";

export const STATES = ["queued", "running", "succeeded", "failed", "cancelled", "timed_out", "lost"];
export const TERMINAL = new Set(["succeeded", "failed", "cancelled", "timed_out", "lost"]);

export function stateBadge(state) {
  return h("span", { class: `state state-${state}`, text: state });
}

export function resources(job) {
  const r = job.spec.resources || {};
  const parts = [`${r.cpus ?? 1} cpu`];
  if (r.memory_mb) parts.push(r.memory_mb >= 1024 ? `${(r.memory_mb / 1024).toFixed(1)} GB` : `${r.memory_mb} MB`);
  return parts.join(", ");
}

export function gpus(job) {
  if (job.gpus && job.gpus.length) return job.gpus.join(",");
  const wanted = (job.spec.resources || {}).gpus || 0;
  return wanted ? `${wanted} wanted` : "";
}

export function age(job) {
  return duration(now() - job.created_at);
}

export function runTime(job) {
  if (!job.started_at) return "";
  return duration((job.finished_at || now()) - job.started_at);
}

/** Cancel job ``job`` (after asking); the page updates from the job event that follows. */
export async function cancelJob(api, job) {
  if (!confirm(`Cancel job ${job.id}${job.spec.name ? ` (${job.spec.name})` : ""}?`)) return;
  try {
    await api.request("cancel", { job_id: job.id });
    toast(`Job ${job.id} cancelled`);
  } catch (err) {
    toast(`Cannot cancel job ${job.id}: ${err.message}`, true);
  }
}

/** Queue ``job`` again: its spec (and snapshot) as they were, ``requeued_from`` set. */
export async function requeueJob(api, job) {
  const spec = { ...job.spec, requeued_from: job.id };
  if (spec.dataset_refs && spec.dataset_refs.length) {
    // The same data as the original run, even if a dataset has a newer version now.
    spec.datasets = spec.dataset_refs.map((ref) => `${ref.name}@${ref.version}`);
  }
  try {
    const reply = await api.request("submit", { spec });
    toast(`Job ${job.id} queued again as job ${reply.job.id}`);
    location.hash = `#/job/${reply.job.id}`;
  } catch (err) {
    toast(`Cannot requeue job ${job.id}: ${err.message}`, true);
  }
}

/** Cancel and requeue buttons, for the jobs the caller may act on. */
export function actionButtons(api, job) {
  const buttons = [];
  if (!TERMINAL.has(job.state) && api.canUpdate(job.user)) {
    buttons.push(h("button", { type: "button", class: "cancel", text: "Cancel", onclick: () => cancelJob(api, job) }));
  }
  if (TERMINAL.has(job.state) && api.can("jobs:create") && job.user === api.identity.user) {
    buttons.push(h("button", { type: "button", class: "requeue", text: "Requeue", onclick: () => requeueJob(api, job) }));
  }
  return buttons;
}
