"""Faults of the service's dependencies — the LLM provider, the database, the rate limiter's
storage: the documented problem in bounded time, nothing the user sent lost, nothing
duplicated, and the service whole again by itself once the dependency is back."""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
import uuid
from typing import Any

import pytest
import redis
from conftest import require_service
from fakellm import drop, endless, fail, garbage, slow
from helpers import assert_problem, history, ok, sse_events, wait_for
from sqlalchemy.engine import make_url
from tcpproxy import TcpProxy

TIMEOUT = 1.0  # AGENT_TIMEOUT_SECONDS of these tests
SSE = {"Accept": "text/event-stream"}


def keyed(key: str, **headers: str) -> dict[str, str]:
    return {"Idempotency-Key": key, **headers}


def post_chat(client, message: str, conversation_id: str, **headers: str):
    body = {"message": message, "conversation_id": conversation_id}
    return client.post("/api/alice/chat", json=body, headers=headers)


def leaks(raw: str, *secrets: str) -> list[str]:
    """Internals a response must never show."""
    internals = ("Traceback", "psycopg", "sqlalchemy", "SELECT", "INSERT", *secrets)
    return [text for text in internals if text in raw]


# The LLM provider -------------------------------------------------------------------------

LLM_FAULTS = [
    ("timeout", [slow(5)], 504, "upstream_timeout"),
    ("429", [fail(429, retry_after="3")], 503, "upstream_busy"),
    ("500", [fail(500)], 502, "upstream_error"),
    ("garbage", [garbage()], 502, "upstream_error"),
    ("drop", [drop()], 502, "upstream_error"),
]


@pytest.mark.parametrize(
    ("script", "status", "code"),
    [case[1:] for case in LLM_FAULTS],
    ids=[case[0] for case in LLM_FAULTS],
)
def test_a_provider_fault_then_a_retry_with_the_same_key_completes_the_turn_once(
    llm_app, fake_llm, script, status, code
):
    client = llm_app(AGENT_TIMEOUT_SECONDS=TIMEOUT).test_client()
    conversation = ok(post_chat(client, "first", None))["conversation_id"]
    fake_llm.script(*script)  # a JSON turn asks for one completion: one fault fails it
    started = time.monotonic()
    failed = post_chat(client, "second", conversation, **keyed("k-1"))
    assert time.monotonic() - started < TIMEOUT + 2, "answered within the configured time"
    assert_problem(failed, status, code)
    stored = history(client, "alice", conversation)
    assert [(m["role"], m["content"]) for m in stored if m["role"] == "user"] == [
        ("user", "first"),
        ("user", "second"),
    ]
    assert stored[-1]["status"] == "failed" and stored[-1]["error_code"] == code

    retried = post_chat(client, "second", conversation, **keyed("k-1"))
    body = ok(retried)
    assert "Idempotent-Replayed" not in retried.headers, "the agent ran again"
    assert body["response"] == "fake: second"
    after = history(client, "alice", conversation)
    assert [m["content"] for m in after if m["role"] == "user"] == ["first", "second"]
    assert [m["status"] for m in after] == [
        "completed", "completed", "completed", "failed", "completed"
    ]  # fmt: skip
    assert after[-1]["id"] == body["message_id"]
    replay = post_chat(client, "second", conversation, **keyed("k-1"))
    assert replay.headers["Idempotent-Replayed"] == "true" and replay.json == body
    detail = ok(client.get(f"/api/alice/conversations/{conversation}"))
    assert detail["message_count"] == 5


@pytest.mark.parametrize(
    ("fault", "code"),
    [(drop(midstream=True), "upstream_error"), (endless(), "upstream_timeout")],
    ids=["drop-midstream", "endless"],
)
def test_a_stream_cut_by_the_provider_then_a_streamed_retry_with_the_same_key(
    llm_app, fake_llm, fault, code
):
    client = llm_app(AGENT_TIMEOUT_SECONDS=TIMEOUT).test_client()
    conversation = ok(post_chat(client, "first", None))["conversation_id"]
    fake_llm.script(fault)
    started = time.monotonic()
    cut = post_chat(client, "tell me more", conversation, **keyed("k-2", **SSE))
    events = sse_events(cut)
    assert time.monotonic() - started < TIMEOUT + 2, "answered within the configured time"
    assert events[-1][0] == "error" and events[-1][2]["code"] == code
    said = "".join(data["text"] for name, _, data in events if name == "delta")
    stored = history(client, "alice", conversation)[-2:]
    assert [(m["role"], m["content"], m["status"]) for m in stored] == [
        ("user", "tell me more", "completed"),
        ("assistant", said, "failed"),
    ], "the user message and what was said so far are kept"

    retried = sse_events(post_chat(client, "tell me more", conversation, **keyed("k-2", **SSE)))
    assert [name for name, _, _ in retried][0] == "meta" and retried[-1][0] == "done"
    assert retried[-1][2]["response"] == "fake: tell me more"
    users = [m for m in history(client, "alice", conversation) if m["role"] == "user"]
    assert [m["content"] for m in users] == ["first", "tell me more"]


