// The demo chat page: a frontend of chatsvc using only its public API.
import { Api, ApiProblem } from "./api.js";
import { ChatSockets } from "./ws.js";

const $ = (id) => document.getElementById(id);
const apiBase = (new URLSearchParams(location.search).get("api") || location.origin).replace(/\/+$/, "");
const api = new Api(apiBase, () => $("token").value);
const sockets = new ChatSockets(apiBase, () => $("token").value);
const storeKey = `chatsvc-demo:${apiBase}`;
// The turn being answered, kept for this tab only: a reload (or a dropped connection) picks
// the answer up where it was, from the turn's events link.
const turnKey = `chatsvc-demo-turn:${apiBase}`;
const saved = loadSaved();
// The turn being answered now: {controller, answer, base (its message link), messageId,
// lastEventId, deltas}.
let turn = null;

function loadSaved() {
  try {
    return { mode: "user", userId: "demo-user", conversations: {}, sessionId: null, transport: "sse",
      ...JSON.parse(localStorage.getItem(storeKey) || "{}") };
  } catch {
    return { mode: "user", userId: "demo-user", conversations: {}, sessionId: null, transport: "sse" };
  }
}

function save() {
  localStorage.setItem(storeKey, JSON.stringify(saved));
}

const mode = () => saved.mode;
const userId = () => $("user-id").value.trim();
const enc = encodeURIComponent;

function conversationId() {
  return mode() === "user" ? saved.conversations[userId()] || null : saved.sessionId;
}

function rememberConversation(id) {
  if (mode() === "user") saved.conversations[userId()] = id;
  else saved.sessionId = id;
  save();
  showConversationLabel();
}

function showConversationLabel() {
  const id = conversationId();
  const what = mode() === "user" ? `Conversation of ${userId() || "?"}` : "Anonymous session";
  $("conversation-label").textContent = id ? `${what}: ${id}` : `${what}: new (starts with your first message)`;
  showExport();
}

// ---- export -----------------------------------------------------------------

function exportPath(format) {
  return `/api/${enc(userId())}/conversations/${enc(conversationId())}/export?format=${format}`;
}

function showExport() {
  const available = mode() === "user" && Boolean(conversationId()) && Boolean(userId());
  $("export").hidden = !available;
  if (!available) return;
  $("export-markdown").href = apiBase + exportPath("markdown");
  $("export-json").href = apiBase + exportPath("json");
}

// A plain link downloads the file; with a bearer token the browser would not send it, so the
// file is fetched with the token and handed to the browser as a download.
async function downloadWithToken(event, format) {
  if (!$("token").value.trim()) return;
  event.preventDefault();
  try {
    const response = await api.fetch("GET", exportPath(format), undefined, "*/*");
    const link = element("a");
    link.href = URL.createObjectURL(await response.blob());
    link.download = `conversation-${conversationId()}.${format === "json" ? "json" : "md"}`;
    link.click();
    setTimeout(() => URL.revokeObjectURL(link.href), 1000);
  } catch (error) {
    showError(asProblem(error));
  }
}

// ---- search -----------------------------------------------------------------

async function searchConversations(text) {
  const results = $("search-results");
  results.replaceChildren();
  if (mode() !== "user" || !userId()) {
    $("search-note").textContent = "Conversations belong to a user: pick the Todo assistant.";
    return;
  }
  const q = text.trim();
  const path = q
    ? `/api/${enc(userId())}/conversations?limit=20&q=${enc(q)}`
    : `/api/${enc(userId())}/conversations?limit=20`;
  try {
    const page = await api.json("GET", path);
    results.replaceChildren(...page.items.map(searchResult));
    $("search-note").textContent = page.items.length
      ? `${page.items.length} conversation${page.items.length === 1 ? "" : "s"}${q ? ` matching “${q}”` : ""}`
      : q ? `No conversation matches “${q}”.` : "No conversations yet.";
  } catch (error) {
    const problem = asProblem(error);
    $("search-note").textContent = problem.status === 422
      ? "Type a word or two to search for." : "The search failed.";
    if (problem.status !== 422) showError(problem);
  }
}

