"""The demo page in headless Chromium against a real server, as a newcomer would use it."""

from __future__ import annotations

import functools
import json
import os
import re
import threading
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from flask import Flask
from werkzeug.serving import make_server

from chatsvc import auth
from chatsvc.agent.base import Agent, Reply, ReplyDone, TextDelta
from chatsvc.config import Config

playwright = pytest.importorskip("playwright.sync_api", reason="playwright is not installed")
expect = playwright.expect

pytestmark = pytest.mark.browser

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
STATIC = Path(__file__).resolve().parents[1] / "chatsvc" / "static"
ARTIFACTS = Path(__file__).resolve().parent / "artifacts"


class LiveServer:
    """A WSGI app or a directory served on a free loopback port, in a thread."""

    def __init__(self, server: Any) -> None:
        self.server = server
        self.origin = f"http://127.0.0.1:{server.server_port}"
        self.thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


class StaticPage(SimpleHTTPRequestHandler):
    """Serves the page the way any static host would: /demo and /static/… only."""

    def translate_path(self, path: str) -> str:
        path = path.split("?", 1)[0]
        if path == "/demo":
            return str(STATIC / "demo" / "index.html")
        if path.startswith("/static/demo/") and ".." not in path:
            return str(STATIC / path.removeprefix("/static/"))
        return str(STATIC / "missing")

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture(scope="session")
def browser() -> Iterator[Any]:
    """One headless Chromium for the whole session (Debian's, never a downloaded build)."""
    if not os.path.exists(CHROMIUM):
        reason = f"Chromium not installed at {CHROMIUM}: run .ci/install-browser"
        if os.environ.get("CHATSVC_REQUIRE_SERVICES") == "1":
            pytest.fail(reason + " (CHATSVC_REQUIRE_SERVICES=1)")
        pytest.skip(reason)
    with playwright.sync_playwright() as driver:
        chromium = driver.chromium.launch(
            executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS
        )
        yield chromium
        chromium.close()


@pytest.fixture(scope="session")
def tab(browser: Any) -> Iterator[Any]:
    """One page reused by every test; each test's server has its own origin (own storage)."""
    context = browser.new_context(viewport={"width": 1100, "height": 760})
    context.set_default_timeout(5000)
    yield context.new_page()
    context.close()


@pytest.fixture
def page(tab: Any) -> Iterator[Any]:
    """The page, left blank after the test; uncaught script errors and CSP violations fail it."""
    problems: list[str] = []

    def on_console(message: Any) -> None:
        if "Content Security Policy" in message.text:
            problems.append(message.text)

    def on_error(error: Any) -> None:
        problems.append(str(error))

    tab.on("console", on_console)
    tab.on("pageerror", on_error)
    yield tab
    tab.remove_listener("console", on_console)
    tab.remove_listener("pageerror", on_error)
    if tab.url.startswith("http"):
        tab.evaluate("localStorage.clear()")  # a later server may get this port again
    tab.goto("about:blank")
    assert not problems, problems


@pytest.fixture
def serve(make_app: Callable[..., Flask]) -> Iterator[Callable[..., tuple[LiveServer, Flask]]]:
    """Start the real service (werkzeug, threaded) on the test database."""
    servers: list[LiveServer] = []

    def start(config: dict[str, Any] | None = None, agent: Agent | None = None):
        app = make_app(config, agent=agent)
        servers.append(LiveServer(make_server("127.0.0.1", 0, app, threaded=True)))
        return servers[-1], app

    yield start
    for server in servers:
        server.close()


@pytest.fixture
def static_host() -> Iterator[Callable[[], LiveServer]]:
    """A second origin serving the same page files, like a frontend's own web server."""
    hosts: list[LiveServer] = []

    def start() -> LiveServer:
        handler = functools.partial(StaticPage, directory=str(STATIC))
        hosts.append(LiveServer(ThreadingHTTPServer(("127.0.0.1", 0), handler)))
        return hosts[-1]

    yield start
    for host in hosts:
        host.close()


@pytest.fixture
def screenshot(page: Any, request: pytest.FixtureRequest) -> Callable[[str], Path]:
    def take(state: str) -> Path:
        backend = request.node.callspec.params.get("database_url", "db")
        path = ARTIFACTS / f"demo-{state}-{backend}.png"
        ARTIFACTS.mkdir(exist_ok=True)
        page.screenshot(path=str(path), full_page=True)
        return path

    return take


