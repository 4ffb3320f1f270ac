"""Admission (contract §1 `overloaded`, issue 22): a worker already running
MAX_STREAMS_PER_WORKER turns, or streaming turns while its event loop lags beyond
OVERLOAD_LAG_MS, refuses a new turn at once with 503 `overloaded` and Retry-After, on every
transport (JSON, SSE, sessions, background turns, /v1 in OpenAI's envelope, WebSocket); the
admitted turns complete; nothing is stored for a refused one, so a retry with the same
Idempotency-Key later runs it. In process (Flask's client, turns held at a gate) and on
gunicorn's gevent worker with a slow fake model, on SQLite and on PostgreSQL with Redis."""

from __future__ import annotations

import http.client
import json
import logging
import threading
import time
import uuid
from typing import Any
from urllib.parse import urlsplit

import pytest
import sse
import websocket
from conftest import require_service
from fakellm import say
from fakes import ScriptedAgent
from helpers import assert_problem, history, ok, wait_for
from prometheus_client.parser import text_string_to_metric_families

from chatsvc.agent.base import Reply
from chatsvc.auth import create_token
from chatsvc.observability import JsonFormatter

SECRET = "o" * 40
JSON = "application/json"
ASYNC = {"Prefer": "respond-async"}
SSE = {"Accept": "text/event-stream"}
STORY = " ".join(f"word{n}" for n in range(100))  # 100 chunks: 5 s at 50 ms a chunk
# Seconds a refusal may take: it waits for nothing, while the turns it is refused for run far
# longer (held at a gate for up to 20 s in process; 5 s answers on gunicorn, still in flight
# after the refusals). The bound leaves room for a loaded machine, not for waiting on a turn.
AT_ONCE = 2.0
# Retry-After held at 2 s (no growth): what these tests check is who is refused, not how long
# they are told to wait (test_retry_after_* below).
STEADY = {"OVERLOAD_RETRY_AFTER_SECONDS": 2, "OVERLOAD_RETRY_AFTER_MAX_SECONDS": 2}