# The database -----------------------------------------------------------------------------

POSTGRES_ONLY = pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)
DB_FAULT_SETTINGS = {"DB_CONNECT_TIMEOUT": 1, "DB_POOL_TIMEOUT": 1.0, "DB_POOL_SIZE": 2}


@pytest.fixture
def proxied(make_app, database_url):
    """PostgreSQL behind a proxy the test cuts and restores (the shared server stays up).
    The first app made goes direct, so the tables are still emptied after the test."""
    make_app()
    url = make_url(database_url)
    proxy = TcpProxy(url.port or 5432, url.host or "127.0.0.1")
    yield proxy, url.set(port=proxy.port).render_as_string(hide_password=False)
    proxy.close()


OUTAGE_PROBES = [
    ("get", "/health", None),
    ("post", "/api/alice/chat", {"message": "hello?"}),
    ("post", "/api/chat", {"message": "hello?"}),
    ("get", "/api/alice/conversations", None),
    ("get", "/api/alice/tasks", None),
    ("post", "/api/alice/tasks", {"title": "t"}),
    ("get", "/api/documents", None),
]


@POSTGRES_ONLY
def test_a_database_outage_is_503_at_once_and_heals_itself(make_app, proxied):
    proxy, url = proxied
    client = make_app({"DATABASE_URL": url, **DB_FAULT_SETTINGS}).test_client()
    conversation = ok(post_chat(client, "before the outage", None))["conversation_id"]
    proxy.cut()
    for method, path, body in [
        *OUTAGE_PROBES,
        ("get", f"/api/alice/conversations/{conversation}", None),
        ("post", "/api/alice/chat", {"message": "lost?", "conversation_id": conversation}),
    ]:
        started = time.monotonic()
        response = getattr(client, method)(path, json=body)
        assert time.monotonic() - started < 3, f"{method} {path} answered in bounded time"
        problem = assert_problem(response, 503, "unavailable")
        assert not leaks(response.get_data(as_text=True), str(proxy.port), "5432")
        if path == "/health":
            assert problem["checks"] == {"database": "unavailable"}
    assert ok(client.get("/health/live"))["status"] == "ok"

    proxy.restore()  # the same port: the app is not restarted
    assert ok(client.get("/health"))["checks"] == {"database": "ok"}
    body = ok(post_chat(client, "after the outage", conversation))
    assert body["status"] == "completed"
    messages = history(client, "alice", conversation)
    assert [m["content"] for m in messages if m["role"] == "user"] == [
        "before the outage",
        "after the outage",
    ], "a refused request stored nothing"


@POSTGRES_ONLY
def test_a_database_that_accepts_but_never_answers_is_503_in_bounded_time(make_app, proxied):
    """A black hole (e.g. a network partition) rather than a refused connection: the connect
    timeout bounds the wait."""
    proxy, url = proxied
    client = make_app({"DATABASE_URL": url, **DB_FAULT_SETTINGS}).test_client()
    proxy.cut()
    with _black_hole(proxy.port):
        started = time.monotonic()
        assert_problem(client.get("/health"), 503, "unavailable")
        assert_problem(post_chat(client, "anyone there?", None), 503, "unavailable")
        assert time.monotonic() - started < 6
    proxy.restore()
    ok(client.get("/health"))


class _black_hole:
    """Listen on `port` and accept connections, but never answer."""

    def __init__(self, port: int) -> None:
        self.listener = socket.socket()
        self.listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.listener.bind(("127.0.0.1", port))
        self.listener.listen(64)

    def __enter__(self) -> _black_hole:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.listener.close()


@POSTGRES_ONLY
def test_the_database_lost_while_the_model_answers_keeps_the_message_and_heals(
    llm_app, fake_llm, proxied
):
    proxy, url = proxied
    app = llm_app(DATABASE_URL=url, TURN_STALE_SECONDS=1, AGENT_TIMEOUT_SECONDS=5.0,
                  **DB_FAULT_SETTINGS)  # fmt: skip
    client = app.test_client()
    conversation = ok(post_chat(client, "first", None))["conversation_id"]
    fake_llm.script(slow(1.0, "an answer with nowhere to go"))
    outcome: dict[str, Any] = {}
    turn = threading.Thread(
        target=lambda: outcome.update(
            response=post_chat(app.test_client(), "keep me", conversation, **keyed("k-db"))
        )
    )
    turn.start()
    wait_for(lambda: len(fake_llm.requests) == 2, what="unit of work 1 and the model call")
    proxy.cut()  # between unit of work 1 (committed) and unit of work 2
    turn.join(timeout=10)
    assert not turn.is_alive()
    response = outcome["response"]
    assert_problem(response, 503, "unavailable")
    assert "nowhere to go" not in response.get_data(as_text=True)

    proxy.restore()
    stored = history(client, "alice", conversation)
    assert [(m["role"], m["content"]) for m in stored][-2:] == [
        ("user", "keep me"),
        ("assistant", ""),
    ]
    assert stored[-1]["status"] == "pending"
    # Until the turn is stale (TURN_STALE_SECONDS) a retry is told the first one still runs;
    # then the retry fails the stuck turn and runs it again for the stored message.
    deadline = time.monotonic() + 10
    while (
        retried := post_chat(client, "keep me", conversation, **keyed("k-db"))
    ).status_code == 409:
        assert retried.json["code"] == "turn_in_progress"
        assert time.monotonic() < deadline, "the stuck turn never went stale"
        time.sleep(0.05)
    assert ok(retried)["response"] == "fake: keep me"
    after = history(client, "alice", conversation)
    assert [m["content"] for m in after if m["role"] == "user"] == ["first", "keep me"]
    assert [(m["status"], m["error_code"]) for m in after[2:]][1:] == [
        ("failed", "interrupted"),
        ("completed", None),
    ]
    ok(post_chat(client, "and now?", conversation))