class HalfwayAgent(Agent):
    """Says its first words, then waits for the test before finishing the answer."""

    name = "halfway"

    def __init__(self) -> None:
        self.gate = threading.Event()

    def stream(self, turn: Any, tools: Any, *, watched: bool = True) -> Iterator[Any]:
        yield TextDelta("Let me think… ")
        if not self.gate.wait(timeout=10):
            raise TimeoutError("the test never released the agent")
        yield TextDelta("done.")
        yield ReplyDone(Reply("Let me think… done.", self.name))


def send(page: Any, text: str, route: str) -> Any:
    """Type a message and press Enter once no turn is in flight; the chat response it got."""
    expect(page.get_by_role("button", name="Send")).to_be_visible()
    box = page.get_by_label("Message")
    box.fill(text)
    with page.expect_response(lambda r: r.request.method == "POST" and route in r.url) as sent:
        box.press("Enter")
    return sent.value


def pick_user(page: Any, user_id: str) -> None:
    page.get_by_label("User id").fill(user_id)
    page.get_by_label("User id").press("Tab")


def test_todo_turn_streams_its_answer_tool_call_and_task(page, serve, screenshot):
    server, _ = serve()
    page.goto(f"{server.origin}/demo")
    pick_user(page, "alice")
    response = send(page, "Add a task to buy milk", "/api/alice/chat")

    assert response.headers["content-type"].startswith("text/event-stream")
    assert response.request.headers["accept"] == "text/event-stream"
    answer = page.locator(".message.assistant").last
    expect(answer.locator(".content")).to_have_text("Added task 1: “buy milk”.")
    expect(answer).to_have_attribute("data-status", "completed")
    assert int(answer.get_attribute("data-deltas")) > 1  # built from the stream's deltas
    expect(answer.locator(".tool-name")).to_have_text("Tool call: add_task")
    expect(answer.locator(".tool-parameters")).to_have_text('{"title":"buy milk"}')
    expect(answer.locator(".tool-result")).to_contain_text('"status":"created"')
    expect(page.locator("#task-list .task-title")).to_have_text(["buy milk"])
    expect(page.get_by_role("status")).to_contain_text("Answered in")
    screenshot("todo")


def test_history_comes_back_after_a_reload(page, serve, screenshot):
    server, app = serve()
    page.goto(f"{server.origin}/demo")
    pick_user(page, "bob")
    send(page, "Add a task to water the plants", "/api/bob/chat")
    expect(page.locator("#task-list .task-title")).to_have_text(["water the plants"])

    page.reload()
    expect(page.locator(".message .content")).to_have_text(
        ["Add a task to water the plants", "Added task 1: “water the plants”."]
    )
    expect(page.locator(".message.assistant .tool-name")).to_have_text("Tool call: add_task")
    expect(page.locator("#task-list .task-title")).to_have_text(["water the plants"])

    send(page, "Mark task 1 as done", "/api/bob/chat")
    expect(page.locator(".message.assistant .content").last).to_contain_text("water the plants")
    expect(page.locator("#task-list .task.done .task-title")).to_have_text(["water the plants"])
    screenshot("history")
    listed = app.test_client().get("/api/bob/conversations").json["items"]
    assert [c["message_count"] for c in listed] == [4]  # the reload continued one conversation


def test_the_answer_appears_while_the_agent_is_still_working(page, serve):
    agent = HalfwayAgent()
    server, _ = serve(agent=agent)
    page.goto(f"{server.origin}/demo")
    pick_user(page, "carol")
    page.get_by_label("Message").fill("Think about it")
    page.get_by_label("Message").press("Enter")

    answer = page.locator(".message.assistant").last
    expect(answer.locator(".content")).to_have_text("Let me think… ")
    expect(answer).to_have_attribute("aria-busy", "true")
    agent.gate.set()
    expect(answer.locator(".content")).to_have_text("Let me think… done.")
    expect(answer).not_to_have_attribute("aria-busy", "true")


