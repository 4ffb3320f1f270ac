// Chat turns over one WebSocket (docs/websocket.md): the same events as the SSE stream of
// `POST …/chat`, so the page applies them alike. Frames are {"event", "id", "data"}; a browser
// cannot set the Authorization header, so a token goes in the first frame instead.
import { ApiProblem } from "./api.js";

export class ChatSockets {
  constructor(base, token = () => "") {
    this.base = base.replace(/^http/i, "ws");
    this.token = token;
    this.connection = null;
  }

  // Yields {type, data, id} for each event of one turn, until its `done` or `error`. The
  // socket stays open for the next turn on the same route (and token).
  async *turn(path, frame, signal = undefined) {
    const connection = await this.open(path);
    const abandon = () => this.close(); // the page stops following: hang up
    signal?.addEventListener("abort", abandon, { once: true });
    let started = false;
    try {
      connection.inbox.length = 0;
      connection.socket.send(JSON.stringify({ type: "message", ...frame }));
      for (;;) {
        const event = await connection.next(signal, started);
        started = true;
        yield event;
        if (event.type === "done" || event.type === "error") return;
      }
    } finally {
      signal?.removeEventListener("abort", abandon);
    }
  }

  // Stop: the running turn ends with a `done` whose status is `cancelled`.
  cancel(messageId) {
    if (!this.connection?.isOpen()) return false;
    this.connection.socket.send(JSON.stringify({ type: "cancel", message_id: messageId }));
    return true;
  }

  async open(path) {
    const token = this.token().trim();
    const key = `${path}\n${token}`;
    if (this.connection?.key === key && this.connection.isOpen()) return this.connection;
    this.close();
    this.connection = new Connection(this.base + path, key, token);
    await this.connection.opened;
    return this.connection;
  }

  close() {
    this.connection?.socket.close(1000);
    this.connection = null;
  }
}

class Connection {
  constructor(url, key, token) {
    this.key = key;
    this.inbox = [];
    this.wake = null;
    this.closed = null;
    this.socket = new WebSocket(url);
    this.opened = new Promise((resolve, reject) => {
      this.socket.onopen = () => {
        if (token) this.socket.send(JSON.stringify({ type: "auth", token }));
        resolve();
      };
      this.socket.onclose = (close) => {
        this.closed = close;
        reject(new ApiProblem({
          code: "network_error",
          title: "Network error",
          detail: `Could not open a WebSocket to ${url}: the server is down, or it refused this ` +
            "page (is this page's origin in the service's CORS_ORIGINS?).",
        }));
        this.notify();
      };
    });
    this.opened.catch(() => {}); // awaited by open(); a later close is handled by next()
    this.socket.onmessage = (message) => {
      const frame = JSON.parse(message.data);
      this.inbox.push({ type: frame.event, data: frame.data, id: frame.id ?? null });
      this.notify();
    };
  }

  isOpen() {
    return this.socket.readyState === WebSocket.OPEN;
  }

  notify() {
    this.wake?.();
    this.wake = null;
  }

  // The next event; a socket closed before the turn began refuses it (nothing was stored),
  // one closed mid-turn is a dropped connection the page recovers from the events link.
  async next(signal, started) {
    for (;;) {
      if (signal?.aborted) throw new DOMException("The turn was abandoned.", "AbortError");
      if (this.inbox.length) return this.inbox.shift();
      if (this.closed) {
        const { code, reason } = this.closed;
        const detail = `The WebSocket closed (${code}${reason ? `: ${reason}` : ""}).`;
        if (started) throw new Error(detail);
        throw new ApiProblem({ status: 0, code: code === 1008 ? "unauthorized" : "network_error", detail });
      }
      await new Promise((wake) => {
        this.wake = wake;
        signal?.addEventListener("abort", wake, { once: true });
      });
    }
  }
}