function searchResult(conversation) {
  const item = element("li", "search-result");
  item.dataset.id = conversation.id;
  const open = element("button", "conversation-title", conversation.title || "(untitled)");
  open.type = "button";
  open.addEventListener("click", () => {
    saved.conversations[userId()] = conversation.id;
    save();
    clearError();
    loadHistory();
  });
  item.append(open);
  if (conversation.match) item.append(element("p", "match", conversation.match));
  return item;
}

// ---- rendering --------------------------------------------------------------

function element(tag, className, text) {
  const node = document.createElement(tag);
  if (className) node.className = className;
  if (text !== undefined) node.textContent = text;
  return node;
}

function addMessage(role, content = "") {
  const item = element("li", `message ${role}`);
  item.append(element("p", "who", role === "user" ? "You" : "Assistant"));
  item.append(element("div", "content", content));
  $("transcript").append(item);
  item.scrollIntoView({ block: "end" });
  return item;
}

function section(item, className, tag, label) {
  let list = item.querySelector(`.${className}`);
  if (!list) {
    list = element(tag, className);
    list.setAttribute("aria-label", label);
    item.append(list);
  }
  return list;
}

function addToolCall(item, call) {
  const card = element("li", "tool-call");
  card.append(element("p", "tool-name", `Tool call: ${call.tool}`));
  const details = element("dl");
  details.append(element("dt", "", "parameters"), element("dd", "tool-parameters", JSON.stringify(call.parameters)));
  details.append(element("dt", "", "result"), element("dd", "tool-result", JSON.stringify(call.result)));
  card.append(details);
  section(item, "tool-calls", "ul", "Tool calls").append(card);
}

function addSources(item, sources) {
  if (!sources.length) return;
  const list = section(item, "sources", "ol", "Sources");
  list.replaceChildren();
  for (const source of sources) {
    const entry = element("li", "source");
    const title = source.title || source.url || "untitled";
    const href = citationHref(source);
    if (href) {
      const link = element("a", "source-title", title);
      link.href = href;
      link.rel = "noopener noreferrer";
      link.target = "_blank";
      entry.append(link);
    } else {
      entry.append(element("span", "source-title", title));
    }
    if (source.snippet) entry.append(element("p", "snippet", source.snippet));
    list.append(entry);
  }
}