# The rate limiter's storage ---------------------------------------------------------------


@pytest.fixture
def redis_proxy():
    url = make_url(require_service("TEST_REDIS_URL", "Redis"))
    proxy = TcpProxy(url.port or 6379, url.host or "127.0.0.1")
    yield proxy, url.set(port=proxy.port).render_as_string(hide_password=False)
    proxy.close()


def metric(client, name: str) -> float:
    for line in client.get("/metrics").get_data(as_text=True).splitlines():
        if line.startswith(name + " "):
            return float(line.split()[-1])
    return 0.0


def test_limiter_storage_lost_and_back_fails_open_logs_counts_and_recovers(make_app, redis_proxy):
    proxy, storage = redis_proxy
    client = make_app(
        {"RATELIMIT_ENABLED": True, "RATELIMIT_STORAGE_URI": storage,
         "RATELIMIT_DEFAULT": "100 per minute"}
    ).test_client()  # fmt: skip
    user = f"edge-{uuid.uuid4().hex[:10]}"
    path = f"/api/{user}/tasks"
    errors = "chatsvc_rate_limit_storage_errors_total"
    before = metric(client, errors)
    first = ok(client.get(path))
    assert first == {"items": [], "next_cursor": None}
    records: list[logging.LogRecord] = []
    capture = _Records(records)
    logging.getLogger("flask-limiter").addHandler(capture)
    try:
        proxy.cut()
        statuses = [client.get(path).status_code for _ in range(3)]
    finally:
        logging.getLogger("flask-limiter").removeHandler(capture)
    assert statuses == [200, 200, 200], "fails open"
    assert any("unreachable" in r.getMessage() for r in records), "and says so"
    assert metric(client, errors) >= before + 1, "and counts it"

    proxy.restore()
    later = f"edge-{uuid.uuid4().hex[:10]}"  # counted in Redis again once the limiter checks
    wait_for(
        lambda: client.get(f"/api/{later}/tasks").status_code == 200 and _counted_in_redis(later),
        timeout=15,
        what="the limiter to go back to Redis",
    )


class _Records(logging.Handler):
    def __init__(self, records: list[logging.LogRecord]) -> None:
        super().__init__()
        self.records = records

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


def _counted_in_redis(user: str) -> bool:
    connection = redis.Redis.from_url(os.environ["TEST_REDIS_URL"])
    return any(True for _ in connection.scan_iter(match=f"LIMITS:*{user}*"))


@POSTGRES_ONLY
def test_the_database_lost_during_a_stream_is_a_503_error_event(llm_app, fake_llm, proxied):
    """Issue 23 (3): the database goes away while a streamed turn runs: its `error` event is the
    same 503 `unavailable` a JSON request gets — never 500 — and the user's message is kept."""
    proxy, url = proxied
    # the turn's ending waits 1 s (not 10) for its event log (the database here) to come back
    app = llm_app(
        DATABASE_URL=url, AGENT_TIMEOUT_SECONDS=5.0, TURN_EVENTS_STORE_WAIT_SECONDS=1.0,
        **DB_FAULT_SETTINGS,
    )  # fmt: skip
    client = app.test_client()
    conversation = ok(post_chat(client, "first", None))["conversation_id"]
    fake_llm.script(slow(1.0, "an answer with nowhere to go"))
    outcome: dict[str, Any] = {}

    def stream() -> None:
        outcome["response"] = app.test_client().post(
            "/api/alice/chat",
            json={"message": "keep me", "conversation_id": conversation},
            headers={"Accept": "text/event-stream", **keyed("k-stream")},
        )
        outcome["events"] = sse_events(outcome["response"])

    turn = threading.Thread(target=stream)
    turn.start()
    wait_for(lambda: len(fake_llm.requests) == 2, what="unit of work 1 and the model call")
    proxy.cut()  # unit of work 2 will find no database
    turn.join(timeout=15)
    assert not turn.is_alive()
    name, _, data = outcome["events"][-1]
    assert name == "error", outcome["events"]
    assert (data["status"], data["code"]) == (503, "unavailable")
    proxy.restore()
    stored = history(client, "alice", conversation)
    assert [(m["role"], m["content"]) for m in stored][-2] == ("user", "keep me")
