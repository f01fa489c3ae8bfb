// The live stream (/ws): one WebSocket, kept open with pings, reconnected with
// exponential backoff and jitter. Frames are delivered to `onframe` one by one
// (batches unwrapped, in order). `send` answers a frame that carries `req`.

const PING_EVERY_MS = 25_000;
const BACKOFF_MIN_MS = 500;
const BACKOFF_MAX_MS = 30_000;

export class Live {
  constructor({ token, onframe, onstate, onunauthorized }) {
    this.token = token;
    this.onframe = onframe;
    this.onstate = onstate;
    this.onunauthorized = onunauthorized;
    this.socket = null;
    this.state = "idle";
    this.attempts = 0;
    this.retryAt = 0;
    this.timer = null;
    this.pinger = null;
    this.waiting = new Map();
    this.counter = 0;
    this.stopped = false;
    this.onOnline = () => this.reconnectNow();
    // The browser knows the network is gone before TCP does: close now, show it, and
    // reconnect (and catch up) as soon as it is back, instead of waiting on a dead socket.
    this.onOffline = () => {
      if (this.socket) this.socket.close(1000, "offline");
    };
    window.addEventListener("online", this.onOnline);
    window.addEventListener("offline", this.onOffline);
  }

  get open() {
    return this.socket !== null && this.socket.readyState === WebSocket.OPEN;
  }

  #setState(state, detail = {}) {
    this.state = state;
    this.onstate(state, detail);
  }

  connect() {
    if (this.stopped) return;
    clearTimeout(this.timer);
    const scheme = location.protocol === "https:" ? "wss:" : "ws:";
    const url = `${scheme}//${location.host}/ws?token=${encodeURIComponent(this.token)}`;
    this.#setState(this.attempts ? "reconnecting" : "connecting");
    let socket;
    try {
      socket = new WebSocket(url, "chatd.json");
    } catch {
      this.#scheduleRetry();
      return;
    }
    this.socket = socket;
    socket.onopen = () => {
      this.attempts = 0;
      this.#setState("open");
      this.pinger = setInterval(() => this.sendRaw({ type: "ping" }), PING_EVERY_MS);
    };
    socket.onmessage = (event) => {
      let frame;
      try { frame = JSON.parse(event.data); } catch { return; }
      const frames = frame.type === "batch" ? frame.frames : [frame];
      for (const one of frames) this.#deliver(one);
    };
    socket.onclose = (event) => {
      clearInterval(this.pinger);
      if (this.socket === socket) this.socket = null;
      this.#failWaiting();
      if (this.stopped) return;
      if (event.code === 4001) {
        this.stopped = true;
        this.#setState("unauthorized", { reason: event.reason });
        this.onunauthorized(event.reason);
        return;
      }
      if (event.reason === "restart") {
        this.attempts = 0;
        this.connect();
        return;
      }
      this.#scheduleRetry();
    };
  }

  #deliver(frame) {
    if (frame.req && this.waiting.has(frame.req)) {
      const { resolve } = this.waiting.get(frame.req);
      this.waiting.delete(frame.req);
      resolve(frame);
    }
    this.onframe(frame);
  }

  #failWaiting() {
    for (const { resolve } of this.waiting.values()) {
      resolve({ type: "error", code: "disconnected", message: "connection lost" });
    }
    this.waiting.clear();
  }

  #scheduleRetry() {
    this.attempts += 1;
    const ceiling = Math.min(BACKOFF_MAX_MS, BACKOFF_MIN_MS * 2 ** (this.attempts - 1));
    const delay = ceiling / 2 + Math.random() * ceiling / 2;
    this.retryAt = Date.now() + delay;
    this.#setState(navigator.onLine === false ? "offline" : "waiting", { retryAt: this.retryAt });
    this.timer = setTimeout(() => this.connect(), delay);
  }

  /** Close and connect again at once (the server settles some state per connection). */
  restart() {
    if (this.stopped) return;
    if (this.socket) this.socket.close(1000, "restart");
    else this.reconnectNow();
  }

  reconnectNow() {
    if (this.stopped || this.open) return;
    if (this.socket && this.socket.readyState === WebSocket.CONNECTING) return;
    clearTimeout(this.timer);
    this.connect();
  }

  sendRaw(frame) {
    if (!this.open) return false;
    this.socket.send(JSON.stringify(frame));
    return true;
  }

  /** Send a frame and wait for its answer (`ok`, `sent`, `error`...). */
  request(frame) {
    this.counter += 1;
    const req = `r${this.counter}`;
    return new Promise((resolve) => {
      if (!this.open) {
        resolve({ type: "error", code: "disconnected", message: "not connected" });
        return;
      }
      this.waiting.set(req, { resolve });
      this.socket.send(JSON.stringify({ ...frame, req }));
    });
  }

  stop() {
    this.stopped = true;
    clearTimeout(this.timer);
    clearInterval(this.pinger);
    window.removeEventListener("online", this.onOnline);
    window.removeEventListener("offline", this.onOffline);
    if (this.socket) this.socket.close(1000);
    this.socket = null;
  }
}