def test_stop_cancels_the_answer_being_streamed(page, serve):
    """Stop asks the service to cancel the turn (it goes on without a reader otherwise): the
    turn ends while its agent is still waiting, stored `cancelled` with what was said."""
    agent = HalfwayAgent()
    server, app = serve(agent=agent)
    page.goto(f"{server.origin}/demo")
    pick_user(page, "cora")
    page.get_by_label("Message").fill("Think about it")
    page.get_by_label("Message").press("Enter")
    answer = page.locator(".message.assistant").last
    expect(answer.locator(".content")).to_have_text("Let me think… ")

    with page.expect_response(lambda r: r.url.endswith("/cancel")) as cancel:
        page.get_by_role("button", name="Stop").click()
    assert cancel.value.status == 202
    expect(answer.locator(".badge")).to_have_text("cancelled")
    expect(page.get_by_role("button", name="Send")).to_be_visible()
    expect(page.get_by_role("status")).to_have_text("Stopped.")
    client = app.test_client()
    (conversation,) = client.get("/api/cora/conversations").json["items"]
    stored = client.get(f"/api/cora/conversations/{conversation['id']}").json["messages"][-1]
    assert (stored["status"], stored["content"]) == ("cancelled", "Let me think… ")
    assert not agent.gate.is_set(), "the turn ended while its agent still waited"
    agent.gate.set()


def test_a_reload_mid_answer_picks_the_answer_up_where_it_was(page, serve):
    """The turn goes on without the page; after the reload the page follows its events link
    after the last event it had shown, and the answer completes on the page."""
    agent = HalfwayAgent()
    server, app = serve(agent=agent)
    page.goto(f"{server.origin}/demo")
    pick_user(page, "dora")
    page.get_by_label("Message").fill("Think about it")
    page.get_by_label("Message").press("Enter")
    expect(page.locator(".message.assistant .content")).to_have_text("Let me think… ")

    with page.expect_request(lambda r: r.url.endswith("/events")) as resumed:
        page.reload()
    answer = page.locator(".message.assistant").last
    expect(answer.locator(".content")).to_have_text("Let me think… ")
    expect(page.get_by_role("button", name="Stop")).to_be_visible()
    assert resumed.value.headers["last-event-id"] == "2"  # meta, then the first delta
    agent.gate.set()
    expect(answer.locator(".content")).to_have_text("Let me think… done.")
    expect(answer).to_have_attribute("data-status", "completed")
    expect(page.get_by_role("button", name="Send")).to_be_visible()
    assert page.evaluate("Object.keys(sessionStorage)") == [], "the finished turn is forgotten"
    client = app.test_client()
    (conversation,) = client.get("/api/dora/conversations").json["items"]
    stored = client.get(f"/api/dora/conversations/{conversation['id']}").json["messages"][-1]
    assert (stored["status"], stored["content"]) == ("completed", "Let me think… done.")


def test_a_knowledge_session_continues_and_reloads(page, serve):
    server, _ = serve()
    page.goto(f"{server.origin}/demo")
    page.get_by_label("Knowledge assistant (anonymous session)").check()
    expect(page.get_by_label("User id")).to_be_hidden()
    send(page, "hello", "/api/chat")
    expect(page.locator(".message.assistant").last).to_have_attribute("data-status", "completed")
    label = page.locator("#conversation-label")
    expect(label).to_have_text(re.compile(r"^Anonymous session: [0-9a-f-]{36}$"))
    session_id = label.inner_text().rsplit(" ", 1)[1]
    second = send(page, "What is the refund policy?", f"/api/chat/{session_id}")
    assert second.ok
    expect(page.locator(".message.assistant")).to_have_count(2)

    page.reload()
    expect(page.get_by_label("Knowledge assistant (anonymous session)")).to_be_checked()
    expect(page.locator(".message")).to_have_count(4)
    expect(page.locator(".message.user .content").last).to_have_text("What is the refund policy?")


def test_a_refused_message_shows_its_code_and_request_id(page, serve, screenshot):
    server, _ = serve()
    page.goto(f"{server.origin}/demo")
    pick_user(page, "dave")
    too_long = "x" * 4001
    response = send(page, too_long, "/api/dave/chat")

    assert response.status == 422
    alert = page.get_by_role("alert")
    expect(alert.locator(".error-code")).to_have_text("422 validation_error")
    expect(alert).to_contain_text("message: Length must be between 1 and 4000.")
    expect(alert.locator(".request-id")).to_have_text(response.headers["x-request-id"])
    expect(page.get_by_label("Message")).to_have_value(too_long)  # nothing typed is lost
    expect(page.locator(".message")).to_have_count(0)
    screenshot("error-422")


