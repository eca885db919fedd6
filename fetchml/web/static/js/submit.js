// Queue a job: command, resources, priority, labels.  Shown only with jobs:create (the server
// checks it again, and the spec, naming the field of any error).
import { fill, h, toast } from "./dom.js";

/** Split a command line into argv as a POSIX shell would for quotes and backslashes. */
export function splitArgs(line) {
  const args = [];
  let cur = "", quote = null, any = false;
  for (let i = 0; i < line.length; i++) {
    const c = line[i];
    if (quote) {
      if (c === quote) quote = null;
      else if (c === "\\" && quote === '"' && i + 1 < line.length) cur += line[++i];
      else cur += c;
    } else if (c === "'" || c === '"') { quote = c; any = true; }
    else if (c === "\\" && i + 1 < line.length) { cur += line[++i]; any = true; }
    else if (/\s/.test(c)) { if (cur || any) args.push(cur); cur = ""; any = false; }
    else cur += c;
  }
  if (quote) throw new Error("unclosed quote in the command");
  if (cur || any) args.push(cur);
  return args;
}

export function mount(el, api) {
  if (!api.can("jobs:create")) {
    fill(el, h("p", { class: "error", text: "Your key may not queue jobs (jobs:create)." }));
    return { leave() {} };
  }
  const field = (label, input) => h("label", { class: "field" }, h("span", { text: label }), input);
  const command = h("input", { id: "submit-command", name: "command", required: true, spellcheck: "false", placeholder: "python train.py --lr 3e-4" });
  const shell = h("input", { id: "submit-shell", type: "checkbox" });
  const name = h("input", { id: "submit-name" });
  const experiment = h("input", { id: "submit-experiment" });
  const tags = h("input", { id: "submit-tags", placeholder: "comma separated" });
  const cpus = h("input", { id: "submit-cpus", type: "number", min: "0", step: "0.5", value: "1" });
  const memory = h("input", { id: "submit-memory", type: "number", min: "0", step: "1", value: "0" });
  const gpus = h("input", { id: "submit-gpus", type: "number", min: "0", step: "1", value: "0" });
  const priority = h("input", { id: "submit-priority", type: "number", min: "1", max: "10", value: "5" });
  const timeout = h("input", { id: "submit-timeout", type: "number", min: "0", placeholder: "none" });
  const error = h("p", { class: "error", id: "submit-error", role: "alert" });
  const form = h("form", { class: "card submit", id: "submit-form", onsubmit: (ev) => { ev.preventDefault(); send(); } },
    h("h1", { text: "Queue a job" }),
    field("command", command), h("label", { class: "check" }, shell, " run with /bin/sh -c (shell)"),
    h("div", { class: "row" }, field("name", name), field("experiment", experiment), field("tags", tags)),
    h("div", { class: "row" }, field("CPUs", cpus), field("memory (MB)", memory), field("GPUs", gpus),
      field("priority (1–10)", priority), field("timeout (s)", timeout)),
    h("button", { type: "submit", id: "submit-button", text: "Queue" }), error);
  fill(el, form);

  async function send() {
    error.textContent = "";
    let spec;
    try {
      spec = {
        command: shell.checked ? command.value : splitArgs(command.value),
        shell: shell.checked,
        priority: Number(priority.value),
        resources: { cpus: Number(cpus.value), memory_mb: Number(memory.value), gpus: Number(gpus.value) },
      };
    } catch (err) {
      error.textContent = err.message;
      return;
    }
    if (name.value.trim()) spec.name = name.value.trim();
    if (experiment.value.trim()) spec.experiment = experiment.value.trim();
    const tagList = tags.value.split(",").map((t) => t.trim()).filter(Boolean);
    if (tagList.length) spec.tags = tagList;
    if (timeout.value) spec.timeout_s = Number(timeout.value);
    try {
      const { job } = await api.request("submit", { spec });
      toast(`Job ${job.id} queued`);
      location.hash = `#/job/${job.id}`;
    } catch (err) {
      error.textContent = err.details && err.details.field ? `${err.details.field}: ${err.message}` : err.message;
    }
  }
  return { leave() {} };
}
