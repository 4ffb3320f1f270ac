// The chatsvc HTTP API as any frontend sees it: JSON, problem bodies, SSE chat turns.
import { readEvents } from "./sse.js";

export class ApiProblem extends Error {
  constructor({ status = 0, code = "error", title = "", detail = "", request_id = null, retryAfter = null }) {
    super(detail || title || code);
    Object.assign(this, { status, code, title, detail, requestId: request_id, retryAfter });
  }
}

export class Api {
  constructor(base, token = () => "") {
    this.base = base;
    this.token = token;
  }

  async json(method, path, body) {
    const response = await this.fetch(method, path, body, "application/json");
    return response.status === 204 ? null : response.json();
  }

  // Yields {type, data, id} for each event of a chat turn; a JSON answer (e.g. an
  // idempotent replay) is yielded as a single `done` event.
  async *chat(path, message, extra = {}, signal = undefined) {
    const response = await this.fetch("POST", path, { message, ...extra }, "text/event-stream", signal);
    if (!response.headers.get("Content-Type")?.startsWith("text/event-stream")) {
      yield { type: "done", data: await response.json(), id: null };
      return;
    }
    yield* parsed(response.body);
  }

  // The events of a running (or finished) turn after `lastEventId`, from its events link
  // (GET …/messages/{id}/events): what a client that lost its stream reads, on any worker.
  async *events(path, lastEventId, signal = undefined) {
    const headers = lastEventId ? { "Last-Event-ID": String(lastEventId) } : {};
    const response = await this.fetch("GET", path, undefined, "text/event-stream", signal, headers);
    yield* parsed(response.body);
  }

  async fetch(method, path, body, accept, signal, extraHeaders = {}) {
    const headers = { Accept: accept, ...extraHeaders };
    if (body !== undefined) headers["Content-Type"] = "application/json";
    const token = this.token().trim();
    if (token) headers.Authorization = `Bearer ${token}`;
    let response;
    try {
      response = await fetch(this.base + path, {
        method,
        headers,
        body: body === undefined ? undefined : JSON.stringify(body),
        signal,
      });
    } catch (error) {
      if (error.name === "AbortError") throw error;
      throw new ApiProblem({
        code: "network_error",
        title: "Network error",
        detail: `Could not reach the API at ${this.base}: the server is down, or the browser ` +
          "blocked the request (is this page's origin in the service's CORS_ORIGINS?).",
      });
    }
    if (!response.ok) throw await problemOf(response);
    return response;
  }
}

async function* parsed(body) {
  for await (const event of readEvents(body)) {
    if (event.type === "comment") yield event;
    else yield { ...event, data: JSON.parse(event.data) };
  }
}

async function problemOf(response) {
  let body = {};
  try {
    body = await response.json();
  } catch {
    // Not a problem body (a proxy's HTML page, say): fall back to the status line.
  }
  return new ApiProblem({
    status: response.status,
    code: body.code || `http_${response.status}`,
    title: body.title || response.statusText,
    detail: body.detail || "",
    request_id: body.request_id || response.headers.get("X-Request-ID"),
    retryAfter: response.headers.get("Retry-After"),
  });
}