def test_a_rate_limited_message_shows_when_to_retry(page, serve, screenshot):
    if not hasattr(Config, "RATELIMIT_CHAT"):
        pytest.skip("rate limiting not merged yet")
    limits = {"RATELIMIT_CHAT": "1 per minute", "RATELIMIT_STORAGE_URI": "memory://"}
    server, _ = serve({"RATELIMIT_ENABLED": True, **limits})
    page.goto(f"{server.origin}/demo")
    pick_user(page, "erin")
    send(page, "Add a task to call mum", "/api/erin/chat")
    expect(page.locator(".message.assistant")).to_have_count(1)
    response = send(page, "Add a task to call dad", "/api/erin/chat")

    assert response.status == 429
    alert = page.get_by_role("alert")
    expect(alert.locator(".error-code")).to_have_text("429 rate_limited")
    expect(alert.locator(".retry-after")).to_have_text(
        f"Retry after {response.headers['retry-after']} s."
    )
    expect(alert.locator(".request-id")).to_have_text(response.headers["x-request-id"])
    screenshot("error-429")


def test_a_knowledge_answer_shows_its_citation(page, serve, screenshot):
    server, app = serve()
    added = app.test_client().post(
        "/api/documents",
        json={
            "title": "Returns policy",
            "text": "Items can be returned within 30 days of delivery for a full refund.",
            "url": "https://example.com/returns",
        },
    )
    if added.status_code == 404:
        pytest.skip("knowledge base not merged yet")
    assert added.status_code == 201, added.json
    page.goto(f"{server.origin}/demo")
    page.get_by_label("Knowledge assistant (anonymous session)").check()
    send(page, "How many days do I have to return items?", "/api/chat")

    citation = page.locator(".message.assistant .sources .source").first
    link = citation.get_by_role("link", name="Returns policy")
    expect(link).to_have_attribute("href", "https://example.com/returns")
    expect(citation.locator(".snippet")).to_contain_text("30 days")
    screenshot("citation")

    page.reload()
    expect(page.get_by_role("link", name="Returns policy")).to_be_visible()


def test_the_page_works_from_an_allowed_origin_and_is_blocked_from_others(
    page, serve, static_host, screenshot
):
    if not hasattr(Config, "CORS_ORIGINS"):
        pytest.skip("CORS not merged yet")
    allowed, other = static_host(), static_host()
    server, app = serve({"CORS_ORIGINS": allowed.origin})

    page.goto(f"{allowed.origin}/demo?api={server.origin}")
    expect(page.locator("#api-base")).to_have_text(server.origin)
    pick_user(page, "frank")
    send(page, "Add a task to buy milk", f"{server.origin}/api/frank/chat")
    expect(page.locator(".message.assistant .content")).to_have_text("Added task 1: “buy milk”.")
    expect(page.locator("#task-list .task-title")).to_have_text(["buy milk"])

    page.goto(f"{other.origin}/demo?api={server.origin}")
    pick_user(page, "frank")
    page.get_by_label("Message").fill("Add a task to buy bread")
    page.get_by_label("Message").press("Enter")
    expect(page.get_by_role("alert").locator(".error-code")).to_have_text("network_error")
    expect(page.get_by_label("Message")).to_have_value("Add a task to buy bread")
    screenshot("cors-blocked")
    tasks = app.test_client().get("/api/frank/tasks").json["items"]
    assert [t["title"] for t in tasks] == ["buy milk"]  # the blocked request never ran


def test_keyboard_only_use(page, serve):
    server, _ = serve()
    page.goto(f"{server.origin}/demo")
    expect(page.locator("body")).to_have_attribute("data-ready", "true")
    order = []
    deadline = time.monotonic() + 5
    while "message" not in order and time.monotonic() < deadline:
        page.keyboard.press("Tab")
        order.append(page.evaluate("document.activeElement.id || document.activeElement.value"))
    assert order == ["user", "user-id", "token", "sse", "new-conversation", "message"]

    page.keyboard.type("Add a task to")
    page.keyboard.press("Shift+Enter")  # a new line, not a send
    page.keyboard.type("feed the cat")
    expect(page.locator(".message")).to_have_count(0)
    page.keyboard.press("Enter")
    expect(page.locator(".message.assistant .content")).to_have_text(
        "Added task 1: “feed the cat”."
    )
    page.keyboard.press("Tab")
    assert page.evaluate("document.activeElement.id") == "send"
    page.keyboard.press("Tab")
    assert page.evaluate("document.activeElement.id") == "refresh-tasks"