// A citation opens: the document's own web address, or the document in this API.
function citationHref(source) {
  if (/^https?:\/\//i.test(source.url || "")) return source.url;
  if (/^\/api\//.test(source.url || "")) return apiBase + source.url;
  if (!source.document_id) return null;
  const ordinal = String(source.chunk_id || "").split(":").pop();
  const anchor = ordinal ? `#chunk-${ordinal}` : "";
  return `${apiBase}/api/documents/${enc(source.document_id)}` + anchor;
}

function setStatus(item, status, code) {
  item.dataset.status = status;
  if (status === "completed" || status === "pending") return;
  item.querySelector(".badge")?.remove();
  item.querySelector(".who").append(element("span", "badge", code ? `${status}: ${code}` : status));
}

function renderMessage(message) {
  const item = addMessage(message.role, message.content);
  item.dataset.messageId = message.id;
  for (const call of message.tool_calls || []) addToolCall(item, call);
  addSources(item, message.sources || []);
  setStatus(item, message.status, message.error_code);
}

function showError(problem) {
  const box = $("error");
  box.replaceChildren();
  const head = problem.status ? `${problem.status} ${problem.code}` : problem.code;
  box.append(element("strong", "error-code", head));
  if (problem.detail) box.append(" ", element("span", "error-detail", problem.detail));
  if (problem.retryAfter) {
    box.append(" ", element("span", "retry-after", `Retry after ${problem.retryAfter} s.`));
  }
  if (problem.requestId) {
    box.append(" ", element("span", "", "Request id: "), element("code", "request-id", problem.requestId));
  }
  box.hidden = false;
}

function clearError() {
  $("error").hidden = true;
  $("error").replaceChildren();
}

function asProblem(error) {
  return error instanceof ApiProblem ? error : new ApiProblem({ code: "client_error", detail: String(error) });
}

// ---- conversation -----------------------------------------------------------

async function loadHistory() {
  $("transcript").replaceChildren();
  showConversationLabel();
  const id = conversationId();
  if (!id) return;
  try {
    const path = mode() === "user"
      ? `/api/${enc(userId())}/conversations/${enc(id)}?limit=100`
      : `/api/session/${enc(id)}?limit=100`;
    const found = await api.json("GET", path);
    $("transcript").replaceChildren();
    found.messages.forEach(renderMessage);
    resumeKept(found.messages);
  } catch (error) {
    const problem = asProblem(error);
    if (problem.status === 404 || problem.status === 410) rememberConversation(null);
    showError(problem);
  }
}

async function refreshTasks() {
  const list = $("task-list");
  if (mode() !== "user" || !userId()) {
    list.replaceChildren();
    $("tasks-note").textContent = "Tasks belong to a user: pick the Todo assistant.";
    $("refresh-tasks").disabled = true;
    return;
  }
  $("refresh-tasks").disabled = false;
  try {
    const page = await api.json("GET", `/api/${enc(userId())}/tasks?limit=100`);
    list.replaceChildren(...page.items.map(taskItem));
    $("tasks-note").textContent = page.items.length ? `${userId()}'s tasks` : `${userId()} has no tasks yet.`;
  } catch (error) {
    $("tasks-note").textContent = "Could not load the tasks.";
    showError(asProblem(error));
  }
}

function taskItem(task) {
  const item = element("li", task.completed ? "task done" : "task");
  item.append(element("span", "task-id", `#${task.task_id}`), " ", element("span", "task-title", task.title));
  if (task.completed) item.append(" ", element("span", "badge", "done"));
  if (task.priority && task.priority !== "normal") {
    item.append(" ", element("span", `badge priority priority-${task.priority}`, task.priority));
  }
  if (task.due_date) {
    const meta = element("span", "task-meta");
    const overdue = !task.completed && task.due_date < new Date().toISOString().slice(0, 10);
    const due = element("time", overdue ? "due overdue" : "due", `due ${task.due_date}${overdue ? " (overdue)" : ""}`);
    due.dateTime = task.due_date;
    meta.append(due);
    item.append(meta);
  }
  item.dataset.priority = task.priority || "normal";
  return item;
}

// The turn's events over the chosen transport: the chat POST's SSE stream, or a WebSocket
// frame (the same events); either continues the conversation the page shows.
function turnEvents(state, text) {
  const signal = state.controller.signal;
  if (state.transport === "websocket") {
    const path = mode() === "user" ? `/api/${enc(userId())}/chat/ws` : "/api/chat/ws";
    const id = conversationId();
    const frame = { message: text };
    if (id) frame[mode() === "user" ? "conversation_id" : "session_id"] = id;
    return sockets.turn(path, frame, signal);
  }
  const path = mode() === "user"
    ? `/api/${enc(userId())}/chat`
    : conversationId() ? `/api/chat/${enc(conversationId())}` : "/api/chat";
  const extra = mode() === "user" && conversationId() ? { conversation_id: conversationId() } : {};
  return api.chat(path, text, extra, signal);
}

async function send(text) {
  clearError();
  const question = addMessage("user", text);
  const state = newTurn(addMessage("assistant"), saved.transport);
  state.answer.dataset.transport = state.transport;
  await watch(state, turnEvents(state, text), (error) => {
    // Refused before the turn began (422, 429, network…): nothing was stored, so give
    // the text back to the composer instead of showing a message that does not exist.
    question.remove();
    state.answer.remove();
    $("message").value = text;
    $("status").textContent = "Not sent.";
    const problem = asProblem(error);
    if ((problem.status === 404 || problem.status === 410) && conversationId()) {
      rememberConversation(null); // gone or expired: the next message starts a new one
      $("transcript").replaceChildren();
      $("status").textContent = "Not sent: that conversation is gone; send again to start a new one.";
    }
    showError(problem);
  });
}

function newTurn(answer, transport = "sse") {
  return { controller: new AbortController(), answer, base: null, messageId: null, lastEventId: 0,
    deltas: 0, transport };
}

// Runs a turn's events into its answer until `done` or `error`: from `events` (the chat
// POST's stream), then, if that connection drops, from the turn's events link after the last
// event received. `refused` handles a failure before the turn began.
async function watch(state, events, refused = null) {
  const { answer } = state;
  answer.setAttribute("aria-busy", "true");
  answer.dataset.status = "pending";
  turn = state;
  setBusy(true);
  try {
    if (!(events && await follow(state, events))) await resume(state);
  } catch (error) {
    if (error.name === "AbortError") {
      setStatus(answer, "cancelled");
      $("status").textContent = "Stopped.";
    } else if (!state.messageId && refused) {
      refused(error);
    } else {
      forgetTurn();
      setStatus(answer, "failed", asProblem(error).code);
      $("status").textContent = "The turn failed.";
      showError(asProblem(error));
    }
  } finally {
    answer.removeAttribute("aria-busy");
    turn = null;
    setBusy(false);
  }
}

// Applies events until the turn ends (true) or the connection drops mid-turn (false).
async function follow(state, events) {
  try {
    for await (const event of events) {
      if (apply(state, event)) return true;
    }
    return false;
  } catch (error) {
    const dropped = !(error instanceof ApiProblem) && error.name !== "AbortError";
    if (dropped && state.base) return false;
    throw error;
  }
}

// The turn goes on without us: read it again from its events link, after the last event seen.
async function resume(state) {
  for (let attempt = 1; attempt <= 5; attempt++) {
    if (!state.base) break;
    $("status").textContent = "Connection lost: picking the answer up again…";
    try {
      const events = api.events(`${state.base}/events`, state.lastEventId, state.controller.signal);
      if (await follow(state, events)) return;
    } catch (error) {
      if (!(error instanceof ApiProblem) || error.code !== "network_error") throw error;
    }
    await new Promise((wake) => setTimeout(wake, 300 * attempt));
  }
  throw new ApiProblem({ code: "network_error", detail: "The answer could not be picked up again." });
}

// One event of the turn, shown; true once the turn has ended.
function apply(state, event) {
  const { answer } = state;
  const content = answer.querySelector(".content");
  if (event.id !== null && event.id !== undefined) state.lastEventId = Number(event.id);
  if (event.type === "meta") {
    rememberConversation(event.data.session_id || event.data.conversation_id);
    state.messageId = event.data.message_id;
    state.base = messageLink(event.data);
    answer.dataset.messageId = state.messageId;
  } else if (event.type === "delta") {
    content.textContent += event.data.text;
    answer.dataset.deltas = String(++state.deltas);
  } else if (event.type === "tool_call") {
    addToolCall(answer, event.data);
    refreshTasks();
  } else if (event.type === "sources") addSources(answer, event.data.sources);
  else if (event.type === "comment") $("status").textContent = "The assistant is working…";
  else if (event.type === "done") {
    forgetTurn();
    finish(answer, event.data, state.deltas);
    return true;
  } else if (event.type === "error") {
    forgetTurn();
    throw new ApiProblem(event.data);
  }
  if (state.base && event.type !== "comment") keepTurn(state);
  return false;
}

function messageLink(meta) {
  return meta.session_id
    ? `/api/session/${enc(meta.session_id)}/messages/${enc(meta.message_id)}`
    : `/api/${enc(userId())}/conversations/${enc(meta.conversation_id)}/messages/${enc(meta.message_id)}`;
}

function keepTurn(state) {
  sessionStorage.setItem(turnKey, JSON.stringify({
    mode: mode(), userId: userId(), conversationId: conversationId(), messageId: state.messageId,
    base: state.base, lastEventId: state.lastEventId, deltas: state.deltas,
    text: state.answer.querySelector(".content").textContent,
  }));
}

function forgetTurn() {
  sessionStorage.removeItem(turnKey);
}

function keptTurn() {
  try {
    return JSON.parse(sessionStorage.getItem(turnKey) || "null");
  } catch {
    return null;
  }
}

// After a reload: the answer that was being written goes on from where the page left it.
function resumeKept(messages) {
  const kept = keptTurn();
  if (!kept || turn || kept.mode !== mode() || kept.conversationId !== conversationId()) return;
  if (mode() === "user" && kept.userId !== userId()) return;
  const message = messages.find((m) => m.id === kept.messageId);
  const answer = [...document.querySelectorAll(".message.assistant")]
    .find((item) => item.dataset.messageId === kept.messageId);
  if (!message || message.status !== "pending" || !answer) {
    forgetTurn(); // it ended meanwhile: the history shows it as stored
    return;
  }
  answer.querySelector(".content").textContent = kept.text;
  const state = { ...newTurn(answer), base: kept.base, messageId: kept.messageId,
    lastEventId: kept.lastEventId, deltas: kept.deltas };
  watch(state, null);
}

// Stop: the service cancels the turn wherever it runs (asked over the turn's WebSocket, or
// by its cancel link), and the stream ends with the `cancelled` answer as stored. Before the
// turn has an id, the request is simply abandoned.
async function stop(state) {
  if (!state.base) {
    state.controller.abort();
    return;
  }
  $("status").textContent = "Stopping…";
  if (state.transport === "websocket" && sockets.cancel(state.messageId)) return; // its done comes
  try {
    await api.json("POST", `${state.base}/cancel`);
  } catch (error) {
    const problem = asProblem(error);
    if (problem.code !== "turn_finished") showError(problem); // finished anyway: its done comes
  }
}

function finish(answer, body, deltas) {
  if (!deltas) answer.querySelector(".content").textContent = body.response;
  if (!answer.querySelector(".tool-calls")) (body.tool_calls || []).forEach((call) => addToolCall(answer, call));
  addSources(answer, body.sources || []);
  setStatus(answer, body.status, body.error_code);
  if (!conversationId()) rememberConversation(body.session_id || body.conversation_id);
  if ((body.tool_calls || []).length) refreshTasks();
  const total = body.timing?.total;
  if (body.status === "cancelled") $("status").textContent = "Stopped.";
  else $("status").textContent = total === undefined ? "Answered." : `Answered in ${Math.round(total)} ms.`;
}

function setBusy(busy) {
  $("send").textContent = busy ? "Stop" : "Send";
  $("send").dataset.busy = busy ? "true" : "";
  if (busy) $("status").textContent = "Sending…";
}

// ---- wiring -----------------------------------------------------------------

function applyMode() {
  document.querySelector(`input[name=mode][value=${saved.mode}]`).checked = true;
  $("user-field").hidden = mode() !== "user";
  $("message").placeholder = mode() === "user" ? "Add a task to buy milk" : "Ask a question about the documents";
  clearError();
  $("search-results").replaceChildren();
  $("search-note").textContent = "";
  loadHistory();
  refreshTasks();
}

// While a turn streams, the send button stops it (before the form's validation can object
// to the now empty message box).
$("send").addEventListener("click", (event) => {
  if (!turn) return;
  event.preventDefault();
  stop(turn);
});

$("composer").addEventListener("submit", (event) => {
  event.preventDefault();
  if (turn) return;
  const text = $("message").value;
  if (!text.trim()) return;
  if (mode() === "user" && !userId()) {
    showError(new ApiProblem({ code: "missing_user_id", detail: "Enter a user id first." }));
    $("user-id").focus();
    return;
  }
  $("message").value = "";
  send(text);
});

$("message").addEventListener("keydown", (event) => {
  if (event.key === "Enter" && !event.shiftKey && !event.isComposing) {
    event.preventDefault();
    if (!turn) $("composer").requestSubmit();
  }
});

$("setup").addEventListener("submit", (event) => event.preventDefault());

for (const radio of document.querySelectorAll("input[name=mode]")) {
  radio.addEventListener("change", () => {
    saved.mode = radio.value;
    save();
    applyMode();
  });
}

$("user-id").addEventListener("change", () => {
  saved.userId = userId();
  save();
  applyMode();
});

$("new-conversation").addEventListener("click", () => {
  turn?.controller.abort(); // the turn goes on, stored; this page stops following it
  forgetTurn();
  rememberConversation(null);
  clearError();
  $("transcript").replaceChildren();
  $("message").focus();
});

$("refresh-tasks").addEventListener("click", refreshTasks);

$("search").addEventListener("submit", (event) => {
  event.preventDefault();
  searchConversations($("search-text").value);
});

$("export-markdown").addEventListener("click", (event) => downloadWithToken(event, "markdown"));
$("export-json").addEventListener("click", (event) => downloadWithToken(event, "json"));

for (const radio of document.querySelectorAll("input[name=transport]")) {
  radio.checked = radio.value === saved.transport;
  radio.addEventListener("change", () => {
    saved.transport = radio.value;
    save();
  });
}

$("api-base").textContent = apiBase;
$("user-id").value = saved.userId;
applyMode();
document.body.dataset.ready = "true";
