// The dashboard's entry point: sign-in, the header, and the views by URL fragment
// (#/queue, #/job/42, #/experiments, #/experiments/NAME, #/compare/...,  #/cluster, #/submit).
import { Api } from "./api.js";
import { fill, h, toast } from "./dom.js";

const KEY_ITEM = "fetchml.key";   // sessionStorage only: gone when the tab closes
const $ = (id) => document.getElementById(id);

let api = null;
let view = null;      // the current view: {el, leave()}
let routing = 0;

const VIEWS = {
  queue: () => import("./queue.js"),
  job: () => import("./job.js"),
  experiments: () => import("./experiments.js"),
  compare: () => import("./experiments.js"),
  cluster: () => import("./cluster.js"),
  submit: () => import("./submit.js"),
};

function showSignIn(message = "") {
  $("top").hidden = true;
  $("app").hidden = true;
  $("signin-view").hidden = false;
  $("signin-error").textContent = message;
  $("signin-button").disabled = false;
  $("signin-key").focus();
}

async function signIn(key) {
  $("signin-button").disabled = true;
  $("signin-error").textContent = "";
  const candidate = new Api(key);
  try {
    await candidate.connect();
  } catch (err) {
    candidate.close();
    sessionStorage.removeItem(KEY_ITEM);
    showSignIn(signInMessage(err));
    return;
  }
  sessionStorage.setItem(KEY_ITEM, key);
  api = candidate;
  api.onstate = connectionState;
  const me = api.identity;
  $("whoami").textContent = `${me.user} (${me.roles.join(", ") || "no role"})`;
  $("nav-submit").hidden = !api.can("jobs:create");
  connectionState("open");
  $("signin-view").hidden = true;
  $("top").hidden = false;
  $("app").hidden = false;
  $("signin-key").value = "";
  route();
}

function signInMessage(err) {
  if (err.code === "unauthorized") {
    return err.message === "API key expired"
      ? "This API key has expired: ask an admin for a new one."
      : `Sign-in failed: ${err.message}. Check the key and try again.`;
  }
  if (err.code === "rate_limited") return `Too many attempts: ${err.message}`;
  return `Sign-in failed: ${err.message}`;
}

function connectionState(state, reason) {
  const el = $("conn");
  el.className = `conn ${state}`;
  el.title = state === "open" ? "live" : `${state}: ${reason || ""}`;
  if (state === "closed") signOut(`Signed out: ${reason}`);
  else if (state === "reconnecting") toast(`Connection lost (${reason}); reconnecting…`, true);
}

function signOut(message = "") {
  sessionStorage.removeItem(KEY_ITEM);
  if (view) view.leave();
  view = null;
  if (api) api.close();
  api = null;
  fill($("app"));
  location.hash = "";
  showSignIn(message);
}

async function route() {
  if (!api) return;
  const ticket = ++routing;
  const [name, ...rest] = (location.hash.replace(/^#\/?/, "") || "queue").split("/");
  const load = VIEWS[name] || VIEWS.queue;
  const args = rest.map(decodeURIComponent);
  for (const link of document.querySelectorAll("[data-nav]")) {
    link.classList.toggle("active", link.dataset.nav === name || (name === "job" && link.dataset.nav === "queue"));
  }
  const module = await load();
  if (ticket !== routing || !api) return;   // another route started meanwhile
  if (view) view.leave();
  const el = h("section", { class: `view view-${name}` });
  fill($("app"), el);
  view = module.mount(el, api, name, args);
}

$("signin-form").addEventListener("submit", (ev) => {
  ev.preventDefault();
  const key = $("signin-key").value.trim();
  if (key) signIn(key);
});
$("signout").addEventListener("click", () => signOut("Signed out."));
addEventListener("hashchange", route);

const saved = sessionStorage.getItem(KEY_ITEM);
if (saved) signIn(saved);
else showSignIn();