STREAM = (
    'event: meta\r\nid: 1\r\ndata: {"a": 1}\r\n\r\n'
    ": ping\n\n"
    "event: delta\rdata: line one\rdata: line two\r\r"
    'event: done\nid: 3\ndata: {"text": "héllo ✓"}\n\n'
    "data: never finished"
)
PARSE = """async (chunks) => {
  const { readEvents } = await import("/static/demo/sse.js");
  const body = new ReadableStream({
    start(controller) {
      for (const chunk of chunks) controller.enqueue(new Uint8Array(chunk));
      controller.close();
    },
  });
  const events = [];
  for await (const event of readEvents(body)) events.push(event);
  return events;
}"""


@pytest.mark.parametrize("size", [1, 7, len(STREAM.encode())])
def test_the_page_parses_any_split_of_an_event_stream(page, static_host, size):
    host = static_host()
    page.goto(f"{host.origin}/demo")
    raw = STREAM.encode()
    chunks = [list(raw[i : i + size]) for i in range(0, len(raw), size)]
    assert page.evaluate(PARSE, chunks) == [
        {"type": "meta", "id": "1", "data": '{"a": 1}'},
        {"type": "comment", "id": None, "data": "ping"},
        {"type": "delta", "id": None, "data": "line one\nline two"},
        {"type": "done", "id": "3", "data": '{"text": "héllo ✓"}'},
    ]


def test_a_deleted_conversation_is_forgotten_and_the_next_message_starts_anew(page, serve):
    server, app = serve()
    page.goto(f"{server.origin}/demo")
    pick_user(page, "gus")
    send(page, "Add a task to buy milk", "/api/gus/chat")
    expect(page.locator(".message")).to_have_count(2)
    expect(page.get_by_role("status")).to_contain_text("Answered")  # the turn is stored
    listed = app.test_client().get("/api/gus/conversations").json["items"]
    deleted = app.test_client().delete(f"/api/gus/conversations/{listed[0]['id']}")
    assert deleted.status_code == 204

    response = send(page, "Show my tasks", "/api/gus/chat")
    assert response.status == 404
    expect(page.get_by_role("alert").locator(".error-code")).to_have_text("404 not_found")
    expect(page.locator(".message")).to_have_count(0)
    send(page, "Show my tasks", "/api/gus/chat")
    expect(page.locator(".message.assistant .content").last).to_contain_text("buy milk")
    assert len(app.test_client().get("/api/gus/conversations").json["items"]) == 1


# Task planning, conversation search, export and citations that open (issue 20). ------------


def test_task_panel_shows_due_dates_and_priorities(page, serve, screenshot):
    server, app = serve()
    client = app.test_client()
    yesterday = (datetime.now(UTC).date() - timedelta(days=1)).isoformat()
    for body in [
        {"title": "pay rent", "due_date": yesterday, "priority": "high"},
        {"title": "buy milk"},
        {"title": "file taxes", "due_date": "2099-04-15", "priority": "low"},
    ]:
        assert client.post("/api/erin/tasks", json=body).status_code == 201
    assert client.patch("/api/erin/tasks/3", json={"completed": True}).status_code == 200
    page.goto(f"{server.origin}/demo")
    pick_user(page, "erin")

    tasks = page.locator("#task-list .task")
    expect(tasks.locator(".task-title")).to_have_text(["pay rent", "buy milk", "file taxes"])
    rent, milk, taxes = tasks.nth(0), tasks.nth(1), tasks.nth(2)
    expect(rent.locator(".priority")).to_have_text("high")
    expect(rent.locator("time.due")).to_have_text(f"due {yesterday} (overdue)")
    expect(rent.locator("time.due")).to_have_attribute("datetime", yesterday)
    expect(rent.locator(".overdue")).to_have_count(1)
    expect(milk.locator(".priority")).to_have_count(0)  # normal is not worth a badge
    expect(milk.locator("time")).to_have_count(0)
    expect(taxes.locator(".priority")).to_have_text("low")
    expect(taxes.locator("time.due")).to_have_text("due 2099-04-15")  # done: never overdue
    screenshot("tasks-planned")

    # A task the assistant adds shows up the same way.
    client.patch("/api/erin/tasks/2", json={"due_date": "2099-01-01", "priority": "high"})
    page.get_by_role("button", name="Refresh tasks").click()
    expect(milk.locator("time.due")).to_have_text("due 2099-01-01")
    expect(milk.locator(".priority")).to_have_text("high")


