// The server's API: one WebSocket (JSON text frames) for requests and pushed events, plain
// fetch for logs, metrics and files.  The key is sent as the first frame (an `auth` op) and in
// the Authorization header of each fetch: never in a URL, a cookie or local storage.

export class ApiError extends Error {
  constructor(code, message, status = 0, details = {}) {
    super(message);
    this.code = code;
    this.status = status;
    this.details = details;
  }
}

// Close codes the server uses for "this key will not do": no point in reconnecting.
const FATAL_CLOSES = new Set([1008, 4001]);

export class Api {
  constructor(key) {
    this.key = key;
    this.ws = null;
    this.nextId = 1;
    this.pending = new Map();   // request id -> {resolve, reject}
    this.subs = new Map();      // server sub id -> Subscription
    this.identity = null;
    this.onstate = () => {};    // ("open" | "reconnecting" | "closed", reason)
    this.closedByUs = false;
    this.retry = 0;
  }

  /** Open the WebSocket and authenticate; resolves with the identity (whoami). */
  async connect() {
    const url = new URL("ws", location.href);
    url.protocol = location.protocol === "https:" ? "wss:" : "ws:";
    const ws = new WebSocket(url.href);
    this.ws = ws;
    await new Promise((resolve, reject) => {
      ws.onopen = resolve;
      ws.onerror = () => reject(new ApiError("unreachable", "cannot reach the server"));
      ws.onclose = (ev) => reject(new ApiError("unreachable", `connection closed (${ev.code})`));
    });
    ws.onmessage = (ev) => this.receive(ev.data);
    ws.onclose = (ev) => this.closed(ev);
    ws.onerror = null;
    this.identity = await this.request("auth", { key: this.key });
    this.retry = 0;
    this.onstate("open");
    return this.identity;
  }

  can(permission) {
    const me = this.identity;
    return !!me && (me.admin || me.permissions.includes(permission));
  }

  /** May the caller cancel (or requeue) a job of ``owner``? */
  canUpdate(owner) {
    return this.can("jobs:update:all") || (this.can("jobs:update") && owner === this.identity.user);
  }

  receive(text) {
    let frame;
    try { frame = JSON.parse(text); } catch { return; }
    if ("re" in frame) {
      const waiting = this.pending.get(frame.re);
      if (!waiting) return;
      this.pending.delete(frame.re);
      if (frame.ok) waiting.resolve(frame);
      else {
        const { code, message, ...details } = frame.error || {};
        waiting.reject(new ApiError(code || "error", message || "request failed", 0, details));
      }
    } else if ("ev" in frame) {
      const sub = this.subs.get(frame.sub);
      if (sub) sub.deliver(frame);
    }
  }

  /** Send one op; resolves with the reply, rejects with an ApiError. */
  request(op, args = {}) {
    const id = this.nextId++;
    return new Promise((resolve, reject) => {
      if (!this.ws || this.ws.readyState !== WebSocket.OPEN) {
        reject(new ApiError("unreachable", "not connected"));
        return;
      }
      this.pending.set(id, { resolve, reject });
      this.ws.send(JSON.stringify({ op, id, ...args }));
    });
  }

  /**
   * Subscribe with ``args`` (job_id, since, logs, offset, metrics); ``onEvent(frame)`` gets each
   * event.  After a reconnect the subscription is opened again after the last seq (and log
   * offset) it saw, and ``onResume`` is called (metric points are not replayed: re-read them).
   */
  async subscribe(args, onEvent, onResume = () => {}) {
    const sub = new Subscription(this, args, onEvent, onResume);
    await sub.open();
    return sub;
  }

  closed(ev) {
    for (const { reject } of this.pending.values()) {
      reject(new ApiError("unreachable", "connection lost"));
    }
    this.pending.clear();
    const live = [...this.subs.values()];
    this.subs.clear();
    if (this.closedByUs) return;
    if (FATAL_CLOSES.has(ev.code)) {
      this.onstate("closed", ev.reason || `closed (${ev.code})`);
      return;
    }
    this.onstate("reconnecting", ev.reason || "connection lost");
    const delay = Math.min(10000, 500 * 2 ** this.retry++);
    setTimeout(() => this.reconnect(live), delay);
  }

  async reconnect(live) {
    try {
      await this.connect();
    } catch (err) {
      if (err.code === "unauthorized") this.onstate("closed", err.message);
      else if (!this.closedByUs) this.closed({ code: 1006, reason: err.message });
      return;
    }
    for (const sub of live) {
      if (!sub.cancelled) sub.open().then(() => sub.onResume(), () => {});
    }
  }

  close() {
    this.closedByUs = true;
    if (this.ws) this.ws.close(1000, "signed out");
  }

  /** fetch() a path of the HTTP API with the key in the Authorization header. */
  async http(path, { method = "GET", body, headers = {}, signal } = {}) {
    const init = { method, signal, headers: { Authorization: `Bearer ${this.key}`, ...headers } };
    if (body !== undefined) {
      init.body = typeof body === "string" ? body : JSON.stringify(body);
      init.headers["Content-Type"] = "application/json";
    }
    const response = await fetch(path, init);
    if (!response.ok && response.status !== 206 && response.status !== 416) {
      let error = { code: "http_" + response.status, message: response.statusText };
      try { error = (await response.json()).error || error; } catch { /* not JSON */ }
      const { code, message, ...details } = error;
      throw new ApiError(code, message, response.status, details);
    }
    return response;
  }

  async json(path, options) {
    return (await this.http(path, options)).json();
  }
}

class Subscription {
  constructor(api, args, onEvent, onResume) {
    this.api = api;
    this.args = { ...args };
    this.onEvent = onEvent;
    this.onResume = onResume;
    this.id = null;
    this.cancelled = false;
  }

  async open() {
    const reply = await this.api.request("subscribe", this.args);
    this.id = reply.sub;
    this.api.subs.set(this.id, this);
    if (reply.since !== null && reply.since !== undefined && this.args.since === undefined) {
      this.args.since = reply.since;
    }
    return reply;
  }

  deliver(frame) {
    // Remember where to resume: the last seq, the end of the log seen so far.
    if (frame.ev === "job") this.args.since = frame.seq;
    else if (frame.ev === "jobs" && frame.events.length) {
      this.args.since = frame.events[frame.events.length - 1].seq;
    } else if (frame.ev === "log") this.args.offset = frame.offset + byteLength(frame.data);
    this.onEvent(frame);
  }

  close() {
    this.cancelled = true;
    if (this.id !== null && this.api.subs.get(this.id) === this) {
      this.api.subs.delete(this.id);
      this.api.request("unsubscribe", { sub: this.id }).catch(() => {});
    }
  }
}

const encoder = new TextEncoder();
function byteLength(text) {
  return encoder.encode(text).length;
}
