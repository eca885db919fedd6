// A log viewer that renders only the lines on screen, so a log of any size opens at once: the
// tail is read first (an HTTP Range), live chunks are appended, earlier parts are read as the
// reader scrolls up.  Text is shown through textContent only; ANSI escape sequences and other
// control characters are removed (a carriage return keeps what a terminal would show last),
// and bytes that are not UTF-8 become U+FFFD.

const LINE_PX = 18;         // matches .log .line in app.css
const OVERSCAN = 20;        // lines drawn above and below the visible ones
const CHUNK = 256 * 1024;   // bytes read per request (tail, earlier parts)
// CSI (colours, cursor moves), OSC (titles, links), and two-character escapes.
const ANSI = /\x1b\[[0-?]*[ -/]*[@-~]|\x1b\][^\x07\x1b]*(?:\x07|\x1b\\)?|\x1b[@-Z\\-_]/g;
const CONTROL = /[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]/g;

export function clean(line) {
  let text = line.replace(ANSI, "");
  const cr = text.lastIndexOf("\r");
  if (cr >= 0) text = cr === text.length - 1 ? text.slice(0, cr) : text.slice(cr + 1);
  return text.replace(CONTROL, "");
}

export class LogView {
  constructor(api, jobId) {
    this.api = api;
    this.jobId = jobId;
    this.lines = [];          // complete lines, cleaned
    this.partial = "";        // the last line, not ended yet
    this.head = 0;            // byte offset where this.lines[0] starts (0: the whole log)
    this.end = 0;             // byte offset after the last byte read
    this.loadingEarlier = false;
    this.el = document.createElement("div");
    this.el.className = "log";
    this.el.id = "log";
    this.el.tabIndex = 0;
    this.spacer = document.createElement("div");
    this.spacer.className = "log-spacer";
    this.win = document.createElement("div");
    this.win.className = "log-window";
    this.spacer.appendChild(this.win);
    this.el.appendChild(this.spacer);
    this.status = document.createElement("div");
    this.status.className = "log-status";
    this.pool = [];
    this.stick = true;
    this.frame = 0;
    this.el.addEventListener("scroll", () => this.scrolled());
    this.resizer = new ResizeObserver(() => this.draw());
    this.resizer.observe(this.el);
  }

  /** Read the last part of the log; returns the offset to follow it from. */
  async loadTail() {
    const response = await this.api.http(`/api/v1/jobs/${this.jobId}/logs`, {
      headers: { Range: `bytes=-${CHUNK}` },
    });
    const size = totalOf(response);
    if (response.status === 416 || size === 0) {
      this.head = this.end = size || 0;
      this.draw();
      return this.end;
    }
    const data = new Uint8Array(await response.arrayBuffer());
    const start = startOf(response);
    this.end = start + data.length;
    this.head = start;
    let from = 0;
    if (start > 0) {
      // Begin at a line's start: what comes before is read with the earlier part.
      from = data.indexOf(10) + 1;
      if (from === 0) from = data.length;
      this.head = start + from;
    }
    this.appendText(new TextDecoder().decode(data.subarray(from)));
    this.showStatus();
    return this.end;
  }

  /** Read the part of the log before what is shown. */
  async loadEarlier() {
    if (this.head === 0 || this.loadingEarlier) return;
    this.loadingEarlier = true;
    try {
      const first = Math.max(0, this.head - CHUNK);
      const response = await this.api.http(`/api/v1/jobs/${this.jobId}/logs`, {
        headers: { Range: `bytes=${first}-${this.head - 1}` },
      });
      if (response.status !== 206) return;
      const data = new Uint8Array(await response.arrayBuffer());
      let from = 0;
      if (first > 0) {
        from = data.indexOf(10) + 1;   // a line cut in two is read whole next time
        if (from === 0) return;        // a line longer than a chunk: stop here
      }
      const text = new TextDecoder().decode(data.subarray(from));
      const added = text.split("\n");
      added.pop();                     // the part ends at a line's end: the last piece is ""
      this.lines = added.map(clean).concat(this.lines);
      this.head = first + from;
      // Keep the lines on screen where they are: grow first, then move down by what came.
      this.spacer.style.height = `${this.count * LINE_PX}px`;
      this.el.scrollTop += added.length * LINE_PX;
      this.showStatus();
      this.draw(false);
    } finally {
      this.loadingEarlier = false;
    }
  }

  /** Text that follows what is shown (a live chunk). */
  appendText(text) {
    const pieces = (this.partial + text).split("\n");
    this.partial = pieces.pop();
    for (const piece of pieces) this.lines.push(clean(piece));
    this.schedule();
  }

  appendChunk(frame) {
    if (frame.offset < this.end) return;   // already read through HTTP
    this.appendText(frame.data);
    this.end = frame.offset + new TextEncoder().encode(frame.data).length;
  }

  get count() {
    return this.lines.length + (this.partial ? 1 : 0);
  }

  line(i) {
    return i < this.lines.length ? this.lines[i] : clean(this.partial);
  }

  /** Every line loaded (the tests and a copy button read them). */
  text() {
    return [...this.lines, ...(this.partial ? [clean(this.partial)] : [])].join("\n");
  }

  showStatus() {
    this.status.textContent = this.head > 0
      ? `showing the last ${Math.round((this.end - this.head) / 1024)} KB of ${Math.round(this.end / 1024)} KB: scroll up for more`
      : "";
  }

  scrolled() {
    const el = this.el;
    this.stick = el.scrollTop + el.clientHeight >= el.scrollHeight - LINE_PX;
    if (el.scrollTop < LINE_PX * 5 && this.head > 0) this.loadEarlier();
    this.schedule(false);
  }

  schedule(follow = true) {
    if (this.frame) return;
    this.frame = requestAnimationFrame(() => {
      this.frame = 0;
      this.draw(follow);
    });
  }

  draw(follow = true) {
    const el = this.el;
    this.spacer.style.height = `${this.count * LINE_PX}px`;
    if (follow && this.stick) el.scrollTop = el.scrollHeight;
    const first = Math.max(0, Math.floor(el.scrollTop / LINE_PX) - OVERSCAN);
    const last = Math.min(this.count, Math.ceil((el.scrollTop + el.clientHeight) / LINE_PX) + OVERSCAN);
    this.win.style.transform = `translateY(${first * LINE_PX}px)`;
    while (this.pool.length < last - first) {
      const div = document.createElement("div");
      div.className = "line";
      this.pool.push(div);
    }
    const shown = this.pool.slice(0, Math.max(0, last - first));
    for (let i = 0; i < shown.length; i++) shown[i].textContent = this.line(first + i);
    this.win.replaceChildren(...shown);
  }

  destroy() {
    this.resizer.disconnect();
    if (this.frame) cancelAnimationFrame(this.frame);
  }
}

function startOf(response) {
  const range = /bytes (\d+)-/.exec(response.headers.get("Content-Range") || "");
  return range ? Number(range[1]) : 0;
}

function totalOf(response) {
  const range = /\/(\d+)$/.exec(response.headers.get("Content-Range") || "");
  return range ? Number(range[1]) : Number(response.headers.get("Content-Length") || 0);
}