def test_search_box_finds_and_opens_a_conversation(page, serve, screenshot):
    server, app = serve()
    client = app.test_client()
    garden = client.post("/api/fay/chat", json={"message": "Add a task to fix the garden gate"})
    client.post("/api/fay/chat", json={"message": "Add a task to call the plumber"})
    page.goto(f"{server.origin}/demo")
    pick_user(page, "fay")

    search = page.get_by_role("searchbox", name="Search conversations")
    search.fill("garden")
    with page.expect_response(lambda r: "/api/fay/conversations?" in r.url) as found:
        search.press("Enter")
    assert "q=garden" in found.value.url
    results = page.locator("#search-results .search-result")
    expect(results).to_have_count(1)
    expect(results.locator(".conversation-title")).to_have_text("Add a task to fix the garden gate")
    expect(results.locator(".match")).to_contain_text("garden")
    expect(page.locator("#search-note")).to_have_text("1 conversation matching “garden”")
    screenshot("search")

    results.get_by_role("button").click()
    garden_id = garden.json["conversation_id"]
    expect(page.locator("#conversation-label")).to_contain_text(garden_id)
    expect(page.locator(".message.user .content")).to_have_text(
        ["Add a task to fix the garden gate"]
    )
    send(page, "what are my tasks?", "/api/fay/chat")  # the opened conversation continues
    expect(page.locator(".message.user .content")).to_have_count(2)
    assert client.get(f"/api/fay/conversations/{garden_id}").json["message_count"] == 4

    search.fill("***")  # no words: the API's 422 becomes a hint, not an error
    search.press("Enter")
    expect(page.locator("#search-note")).to_have_text("Type a word or two to search for.")
    expect(page.get_by_role("alert")).to_be_hidden()
    search.fill("submarine")
    search.press("Enter")
    expect(page.locator("#search-note")).to_have_text("No conversation matches “submarine”.")
    expect(results).to_have_count(0)


def test_export_links_download_the_conversation(page, serve):
    server, _ = serve()
    page.goto(f"{server.origin}/demo")
    pick_user(page, "gil")
    expect(page.locator("#export")).to_be_hidden()  # nothing to export yet
    send(page, "Add a task to buy milk", "/api/gil/chat")
    expect(page.locator(".message.assistant").last).to_have_attribute("data-status", "completed")

    link = page.get_by_role("link", name="Markdown")
    expect(link).to_be_visible()
    with page.expect_download() as download:
        link.click()
    saved = download.value
    assert saved.suggested_filename.startswith(
        "conversation-"
    ) and saved.suggested_filename.endswith(".md")
    text = Path(saved.path()).read_text(encoding="utf-8")
    assert "Add a task to buy milk" in text and "`add_task`" in text

    with page.expect_download() as download:
        page.get_by_role("link", name="JSON").click()
    exported = json.loads(Path(download.value.path()).read_text(encoding="utf-8"))
    assert [m["role"] for m in exported["messages"]] == ["user", "assistant"]
    assert exported["messages"][1]["tool_calls"][0]["tool"] == "add_task"


def test_export_with_a_token_sends_it(page, serve):
    secret = "d" * 40
    server, _ = serve({"AUTH_MODE": "required", "JWT_SECRET": secret})
    page.goto(f"{server.origin}/demo")
    page.get_by_label("Bearer token").fill(auth.create_token("hal", secret=secret))
    pick_user(page, "hal")
    send(page, "Add a task to buy milk", "/api/hal/chat")
    expect(page.locator(".message.assistant").last).to_have_attribute("data-status", "completed")
    with page.expect_download() as download:
        page.get_by_role("link", name="Markdown").click()
    assert download.value.suggested_filename.endswith(".md")
    assert "buy milk" in Path(download.value.path()).read_text(encoding="utf-8")
    expect(page.get_by_role("alert")).to_be_hidden()


def test_a_citation_without_a_url_opens_the_document(page, serve):
    server, app = serve()
    added = app.test_client().post(
        "/api/documents",
        json={"title": "Opening hours", "text": "The library opens at nine on weekdays."},
    )
    assert added.status_code == 201
    page.goto(f"{server.origin}/demo")
    page.get_by_label("Knowledge assistant (anonymous session)").check()
    send(page, "When does the library open?", "/api/chat")
    link = page.locator(".message.assistant .sources .source").first.get_by_role(
        "link", name="Opening hours"
    )
    href = link.get_attribute("href")
    assert href.startswith(f"{server.origin}/api/documents/{added.json['id']}")
    assert page.request.get(href.split("#")[0]).json()["title"] == "Opening hours"