def bearer(user: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {create_token(user, secret=SECRET)}"}


def sample(text: str, name: str, **labels: str) -> float:
    for family in text_string_to_metric_families(text):
        for found in family.samples:
            if found.name == name and labels.items() <= found.labels.items():
                return found.value
    raise AssertionError(f"{name}{labels} not in /metrics")


def refused_count(client: Any, reason: str) -> float:
    text = client.get("/metrics").get_data(as_text=True)
    return sample(text, "chatsvc_turns_refused_total", reason=reason)


def in_flight(client: Any) -> float:
    return sample(client.get("/metrics").get_data(as_text=True), "chatsvc_turns_in_flight")


def assert_overloaded(response: Any, took: float) -> None:
    assert_problem(response, 503, "overloaded")
    assert response.headers["Retry-After"] == "2"
    assert took < AT_ONCE, f"the refusal took {took:.2f} s"


def timed(send: Any) -> tuple[Any, float]:
    started = time.monotonic()
    response = send()
    return response, time.monotonic() - started


class Gate:
    """Agent steps that hold their turn in flight until `open()`; `entered(n)` waits until n
    turns are held."""

    def __init__(self) -> None:
        self._open = threading.Event()
        self._held = threading.Semaphore(0)

    def step(self, text: str) -> Any:
        def hold(turn: Any, tools: Any) -> Reply:
            self._held.release()
            assert self._open.wait(timeout=20), "the test never opened the gate"
            return Reply(text, "scripted")

        return hold

    def entered(self, count: int) -> None:
        for _ in range(count):
            assert self._held.acquire(timeout=10), "a held turn never reached the agent"

    def open(self) -> None:
        self._open.set()


# In process ---------------------------------------------------------------------------------


def test_over_the_limit_every_transport_refuses_at_once_and_stores_nothing(make_app):
    agent = ScriptedAgent()
    app = make_app({"MAX_STREAMS_PER_WORKER": 2, "JWT_SECRET": SECRET, **STEADY}, agent=agent)
    client = app.test_client()
    before = refused_count(client, "streams")
    conversation = ok(client.post("/api/alice/chat", json={"message": "hello"}))
    convo = conversation["conversation_id"]
    replayable = {"message": "once", "conversation_id": convo}
    first = ok(client.post("/api/alice/chat", json=replayable, headers={"Idempotency-Key": "r1"}))

    gate = Gate()
    agent.steps += [gate.step("the first held answer"), gate.step("the second held answer")]
    held: list[Any] = []
    worker = threading.Thread(
        target=lambda: held.append(app.test_client().post("/api/bob/chat", json={"message": "a"}))
    )
    worker.start()
    background = ok(client.post("/api/carol/chat", json={"message": "b"}, headers=ASYNC), 202)
    gate.entered(2)
    assert in_flight(client) == 2

    retry = {"message": "more", "conversation_id": convo}
    key = {"Idempotency-Key": "k-refused"}
    refusals = {
        "json": lambda: client.post("/api/alice/chat", json=retry, headers=key),
        "sse": lambda: client.post("/api/alice/chat", json=retry, headers={**key, **SSE}),
        "session": lambda: client.post("/api/chat", json={"message": "new session"}),
        "background": lambda: client.post("/api/dave/chat", json={"message": "c"}, headers=ASYNC),
    }
    for send in refusals.values():
        response, took = timed(send)
        assert_overloaded(response, took)
    for path, body in (
        ("/v1/chat/completions", {"messages": [{"role": "user", "content": "hi"}]}),
        ("/v1/responses", {"input": "hi", "stream": True}),
    ):
        sent = {"model": "todo", **body}
        started = time.monotonic()
        response = client.post(path, json=sent, headers=bearer("erin"))
        took = time.monotonic() - started
        assert response.status_code == 503 and took < AT_ONCE
        assert response.headers["Retry-After"] == "2"
        assert response.get_json()["error"]["code"] == "overloaded", "OpenAI's envelope"
    assert refused_count(client, "streams") - before == 6

    # A replay is no new turn: served while the worker is full.
    again = client.post("/api/alice/chat", json=replayable, headers={"Idempotency-Key": "r1"})
    assert ok(again)["message_id"] == first["message_id"]
    assert again.headers["Idempotent-Replayed"] == "true"
    # Nothing of the refused turns was stored, and none of them reached the agent.
    assert len(history(client, "alice", convo)) == 4
    assert ok(client.get("/api/erin/conversations"))["items"] == []
    assert ok(client.get("/api/dave/conversations"))["items"] == []
    assert len(agent.turns) == 4

    gate.open()
    worker.join(timeout=10)
    message = wait_for(
        lambda: (m := ok(client.get(background["links"]["message"])))["status"] != "pending" and m
    )
    # Both held turns answered (which reached the scripted agent first is the scheduler's call).
    answers = {ok(held[0])["response"], message["content"]}
    assert answers == {"the first held answer", "the second held answer"}
    wait_for(lambda: in_flight(client) == 0, what="the finished turns to give their places back")

    # The refused key was not consumed: the same request now runs, once.
    done = client.post("/api/alice/chat", json=retry, headers=key)
    assert ok(done)["response"] == "echo: more"
    assert "Idempotent-Replayed" not in done.headers
    assert [m["content"] for m in history(client, "alice", convo)][-2:] == ["more", "echo: more"]


def test_a_turn_its_unit_of_work_refuses_gives_its_place_back(make_app):
    gate = Gate()
    app = make_app({"MAX_STREAMS_PER_WORKER": 1, **STEADY}, agent=ScriptedAgent())
    client = app.test_client()
    convo = ok(client.post("/api/alice/chat", json={"message": "hi"}))["conversation_id"]
    for _ in range(3):  # each took the one place for a moment: 404, then given back
        missing = client.post("/api/alice/chat", json={"message": "x", "conversation_id": "nope"})
        assert_problem(missing, 404, "not_found")
    app.extensions["chatsvc.turns"].agent.steps.append(gate.step("held"))
    ok(client.post("/api/alice/chat", json={"message": "hold", "conversation_id": convo},
                   headers=ASYNC), 202)  # fmt: skip
    gate.entered(1)
    response, took = timed(lambda: client.post("/api/bob/chat", json={"message": "no room"}))
    assert_overloaded(response, took)
    gate.open()
    wait_for(lambda: in_flight(client) == 0, what="the held turn to end")
    assert ok(client.post("/api/bob/chat", json={"message": "room"}))["response"] == "echo: room"


def test_a_lagging_loop_refuses_new_turns_only_while_turns_stream(make_app):
    """The lag threshold is below any real lateness (1 µs): once the watch has measured one
    wake-up, the loop counts as lagging — deterministically, with no load to time."""
    gate = Gate()
    agent = ScriptedAgent()
    app = make_app({"OVERLOAD_LAG_MS": 0.001, "MAX_STREAMS_PER_WORKER": 0, **STEADY}, agent=agent)
    client = app.test_client()
    before = refused_count(client, "lag")
    # No turn streams: answered as JSON, whatever the loop does.
    convo = ok(client.post("/api/alice/chat", json={"message": "hi"}))["conversation_id"]
    agent.steps.append(gate.step("streamed"))
    streamed = {"message": "stream", "conversation_id": convo}
    ok(client.post("/api/alice/chat", json=streamed, headers=ASYNC), 202)
    gate.entered(1)

    # The same conversation: 409 (admitted, then its turn_in_progress) until the watch has
    # measured the loop, then 503 overloaded (refused before the conversation is touched).
    def attempt() -> Any:
        response = client.post(
            "/api/alice/chat", json={"message": "next", "conversation_id": convo}
        )
        assert response.status_code in (409, 503), response.get_data(as_text=True)
        return response.status_code == 503 and response

    refusal = wait_for(attempt, what="the lag watch to refuse a turn")
    assert refusal.get_json()["code"] == "overloaded" and refusal.headers["Retry-After"] == "2"
    response, took = timed(lambda: client.post("/api/bob/chat", json={"message": "x"}))
    assert_overloaded(response, took)
    assert refused_count(client, "lag") - before >= 2
    assert ok(client.get("/api/bob/conversations"))["items"] == []

    gate.open()
    wait_for(lambda: in_flight(client) == 0, what="the streamed turn to end")
    # Nothing streams now: a new turn is admitted although the watch still measures lag.
    assert ok(client.post("/api/bob/chat", json={"message": "x"}))["response"] == "echo: x"


class Lines(logging.Handler):
    """The access log's JSON lines, as the service writes them."""

    def __init__(self) -> None:
        super().__init__()
        self.setFormatter(JsonFormatter())
        self.lines: list[dict[str, Any]] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(json.loads(self.format(record)))


@pytest.fixture
def access_lines() -> Any:
    logger = logging.getLogger("chatsvc.access")
    captured, previous = Lines(), logger.level
    logger.addHandler(captured)
    logger.setLevel(logging.INFO)
    yield captured.lines
    logger.removeHandler(captured)
    logger.setLevel(previous)


class Full:
    """An app whose one place (MAX_STREAMS_PER_WORKER 1) a background turn holds at a gate
    until `free()`."""

    def __init__(self, make_app: Any, **config: Any) -> None:
        self.gate = Gate()
        agent = ScriptedAgent(steps=[self.gate.step("held")])
        self.app = make_app({"MAX_STREAMS_PER_WORKER": 1, "JWT_SECRET": SECRET, **config},
                            agent=agent)  # fmt: skip
        self.client = self.app.test_client()
        ok(self.client.post("/api/holder/chat", json={"message": "hold"}, headers=ASYNC), 202)
        self.gate.entered(1)

    def free(self) -> None:
        self.gate.open()
        wait_for(lambda: in_flight(self.client) == 0, what="the held turn to end")


FRONT = "https://app.example"


def test_a_full_worker_refuses_a_new_turn_before_it_reads_its_body(make_app, access_lines):
    """Beyond capacity a turn without an Idempotency-Key is refused before its query, body and
    headers are parsed: a malformed request gets 503 `overloaded` (what it would get with room
    is checked after), with everything every response carries: the problem body, Retry-After,
    the request id, CORS for an allowed origin, an access line and the refusal's count. The
    caller is checked first (a bad token is still 401)."""
    full = Full(make_app, CORS_ORIGINS=FRONT)
    client = full.client
    before = refused_count(client, "streams")
    session = "0" * 32
    malformed = {
        "bad json": ("/api/alice/chat", {"data": '{"message": ', "content_type": JSON}, 400),
        "not json": ("/api/chat", {"data": "hello", "content_type": "text/plain"}, 415),
        "unknown field and query": (f"/api/chat/{session}?page=2",
                                    {"json": {"message": "hi", "extra": 1}}, 422),
    }  # fmt: skip
    lines_before = len(access_lines)
    for number, (path, sent) in enumerate((path, sent) for path, sent, _ in malformed.values()):
        request_id = f"refused-{number}"
        response = client.post(path, **sent, headers={"Origin": FRONT, "X-Request-ID": request_id})
        assert_problem(response, 503, "overloaded")
        assert response.headers["Retry-After"] == "1"
        assert response.headers["X-Request-ID"] == request_id
        assert response.headers["Access-Control-Allow-Origin"] == FRONT
        assert response.headers["Access-Control-Allow-Credentials"] == "true"
        exposed = response.headers["Access-Control-Expose-Headers"]
        assert "Retry-After" in exposed and "X-Request-ID" in exposed
    logged = [line for line in access_lines[lines_before:] if line["status"] == 503]
    assert [(line["path"], line["request_id"]) for line in logged] == [
        ("/api/<user_id>/chat", "refused-0"), ("/api/chat", "refused-1"),
        ("/api/chat/<session_id>", "refused-2"),
    ]  # fmt: skip
    assert logged[0]["user_id"] == "alice"
    # /v1, in OpenAI's envelope; another origin gets no CORS grant.
    response = client.post(
        "/v1/chat/completions", data="not json", content_type=JSON,
        headers={**bearer("erin"), "Origin": "https://elsewhere.example"},
    )  # fmt: skip
    assert response.status_code == 503 and response.headers["Retry-After"] == "1"
    assert response.get_json()["error"]["code"] == "overloaded"
    assert "Access-Control-Allow-Origin" not in response.headers
    assert refused_count(client, "streams") - before == 4
    # Checked before the refusal: the caller (401), and a request with an Idempotency-Key,
    # which may be the retry of a stored turn: read and looked up (here: malformed, 400).
    bad_token = client.post("/api/alice/chat", json={"message": "x"},
                            headers={"Authorization": "Bearer nonsense"})  # fmt: skip
    assert_problem(bad_token, 401, "unauthorized")
    keyed = client.post("/api/alice/chat", data='{"message": ', content_type=JSON,
                        headers={"Idempotency-Key": "k-1"})  # fmt: skip
    assert_problem(keyed, 400, "bad_request")
    assert ok(client.get("/api/alice/conversations"))["items"] == []

    full.free()
    for (path, sent, status), code in zip(
        malformed.values(),
        ("bad_request", "unsupported_media_type", "validation_error"),
        strict=True,
    ):  # with room, the same requests are read: their own 4xx
        assert_problem(client.post(path, **sent), status, code)


def test_a_refusal_counts_against_the_rate_limit(make_app):
    """Every request counts (contract §1), refusals too: once the caller's chat budget is
    spent, 429 `rate_limited` comes before the refusal."""
    full = Full(make_app, RATELIMIT_ENABLED=True, RATELIMIT_STORAGE_URI="memory://",
                RATELIMIT_CHAT="3 per minute")  # fmt: skip
    user = f"rl-{uuid.uuid4().hex[:8]}"
    remaining = []
    for _ in range(3):
        response = full.client.post(f"/api/{user}/chat", json={"message": "x"})
        assert_problem(response, 503, "overloaded")
        assert response.headers["Retry-After"] == "1", "the refusal's own, not the window's"
        remaining.append(response.headers["X-RateLimit-Remaining"])
    assert remaining == ["2", "1", "0"]
    spent = full.client.post(f"/api/{user}/chat", json={"message": "x"})
    assert_problem(spent, 429, "rate_limited")
    full.free()


def test_retry_after_grows_while_refusals_last_and_starts_over_once_they_stop(make_app):
    """1 s at first; doubled each time refusals have lasted a whole Retry-After (every client
    refused at one step has come back before the next); at most the max; drawn within ±25 %
    so that clients refused together come back apart; back to 1 s after a second with no
    refusal. The worker's clock is the test's, so each step is exact."""
    full = Full(make_app, OVERLOAD_RETRY_AFTER_SECONDS=1, OVERLOAD_RETRY_AFTER_MAX_SECONDS=8)
    admission = full.app.extensions["chatsvc.turns"].admission
    now = [100.0]
    admission.clock = lambda: now[0]

    def retry_after(at: float) -> int:
        now[0] = at
        response = full.client.post("/api/ra/chat", json={"message": "x"})
        assert_problem(response, 503, "overloaded")
        return int(response.headers["Retry-After"])

    assert [retry_after(t) for t in (100.0, 100.5, 100.99)] == [1, 1, 1]
    assert [retry_after(t) for t in (101.0, 101.9, 102.8, 102.99)] == [2, 2, 2, 2]  # for 1 s
    fours = [retry_after(103.0 + n / 2) for n in range(8)]  # for 2 s more: 4 s ± 25 %
    assert set(fours) <= {3, 4, 5}
    steps = [retry_after(107.0 + n / 100) for n in range(40)]  # for 4 s more: 8, the max
    assert set(steps) <= {6, 7, 8} and len(set(steps)) > 1, "jittered, never past the max"
    sustained = [retry_after(108.0 + n / 2) for n in range(25)]  # refusals go on: the max
    assert set(sustained) <= {6, 7, 8}
    assert retry_after(121.5) == 1, "a second without a refusal: back to the start"
    assert [retry_after(122.0), retry_after(122.5)] == [1, 2]
    full.free()


class Watch:
    """The lag watch's sleep held forever: the test makes each wake-up itself with
    `Admission.observe(late, now)`, so the window's steps are exact, whatever the machine does."""

    def __init__(self) -> None:
        self.never = threading.Event()

    def sleep(self, seconds: float) -> None:
        self.never.wait()


def admission(limit: int = 0, lag_ms: float = 25.0) -> tuple[Any, list[str]]:
    from chatsvc.services.admission import Admission, Metrics

    refusals: list[str] = []
    return Admission(
        limit, lag_ms, 2, Metrics(refused=refusals.append), sleep=Watch().sleep
    ), refusals


def fill(gate: Any, refusals: list[str]) -> list[Any]:
    """Admit turns until the first refusal; the admitted ones' slots."""
    from chatsvc.errors import Overloaded

    slots = []
    while True:
        try:
            slots.append(gate.admit())
        except Overloaded:
            return slots
        if len(slots) == 1:
            slots[0].stream()  # a turn streams: the window applies from now on
        assert len(slots) < 10_000, "never refused"


def test_the_window_takes_a_burst_in_doublings_measured_by_the_watch():
    """Before the loop has been seen on time, a worker takes WINDOW_START turns; each on-time
    wake-up lets it follow the load at twice the turns in flight, never past the limit."""
    from chatsvc.services.admission import WINDOW_START

    gate, refusals = admission(limit=100)
    slots = fill(gate, refusals)
    assert len(slots) == WINDOW_START and refusals == ["window"]
    for expected in (2 * WINDOW_START, 4 * WINDOW_START, 8 * WINDOW_START):
        gate.observe(0.0, now=10.0)  # on time
        slots += fill(gate, refusals)
        assert len(slots) == min(expected, 100)
    assert refusals[-1] == "streams", "the configured limit still holds above the window"


def test_a_lagging_loop_cuts_the_window_once_a_second_then_it_grows_slowly():
    from chatsvc.services.admission import CUT, CUT_EVERY, GROW

    gate, refusals = admission()
    slots = fill(gate, refusals)
    gate.observe(0.0, now=10.0)
    slots += fill(gate, refusals)
    assert len(slots) == 32
    # Late by 100 ms: the smoothed lag passes 25 ms at the second wake-up: cut to 80 % of
    # the 32 in flight, and lag refuses while it lasts.
    gate.observe(0.1, now=11.0)
    assert gate.window == 32
    gate.observe(0.1, now=11.05)
    assert gate.window == pytest.approx(32 * CUT)
    gate.observe(0.1, now=11.05 + CUT_EVERY / 2)  # still late, within CUT_EVERY: no second cut
    assert gate.window == pytest.approx(32 * CUT)
    fill(gate, refusals)
    assert refusals[-1] == "lag"
    for slot in slots[:10]:  # ten turns end: 22 in flight
        slot.release()
    slots = slots[10:]
    now = 11.55  # within CUT_EVERY of the cut: the lag's slow way down cuts nothing more
    for _ in range(7):  # on time again: 58 ms smoothed × 0.75⁷ is under half the threshold
        gate.observe(0.0, now=now)
        now += 0.05
    assert gate.window == pytest.approx(32 * CUT), "the window does not hold turns back: kept"
    slots += fill(gate, refusals)
    assert len(slots) == 26 and refusals[-1] == "window"  # 25.6: the 26th is the last one in
    gate.observe(0.0, now=now)
    assert gate.window == pytest.approx(32 * CUT * GROW + 1)
    # Late again a second after the cut: cut to 80 % of those in flight.
    gate.observe(0.2, now=now + CUT_EVERY)
    gate.observe(0.2, now=now + CUT_EVERY + 0.05)
    assert gate.window == pytest.approx(26 * CUT)
    for slot in slots:
        slot.release()
    assert gate.in_flight == 0 and gate.streaming == 0


def test_without_the_lag_watch_there_is_no_window():
    """OVERLOAD_LAG_MS 0 (development, tests): only MAX_STREAMS_PER_WORKER refuses."""
    gate, refusals = admission(limit=0, lag_ms=0.0)
    slots = [gate.admit() for _ in range(1000)]
    slots[0].stream()
    gate.observe(1.0, now=10.0)
    slots.append(gate.admit())
    assert refusals == [] and gate.in_flight == 1001


def test_the_window_refuses_nothing_while_no_turn_streams():
    """Turns answered as one JSON body have no cadence to keep: a burst of them queues."""
    gate, refusals = admission()
    slots = [gate.admit() for _ in range(200)]
    assert refusals == [] and len(slots) == 200


def test_metrics_name_every_refusal_and_the_window(make_app):
    text = make_app().test_client().get("/metrics").get_data(as_text=True)
    for reason in ("streams", "lag", "window"):
        assert sample(text, "chatsvc_turns_refused_total", reason=reason) >= 0
    assert "# TYPE chatsvc_admission_window gauge" in text


def test_admission_settings_are_checked_at_start(make_app):
    from chatsvc.config import ConfigError

    for bad in ({"MAX_STREAMS_PER_WORKER": -1}, {"OVERLOAD_LAG_MS": -5.0},
                {"OVERLOAD_RETRY_AFTER_SECONDS": 0},
                {"OVERLOAD_RETRY_AFTER_SECONDS": 5, "OVERLOAD_RETRY_AFTER_MAX_SECONDS": 4},
                {"OVERLOAD_RETRY_AFTER_MAX_SECONDS": 601}):  # fmt: skip
        with pytest.raises(ConfigError):
            make_app(bad)


def test_the_document_names_overloaded_on_every_turn_route(make_app):
    paths = make_app().test_client().get("/openapi.json").get_json()["paths"]
    routes = ["/api/{user_id}/chat", "/api/chat", "/api/chat/{session_id}",
              "/v1/chat/completions", "/v1/responses"]  # fmt: skip
    for route in routes:
        unavailable = paths[route]["post"]["responses"]["503"]
        assert "overloaded" in unavailable["description"], route
        assert "Retry-After" in unavailable["headers"], route


# On gunicorn ------------------------------------------------------------------------------


def model_environ(fake_llm: Any, database_url: str, **more: str) -> dict[str, str]:
    """One gevent worker on the fake model; on PostgreSQL, turn events and cancels on Redis."""
    environ = {
        "AGENT_PROVIDER": "openai", "OPENAI_BASE_URL": fake_llm.url, "OPENAI_MODEL": "fake",
        "OPENAI_API_KEY": "sk-test", "AGENT_TIMEOUT_SECONDS": "30", "AGENT_MAX_RETRIES": "0",
        "RATELIMIT_ENABLED": "false", "WEB_CONCURRENCY": "1", "JWT_SECRET": SECRET,
        "GUNICORN_GRACEFUL_TIMEOUT": "3",
        **{name: str(value) for name, value in STEADY.items()}, **more,
    }  # fmt: skip
    if database_url.startswith("postgresql"):
        environ["EVENTS_REDIS_URL"] = require_service("TEST_REDIS_URL", "Redis")
    return environ


def post(url: str, path: str, body: dict[str, Any], **headers: str) -> tuple[Any, float]:
    """A POST over a real socket: (status, headers, body as text), and how long it took."""
    parts = urlsplit(url)
    connection = http.client.HTTPConnection(parts.hostname, parts.port, timeout=15)
    started = time.monotonic()
    connection.request("POST", path, json.dumps(body), {"Content-Type": "application/json",
                                                        **headers})  # fmt: skip
    response = connection.getresponse()
    text = response.read().decode()
    took = time.monotonic() - started
    connection.close()
    return (response.status, response.headers, text), took


def metrics(url: str) -> str:
    parts = urlsplit(url)
    connection = http.client.HTTPConnection(parts.hostname, parts.port, timeout=15)
    connection.request("GET", "/metrics")
    text = connection.getresponse().read().decode()
    connection.close()
    return text


def stream(url: str, path: str, body: dict[str, Any], **headers: str) -> sse.LiveStream:
    parts = urlsplit(url)
    return sse.LiveStream(parts.hostname, parts.port, path, body, **headers)


def test_on_gunicorn_two_streams_are_admitted_and_the_third_turn_is_refused(
    gunicorn, fake_llm, database_url
):
    server = gunicorn(**model_environ(fake_llm, database_url, MAX_STREAMS_PER_WORKER="2"))
    fake_llm.script(say(STORY, chunk_delay=0.05), say(STORY, chunk_delay=0.05))
    first = stream(server.url, "/api/ov-1/chat", {"message": "story one"})
    second = stream(server.url, "/api/ov-2/chat", {"message": "story two"})
    first.until("delta")
    second.until("delta")

    key = {"Idempotency-Key": "ov-3-key"}
    (status, headers, text), took = post(
        server.url, "/api/ov-3/chat", {"message": "story three"}, **key, **SSE
    )
    assert status == 503 and took < AT_ONCE, (status, took, text)
    assert headers["Retry-After"] == "2" and json.loads(text)["code"] == "overloaded"
    assert headers["Content-Type"] == "application/problem+json"
    body = {"model": "todo", "stream": True, "messages": [{"role": "user", "content": "hi"}]}
    (status, headers, text), took = post(server.url, "/v1/chat/completions", body, **bearer("ov-4"))
    assert status == 503 and took < AT_ONCE, (status, took, text)
    assert json.loads(text)["error"]["code"] == "overloaded" and headers["Retry-After"] == "2"
    ws = websocket.create_connection(
        server.url.replace("http://", "ws://", 1) + "/api/ov-5/chat/ws", timeout=10
    )
    try:
        started = time.monotonic()
        ws.send(json.dumps({"type": "message", "message": "over a socket"}))
        frame = json.loads(ws.recv())
        assert time.monotonic() - started < AT_ONCE
        assert frame["event"] == "error" and frame["data"]["code"] == "overloaded"
        assert frame["data"]["status"] == 503 and frame["data"]["retry_after"] == 2
        ws.send(json.dumps({"type": "message"}))  # refused before the frame is validated
        frame = json.loads(ws.recv())
        assert frame["event"] == "error" and frame["data"]["code"] == "overloaded"
    finally:
        ws.close()
    scraped = metrics(server.url)
    assert sample(scraped, "chatsvc_turns_refused_total", reason="streams") == 4
    assert sample(scraped, "chatsvc_turns_in_flight") == 2
    assert len(fake_llm.requests) == 2, "a refused turn never reaches the model"

    for admitted in (first, second):
        events = admitted.rest()
        admitted.close()
        assert events[-1].name == "done"
        assert sse.text_of(events) == STORY == events[-1].data["response"]

    # The refused request, retried with its key: admitted and run (not a replay).
    wait_for(lambda: sample(metrics(server.url), "chatsvc_turns_in_flight") == 0)
    retried = stream(server.url, "/api/ov-3/chat", {"message": "story three"}, **key)
    assert retried.response.status == 200
    assert retried.response.getheader("Idempotent-Replayed") is None
    events = retried.rest()
    retried.close()
    assert events[-1].name == "done" and events[-1].data["response"] == "fake: story three"
    parts = urlsplit(server.url)
    connection = http.client.HTTPConnection(parts.hostname, parts.port, timeout=15)
    connection.request("GET", "/api/ov-3/conversations")
    listed = json.loads(connection.getresponse().read())["items"]
    connection.close()
    assert len(listed) == 1 and listed[0]["message_count"] == 2, "the refusal stored nothing"


def test_on_gunicorn_a_lagging_worker_refuses_new_turns_while_it_streams(
    gunicorn, fake_llm, database_url
):
    server = gunicorn(**model_environ(fake_llm, database_url, OVERLOAD_LAG_MS="0.001"))
    fake_llm.script(say(STORY, chunk_delay=0.05))
    streaming = stream(server.url, "/api/lag-1/chat", {"message": "story"})
    meta = streaming.until("delta")[0]
    convo = meta.data["conversation_id"]

    def attempt() -> Any:
        (status, headers, text), _ = post(
            server.url, "/api/lag-1/chat", {"message": "next", "conversation_id": convo}
        )
        assert status in (409, 503), text
        return status == 503 and (headers, json.loads(text))

    headers, problem = wait_for(attempt, what="the lag watch to refuse a turn")
    assert problem["code"] == "overloaded" and headers["Retry-After"] == "2"
    assert sample(metrics(server.url), "chatsvc_turns_refused_total", reason="lag") >= 1

    events = streaming.rest()
    streaming.close()
    assert sse.text_of(events) == STORY, "the admitted stream completes"
    wait_for(lambda: sample(metrics(server.url), "chatsvc_turns_in_flight") == 0)
    (status, _, text), _ = post(server.url, "/api/lag-2/chat", {"message": "json"})
    assert status == 200, "nothing streams: admitted whatever the lag"
    assert json.loads(text)["response"] == "fake: json"