# The WebSocket transport (issue 18): the same turns, events and conversation as SSE. --------


class SocketLog:
    """The WebSocket frames the page sends and receives (parsed), as Chromium saw them."""

    def __init__(self, page: Any) -> None:
        self.urls: list[str] = []
        self.sent: list[dict[str, Any]] = []
        self.received: list[dict[str, Any]] = []
        page.on("websocket", self._opened)

    def _opened(self, ws: Any) -> None:
        self.urls.append(ws.url)
        ws.on("framesent", lambda payload: self.sent.append(json.loads(payload)))
        ws.on("framereceived", lambda payload: self.received.append(json.loads(payload)))


@pytest.fixture
def sockets(page: Any) -> Iterator[SocketLog]:
    log = SocketLog(page)
    yield log
    page.remove_listener("websocket", log._opened)


def send_ws(page: Any, text: str) -> None:
    """Type a message and press Enter with the WebSocket transport chosen: no chat POST."""
    expect(page.get_by_role("button", name="Send")).to_be_visible()
    posts: list[str] = []
    page.on("request", lambda r: r.method == "POST" and "/chat" in r.url and posts.append(r.url))
    page.get_by_label("Message").fill(text)
    page.get_by_label("Message").press("Enter")
    expect(page.get_by_role("button", name="Send")).to_be_visible()
    assert posts == [], "the turn went over HTTP, not the socket"


def test_a_todo_turn_over_a_websocket_streams_like_sse(page, serve, sockets):
    server, _ = serve()
    page.goto(f"{server.origin}/demo")
    page.get_by_label("WebSocket").check()
    pick_user(page, "wanda")
    send_ws(page, "Add a task to buy milk")

    answer = page.locator(".message.assistant").last
    expect(answer.locator(".content")).to_have_text("Added task 1: “buy milk”.")
    expect(answer).to_have_attribute("data-status", "completed")
    expect(answer).to_have_attribute("data-transport", "websocket")
    assert int(answer.get_attribute("data-deltas")) > 1  # built from the socket's deltas
    expect(answer.locator(".tool-name")).to_have_text("Tool call: add_task")
    expect(answer.locator(".tool-parameters")).to_have_text('{"title":"buy milk"}')
    expect(answer.locator(".tool-result")).to_contain_text('"status":"created"')
    expect(page.locator("#task-list .task-title")).to_have_text(["buy milk"])
    expect(page.get_by_role("status")).to_contain_text("Answered in")
    assert sockets.urls == [f"ws://127.0.0.1:{server.server.server_port}/api/wanda/chat/ws"]
    assert sockets.sent == [{"type": "message", "message": "Add a task to buy milk"}]
    events = [frame["event"] for frame in sockets.received]
    assert events[0] == "meta" and events[-1] == "done" and "tool_call" in events

    page.reload()  # the choice is kept
    expect(page.get_by_label("WebSocket")).to_be_checked()


def test_one_conversation_goes_on_across_sse_and_websocket(page, serve, sockets):
    server, app = serve()
    page.goto(f"{server.origin}/demo")
    pick_user(page, "xena")
    send(page, "Add a task to buy milk", "/api/xena/chat")
    expect(page.locator(".message.assistant").last).to_have_attribute("data-status", "completed")

    page.get_by_label("WebSocket").check()
    send_ws(page, "Add a task to call mum")
    expect(page.locator(".message.assistant").last).to_have_attribute("data-transport", "websocket")
    page.get_by_label("Server-Sent Events").check()
    response = send(page, "What are my tasks?", "/api/xena/chat")
    last = page.locator(".message.assistant").last
    expect(last).to_have_attribute("data-status", "completed")
    expect(last.locator(".content")).to_contain_text("call mum")

    expect(page.locator(".message.assistant .content")).to_have_count(3)
    expect(page.locator(".message.assistant .content").nth(1)).to_have_text(
        "Added task 2: “call mum”."
    )
    client = app.test_client()
    (conversation,) = client.get("/api/xena/conversations").json["items"]
    (frame,) = sockets.sent
    assert frame == {"type": "message", "message": "Add a task to call mum"} | {
        "conversation_id": conversation["id"]
    }
    assert json.loads(response.request.post_data)["conversation_id"] == conversation["id"]
    stored = client.get(f"/api/xena/conversations/{conversation['id']}").json["messages"]
    assert [m["content"] for m in stored if m["role"] == "user"] == [
        "Add a task to buy milk",
        "Add a task to call mum",
        "What are my tasks?",
    ]
    assert [t["title"] for t in client.get("/api/xena/tasks").json["items"]] == [
        "buy milk",
        "call mum",
    ]


def test_stop_over_a_websocket_sends_the_cancel_frame(page, serve, sockets):
    agent = HalfwayAgent()
    server, app = serve(agent=agent)
    page.goto(f"{server.origin}/demo")
    page.get_by_label("WebSocket").check()
    pick_user(page, "yuri")
    page.get_by_label("Message").fill("Think about it")
    page.get_by_label("Message").press("Enter")
    answer = page.locator(".message.assistant").last
    expect(answer.locator(".content")).to_have_text("Let me think… ")

    page.get_by_role("button", name="Stop").click()
    expect(answer.locator(".badge")).to_have_text("cancelled")
    expect(page.get_by_role("button", name="Send")).to_be_visible()
    expect(page.get_by_role("status")).to_have_text("Stopped.")
    message_id = answer.get_attribute("data-message-id")
    assert sockets.sent[-1] == {"type": "cancel", "message_id": message_id}
    client = app.test_client()
    (conversation,) = client.get("/api/yuri/conversations").json["items"]
    stored = client.get(f"/api/yuri/conversations/{conversation['id']}").json["messages"][-1]
    assert (stored["status"], stored["content"]) == ("cancelled", "Let me think… ")
    agent.gate.set()


def test_a_knowledge_session_over_a_websocket_shows_its_citation(page, serve, sockets):
    server, app = serve()
    added = app.test_client().post(
        "/api/documents",
        json={
            "title": "Returns policy",
            "text": "Items can be returned within 30 days of delivery for a full refund.",
            "url": "https://example.com/returns",
        },
    )
    assert added.status_code == 201, added.json
    page.goto(f"{server.origin}/demo")
    page.get_by_label("Knowledge assistant (anonymous session)").check()
    page.get_by_label("WebSocket").check()
    send_ws(page, "hello")
    label = page.locator("#conversation-label")
    expect(label).to_have_text(re.compile(r"^Anonymous session: [0-9a-f-]{36}$"))
    session_id = label.inner_text().rsplit(" ", 1)[1]
    send_ws(page, "How many days do I have to return items?")

    citation = page.locator(".message.assistant").last.locator(".sources .source").first
    expect(citation.get_by_role("link", name="Returns policy")).to_have_attribute(
        "href", "https://example.com/returns"
    )
    expect(citation.locator(".snippet")).to_contain_text("30 days")
    assert sockets.sent[-1]["session_id"] == session_id
    assert all(url.endswith("/api/chat/ws") for url in sockets.urls)
    stored = app.test_client().get(f"/api/session/{session_id}").json["messages"]
    assert [m["role"] for m in stored] == ["user", "assistant", "user", "assistant"]
    assert stored[-1]["sources"][0]["title"] == "Returns policy"


def test_a_websocket_turn_signs_in_with_the_first_frame(page, serve, sockets):
    """Browsers cannot set Authorization on a WebSocket: the token goes in the first frame; a
    wrong one refuses the turn like a refused POST (the text comes back, nothing stored)."""
    secret = "w" * 40
    server, app = serve({"AUTH_MODE": "required", "JWT_SECRET": secret})
    page.goto(f"{server.origin}/demo")
    page.get_by_label("WebSocket").check()
    page.get_by_label("Bearer token").fill(auth.create_token("zoe", secret=secret))
    pick_user(page, "zoe")
    send_ws(page, "Add a task to buy milk")
    expect(page.locator(".message.assistant .content")).to_have_text("Added task 1: “buy milk”.")
    assert sockets.sent[0]["type"] == "auth" and sockets.sent[1]["type"] == "message"

    page.get_by_label("Bearer token").fill(auth.create_token("zoe", secret="x" * 40))
    send_ws(page, "Add a task to buy bread")
    expect(page.get_by_role("alert").locator(".error-code")).to_have_text("401 unauthorized")
    expect(page.get_by_label("Message")).to_have_value("Add a task to buy bread")
    expect(page.locator(".message")).to_have_count(2)
    assert len(sockets.urls) == 2  # a new token, a new socket
    headers = {"Authorization": f"Bearer {auth.create_token('zoe', secret=secret)}"}
    tasks = app.test_client().get("/api/zoe/tasks", headers=headers).json["items"]
    assert [t["title"] for t in tasks] == ["buy milk"]
