"""Turns outlive their connection (contract §5, issue 17): every event of a streamed turn is
logged with its per-turn id; a client that drops the stream resumes it with Last-Event-ID on
any worker or instance and gets every remaining event once, in order. With the database log
(SQLite and PostgreSQL) and with Redis Streams (TEST_REDIS_URL)."""

from __future__ import annotations

import http.client
import json
import os
import signal
import socket
import threading
import time
import uuid
from datetime import timedelta
from typing import Any
from urllib.parse import urlsplit
from urllib.request import urlopen

import pytest
import sse
from conftest import Server, require_service
from fakellm import FakeLLM, endless, say
from helpers import assert_problem, children, get, ok, wait_for
from sqlalchemy import update

from chatsvc.db import database, utcnow
from chatsvc.models import LoggedEvent

STREAM = {"Accept": "text/event-stream"}
# About 40 chunks, one every 50 ms: a turn of two seconds.
LONG_ANSWER = " ".join(f"word{n}" for n in range(40)) + "."


@pytest.fixture(params=["database", "redis"])
def log_config(request: pytest.FixtureRequest) -> dict[str, str]:
    """Where the event log lives: the database (the default), or Redis Streams."""
    if request.param == "redis":
        return {"EVENTS_REDIS_URL": require_service("TEST_REDIS_URL", "Redis")}
    return {}


@pytest.fixture(params=["database", "redis", "memory"])
def any_log(request: pytest.FixtureRequest) -> dict[str, Any]:
    """Every store, the in-process one (TURN_EVENTS_STORE=memory) included."""
    if request.param == "redis":
        return {"EVENTS_REDIS_URL": require_service("TEST_REDIS_URL", "Redis")}
    return {"TURN_EVENTS_STORE": request.param}


@pytest.fixture
def fake_llm(shared_llm: FakeLLM) -> FakeLLM:
    """The module's fake model, its script and record fresh for each test."""
    shared_llm.reset()
    return shared_llm


@pytest.fixture(scope="module", params=["database", "redis"])
def instances(
    request: pytest.FixtureRequest, shared_gunicorn: Any, shared_llm: FakeLLM
) -> tuple[Server, Server]:
    """Two instances (one worker each) sharing the database and the event log (the database,
    or Redis Streams), with a short turn lease: a killed worker's turn is stale in 2 s. One
    pair for the module's tests of each log (starting them per test cost most of its time);
    each test has its own user."""
    log = {}
    if request.param == "redis":
        log["EVENTS_REDIS_URL"] = require_service("TEST_REDIS_URL", "Redis")
    environ = {"WEB_CONCURRENCY": "1", **llm(shared_llm, TURN_LEASE_SECONDS="2", **log)}
    first = shared_gunicorn(instance="first", **environ)
    return first, shared_gunicorn(instance="second", **environ)


def llm(fake_llm: Any, **more: str) -> dict[str, str]:
    return {
        "AGENT_PROVIDER": "openai", "OPENAI_BASE_URL": fake_llm.url, "OPENAI_MODEL": "fake-model",
        "OPENAI_API_KEY": "sk-test", "AGENT_TIMEOUT_SECONDS": "30", "AGENT_MAX_RETRIES": "0",
        "RATELIMIT_ENABLED": "false", "SSE_PING_SECONDS": "0.5", **more,
    }  # fmt: skip


class Stream:
    """An SSE response over a real socket (a streamed chat POST, or a GET of …/events), read
    event by event; `drop()` hangs up."""

    def __init__(
        self, base: str, path: str, body: dict[str, Any] | None = None, **headers: str
    ) -> None:
        parts = urlsplit(base)
        self.connection = http.client.HTTPConnection(parts.hostname, parts.port, timeout=30)
        if body is None:
            self.connection.request("GET", path, headers=headers)
        else:
            headers = {**STREAM, "Content-Type": "application/json", **headers}
            self.connection.request("POST", path, body=json.dumps(body), headers=headers)
        self.response = self.connection.getresponse()
        assert self.response.status == 200, self.response.read()
        self.events: list[sse.Event] = []

    def next(self) -> bool:
        """Read one more event (False: the stream is over)."""
        block = ""
        while True:
            line = self.response.readline().decode()
            if not line:
                return False
            if line != "\n":
                block += line
            elif block.startswith("event:"):
                self.events += sse.parse(block + "\n")[0]
                return True
            else:
                block = ""  # a ping

    def until(self, deltas: int) -> list[sse.Event]:
        while sum(e.name == "delta" for e in self.events) < deltas:
            assert self.next(), "the stream ended early"
        return self.events

    def to_end(self) -> list[sse.Event]:
        while self.next():
            pass
        return self.events

    def drop(self) -> None:
        self.connection.sock.shutdown(socket.SHUT_RDWR)
        self.connection.close()


def events_of(url: str, timeout: float = 30, **headers: str) -> tuple[list[sse.Event], float]:
    """Every event of a GET …/events response read to its end, and how long that took."""
    parts = urlsplit(url)
    started = time.monotonic()
    connection = http.client.HTTPConnection(parts.hostname, parts.port, timeout=timeout)
    connection.request("GET", parts.path + (f"?{parts.query}" if parts.query else ""),
                       headers=headers)  # fmt: skip
    response = connection.getresponse()
    assert response.status == 200, response.read()
    assert response.getheader("Content-Type").startswith("text/event-stream")
    text = response.read().decode()
    connection.close()
    return sse.parse(text)[0], time.monotonic() - started


def as_tuples(events: list[sse.Event]) -> list[tuple[str, int, dict[str, Any]]]:
    return [(e.name, e.id, e.data) for e in events]


def assert_numbered(events: list[sse.Event], first: int = 1) -> None:
    assert [e.id for e in events] == list(range(first, first + len(events))), "once, in order"


def someone() -> str:
    return "resume-" + uuid.uuid4().hex[:8]


# A dropped stream resumes elsewhere ---------------------------------------------------------


def test_a_dropped_stream_resumes_on_another_instance_with_every_remaining_event_once(
    instances, fake_llm
):
    first, other = instances
    user = someone()
    fake_llm.script(say(LONG_ANSWER, chunk_delay=0.05))
    stream = Stream(first.url, f"/api/{user}/chat", {"message": "tell me a long story"})
    seen = stream.until(deltas=3)
    stream.drop()
    meta = seen[0]
    assert meta.name == "meta" and meta.id == 1
    assert_numbered(seen)
    message = (
        f"/api/{user}/conversations/{meta.data['conversation_id']}"
        f"/messages/{meta.data['message_id']}"
    )

    # The other instance: the turn runs on the first one (continue: the client left, the turn
    # goes on); the rest of it arrives live, each event once, in order.
    rest, _ = events_of(other.url + message + "/events", **{"Last-Event-ID": str(seen[-1].id)})
    assert_numbered(rest, seen[-1].id + 1)
    assert [e.name for e in rest].count("done") == 1 and rest[-1].name == "done"
    done = rest[-1].data
    assert done["status"] == "completed"
    assert sse.text_of(seen) + sse.text_of(rest) == done["response"] == LONG_ANSWER
    stored = _get_json(other.url + message)
    assert (stored["status"], stored["content"]) == ("completed", LONG_ANSWER)

    # Any later read, on either instance, from the start: the same ids and bodies.
    again, _ = events_of(first.url + message + "/events")
    assert as_tuples(again) == as_tuples(seen + rest)
    tail, _ = events_of(other.url + message + f"/events?last_event_id={rest[0].id}")
    assert as_tuples(tail) == as_tuples(rest[1:])


def _get_json(url: str) -> dict[str, Any]:
    with urlopen(url, timeout=10) as response:
        return json.loads(response.read())


def test_a_client_that_leaves_does_not_stop_the_turn_unless_told_to(gunicorn, fake_llm):
    """TURN_ON_DISCONNECT=cancel: the old behaviour, the text so far stored `cancelled`; the
    log ends with that `done`."""
    server = gunicorn(WEB_CONCURRENCY="1", **llm(fake_llm, TURN_ON_DISCONNECT="cancel"))
    user = someone()
    fake_llm.script(endless(chunk_delay=0.02))
    stream = Stream(server.url, f"/api/{user}/chat", {"message": "go on forever"})
    seen = stream.until(deltas=3)
    stream.drop()
    meta = seen[0].data
    message = f"/api/{user}/conversations/{meta['conversation_id']}/messages/{meta['message_id']}"
    rest, took = events_of(server.url + message + "/events", **{"Last-Event-ID": str(seen[-1].id)})
    assert took < 10
    assert_numbered(rest, seen[-1].id + 1)
    done = rest[-1].data
    assert rest[-1].name == "done" and done["status"] == "cancelled"
    assert done["response"] == sse.text_of(seen) + sse.text_of(rest)
    assert done["response"].startswith("and on and on")
    stored = _get_json(server.url + message)
    assert (stored["status"], stored["content"]) == ("cancelled", done["response"])


# A finished turn, an expired log -------------------------------------------------------------


def stream_turn(client: Any, path: str, body: dict[str, Any]) -> list[sse.Event]:
    response = client.post(path, json=body, headers=STREAM)
    assert response.status_code == 200
    return sse.parse(response.get_data(as_text=True))[0]


def read_events(client: Any, path: str, **headers: str) -> list[sse.Event]:
    response = client.get(path, headers=headers)
    assert response.status_code == 200, response.get_data(as_text=True)
    assert response.mimetype == "text/event-stream"
    assert response.headers["Cache-Control"] == "no-cache"
    return sse.parse(response.get_data(as_text=True))[0]


def test_a_finished_turn_replays_the_events_its_stream_sent(make_app, any_log):
    app = make_app(any_log)
    client = app.test_client()
    user = someone()
    sent = stream_turn(client, f"/api/{user}/chat", {"message": "add a task to buy milk"})
    assert_numbered(sent)
    assert [e.name for e in sent][-2:] == ["tool_call", "done"] or sent[-1].name == "done"
    done = sent[-1].data
    path = f"/api/{user}/conversations/{done['conversation_id']}/messages/{done['message_id']}"

    assert as_tuples(read_events(client, path + "/events")) == as_tuples(sent)
    assert as_tuples(read_events(client, path + "/events", **{"Last-Event-ID": "2"})) == (
        as_tuples(sent[2:])
    )
    assert as_tuples(read_events(client, path + "/events?last_event_id=3")) == as_tuples(sent[3:])
    # The header wins over the query (a browser's EventSource sends it when it reconnects).
    assert as_tuples(
        read_events(client, path + "/events?last_event_id=1", **{"Last-Event-ID": "4"})
    ) == as_tuples(sent[4:])
    # Read up to its `done`: nothing more, and the stream ends.
    assert read_events(client, path + "/events", **{"Last-Event-ID": str(sent[-1].id)}) == []

    # Once stored, the same from the store (not this process's memory of the turn).
    events = app.extensions["chatsvc.turns"].events
    wait_for(lambda: events.flush() and events.store.read(done["message_id"], 0), 5, "storage")
    assert [(e.name, e.id) for e in events.store.read(done["message_id"], 0)] == [
        (e.name, e.id) for e in sent
    ]
    assert ok(client.get(path))["status"] == "completed"
    if "EVENTS_REDIS_URL" in any_log:  # capped, and expiring after TURN_EVENTS_TTL_SECONDS
        import redis

        key = "chatsvc:turn-events:" + done["message_id"]
        connection = redis.Redis.from_url(any_log["EVENTS_REDIS_URL"])
        assert 3500 < connection.ttl(key) <= 3600
        assert 1 <= connection.xlen(key) <= len(sent)  # runs of events stored together
        connection.close()


def test_a_session_turn_resumes_on_the_session_route(make_app, log_config):
    client = make_app(log_config).test_client()
    sent = stream_turn(client, "/api/chat", {"message": "How do I configure the rate limit?"})
    session, message = sent[0].data["session_id"], sent[0].data["message_id"]
    path = f"/api/session/{session}/messages/{message}"
    assert as_tuples(read_events(client, path + "/events", **{"Last-Event-ID": "1"})) == (
        as_tuples(sent[1:])
    )
    stored = ok(client.get(path))
    assert (stored["id"], stored["status"], stored["content"]) == (
        message, "completed", sent[-1].data["response"]
    )  # fmt: skip
    assert_problem(client.get(f"/api/session/{uuid.uuid4()}/messages/{message}/events"), 404,
                   "not_found")  # fmt: skip


def test_an_expired_log_ends_with_one_done_made_from_the_stored_message(make_app, log_config):
    app = make_app({"TURN_EVENTS_TTL_SECONDS": 1, **log_config})
    client = app.test_client()
    user = someone()
    sent = stream_turn(client, f"/api/{user}/chat", {"message": "hello there"})
    done = sent[-1].data
    events = app.extensions["chatsvc.turns"].events
    wait_for(lambda: events.flush() and events.store.read(done["message_id"], 0), 5, "storage")
    if log_config:  # Redis expires the stream itself
        wait_for(lambda: not events.store.read(done["message_id"], 0), 5, "Redis to expire it")
    else:
        _age_events(app, done["message_id"], seconds=10)
        result = app.test_cli_runner().invoke(args=["sessions", "cleanup"])
        assert result.exit_code == 0, result.output
        assert "expired turn events" in result.output
        assert not events.store.read(done["message_id"], 0)
    path = f"/api/{user}/conversations/{done['conversation_id']}/messages/{done['message_id']}"
    replay = read_events(client, path + "/events", **{"Last-Event-ID": "2"})
    assert [(e.name, e.id) for e in replay] == [("done", 3)]
    assert replay[0].data["response"] == done["response"]
    assert replay[0].data["message_id"] == done["message_id"]
    assert replay[0].data["status"] == "completed"


def _age_events(app: Any, message_id: str, seconds: float) -> None:
    table = LoggedEvent.__table__
    with database(app).transaction() as session:
        session.execute(
            update(table)
            .where(table.c.message_id == message_id)
            .values(created_at=utcnow() - timedelta(seconds=seconds))
        )


# A worker killed mid-turn --------------------------------------------------------------------


def test_a_killed_worker_s_turn_ends_with_error_for_every_reader(instances, fake_llm):
    """A reader following from another instance when the worker dies, and one that comes back
    after: both get the `error` (interrupted) once the turn is stale, never hang."""
    running, other = instances
    user = someone()
    fake_llm.script(endless(chunk_delay=0.05))
    stream = Stream(running.url, f"/api/{user}/chat", {"message": "crash while talking"})
    seen = stream.until(deltas=3)
    meta = seen[0].data
    message = f"/api/{user}/conversations/{meta['conversation_id']}/messages/{meta['message_id']}"
    follower = Stream(other.url, message + "/events", **{"Last-Event-ID": str(seen[-1].id)})
    follower.until(deltas=1)  # it follows the live turn from the other instance
    watching = threading.Thread(target=follower.to_end)
    watching.start()
    (killed,) = children(running.process.pid)
    os.kill(killed, signal.SIGKILL)
    stream.drop()
    watching.join(timeout=30)
    assert not watching.is_alive(), "the follower hung"
    followed = follower.events
    assert_numbered(followed, seen[-1].id + 1)
    assert [e.name for e in followed].count("error") == 1 and followed[-1].name == "error"
    error = followed[-1].data
    assert (error["status"], error["code"]) == (503, "interrupted")
    assert all(e.name == "delta" for e in followed[:-1])

    # The instance that ran it is back (a new worker); a reader from the start gets the log as
    # stored, ending with that error; one past it gets the error again, never a hang.
    wait_for(lambda: get(running.url + "/health") == 200, 60, "a new worker")
    from_start, _ = events_of(running.url + message + "/events")
    assert_numbered(from_start)
    assert from_start[-1].name == "error" and from_start[-1].data["code"] == "interrupted"
    assert [e.name for e in from_start].count("error") == 1
    past, _ = events_of(running.url + message + "/events",
                           **{"Last-Event-ID": str(from_start[-1].id + 5)})  # fmt: skip
    assert [(e.name, e.data["code"]) for e in past] == [("error", "interrupted")]
    stored = _get_json(other.url + message)
    assert (stored["status"], stored["error_code"]) == ("failed", "interrupted")


def test_the_event_log_settings_are_checked_at_start(make_app):
    from chatsvc.config import ConfigError

    for bad in (
        {"TURN_ON_DISCONNECT": "stop"}, {"TURN_EVENTS_STORE": "disk"},
        {"TURN_EVENTS_TTL_SECONDS": 0}, {"TURN_EVENTS_FLUSH_MS": -1.0},
        {"TURN_EVENTS_POLL_SECONDS": 0.0}, {"TURN_EVENTS_STORE_WAIT_SECONDS": -1.0},
        {"TURN_EVENTS_STORE_WAIT_SECONDS": 301.0},
    ):  # fmt: skip
        with pytest.raises(ConfigError, match=next(iter(bad))):
            make_app(bad)


# Bad input and isolation ---------------------------------------------------------------------


def test_events_and_messages_follow_the_conversation_rules(make_app):
    client = make_app().test_client()
    sent = stream_turn(client, "/api/alice/chat", {"message": "hello"})
    meta = sent[0].data
    conversation, message = meta["conversation_id"], meta["message_id"]
    path = f"/api/alice/conversations/{conversation}/messages/{message}"
    assert ok(client.get(path))["status"] == "completed"

    for bad in ("abc", "-1", "1.5", " 1", "+1", "1234567890", "٣", ""):
        if bad:
            assert_problem(client.get(path + "/events", headers={"Last-Event-ID": bad}), 422,
                           "validation_error")  # fmt: skip
        assert_problem(client.get(path + f"/events?last_event_id={bad}"), 422, "validation_error")

    # Another user's conversation, an unknown message, a message of another conversation, the
    # user's own message (no turn answers it): 404, as for the conversation itself.
    other = stream_turn(client, "/api/alice/chat", {"message": "again"})[0].data
    user_message = ok(client.get(f"/api/alice/conversations/{conversation}"))["messages"][0]
    for wrong in (
        f"/api/mallory/conversations/{conversation}/messages/{message}",
        f"/api/alice/conversations/{conversation}/messages/{uuid.uuid4()}",
        f"/api/alice/conversations/{conversation}/messages/{other['message_id']}",
        f"/api/alice/conversations/{other['conversation_id']}/messages/{message}",
        f"/api/alice/conversations/{conversation}/messages/{'x' * 40}",
    ):
        assert_problem(client.get(wrong), 404, "not_found")
        assert_problem(client.get(wrong + "/events"), 404, "not_found")
    user_path = f"/api/alice/conversations/{conversation}/messages/{user_message['id']}"
    assert ok(client.get(user_path))["role"] == "user"
    assert_problem(client.get(user_path + "/events"), 404, "not_found")


def test_a_websocket_turn_is_logged_with_the_ids_its_frames_carried(gunicorn):
    """One log for every transport: the frames a WebSocket turn sent are its logged events
    (the `done`'s timing aside: each transport measures its own)."""
    import websocket

    server = gunicorn(WEB_CONCURRENCY="1", RATELIMIT_ENABLED="false")
    user = someone()
    ws = websocket.create_connection(
        server.url.replace("http://", "ws://", 1) + f"/api/{user}/chat/ws", timeout=10
    )
    try:
        ws.send(json.dumps({"type": "message", "message": "add a task to buy milk"}))
        frames = [json.loads(ws.recv())]
        while frames[-1]["event"] not in ("done", "error"):
            frames.append(json.loads(ws.recv()))
    finally:
        ws.close()
    done = frames[-1]["data"]
    message = f"/api/{user}/conversations/{done['conversation_id']}/messages/{done['message_id']}"
    logged, _ = events_of(server.url + message + "/events")

    def untimed(name: str, data: dict[str, Any]) -> dict[str, Any]:
        return {k: v for k, v in data.items() if k != "timing"} if name == "done" else data

    assert [(e.name, e.id, untimed(e.name, e.data)) for e in logged] == [
        (f["event"], f["id"], untimed(f["event"], f["data"])) for f in frames
    ]


def test_the_stream_does_not_wait_for_an_unreachable_store(make_app):
    """Redis down: the events still reach the stream's reader at once (the flusher keeps them
    and retries); the turn is answered and stored as ever, once its ending has waited
    TURN_EVENTS_STORE_WAIT_SECONDS for the store (here 1 s)."""
    from helpers import free_port

    app = make_app({
        "EVENTS_REDIS_URL": f"redis://127.0.0.1:{free_port()}/0",
        "TURN_EVENTS_STORE_WAIT_SECONDS": 1.0,
    })  # fmt: skip
    client = app.test_client()
    started = time.monotonic()
    sent = stream_turn(client, "/api/alice/chat", {"message": "add a task to buy milk"})
    assert time.monotonic() - started < 5
    assert_numbered(sent)
    done = sent[-1].data
    assert (sent[-1].name, done["status"]) == ("done", "completed")
    path = f"/api/alice/conversations/{done['conversation_id']}/messages/{done['message_id']}"
    assert ok(client.get(path))["content"] == done["response"]
    events = app.extensions["chatsvc.turns"].events
    assert not events.flush(), "nothing reached the store"
    events.close(timeout=0)


def test_a_resume_while_the_store_is_unreachable_ends_from_the_stored_message(make_app):
    """Redis down (issue 23's cluster soak: 500s on resumes while Redis was killed): a reader
    on another worker or host cannot read the log; it waits as for silence and ends with the
    `done` made from the stored message, numbered after what it had: never a 500."""
    from helpers import free_port

    dead = {
        "EVENTS_REDIS_URL": f"redis://127.0.0.1:{free_port()}/0",
        "TURN_EVENTS_STORE_WAIT_SECONDS": 1.0,  # the turn's ending waits no longer for Redis
    }
    running, elsewhere = make_app(dead), make_app(dead)
    sent = stream_turn(running.test_client(), "/api/alice/chat", {"message": "hello there"})
    done = sent[-1].data
    path = f"/api/alice/conversations/{done['conversation_id']}/messages/{done['message_id']}"
    replay = read_events(elsewhere.test_client(), path + "/events", **{"Last-Event-ID": "1"})
    assert [(e.name, e.id) for e in replay] == [("done", 2)]
    assert (replay[0].data["response"], replay[0].data["status"]) == (
        done["response"], "completed"
    )  # fmt: skip
    for app in (running, elsewhere):
        app.extensions["chatsvc.turns"].events.close(timeout=0)


def test_a_log_that_lost_events_is_never_sent_with_a_hole(make_app):
    """Redis restarted empty while a turn ran (issue 23's cluster soak): the turn's later
    events are stored after a hole. A resume before the hole gets no event after it but the
    ending, numbered after the last it had (as for an expired log), whose `response` is the
    whole answer: ids in order, none missing, none twice."""
    import redis

    url = require_service("TEST_REDIS_URL", "Redis")
    running, elsewhere = make_app({"EVENTS_REDIS_URL": url}), make_app({"EVENTS_REDIS_URL": url})
    sent = stream_turn(running.test_client(), "/api/bob/chat", {"message": LONG_ANSWER})
    assert len(sent) >= 6
    done = sent[-1].data
    events = running.extensions["chatsvc.turns"].events
    wait_for(lambda: events.flush() and len(events.store.read(done["message_id"], 0)) == len(sent),
             5, "storage")  # fmt: skip
    stored = events.store.read(done["message_id"], 0)
    connection = redis.Redis.from_url(url)
    connection.delete("chatsvc:turn-events:" + done["message_id"])  # Redis lost the log...
    connection.close()
    events.store.save([(done["message_id"], e) for e in stored if e.id > 4])  # ...then got more
    path = f"/api/bob/conversations/{done['conversation_id']}/messages/{done['message_id']}"
    client = elsewhere.test_client()
    replay = read_events(client, path + "/events", **{"Last-Event-ID": "2"})
    assert [(e.name, e.id) for e in replay] == [("done", 3)]
    assert replay[0].data["response"] == done["response"]
    # after the hole: every event as stored
    replay = read_events(client, path + "/events", **{"Last-Event-ID": "4"})
    assert as_tuples(replay) == as_tuples(sent[4:])


def test_a_reader_that_could_not_read_the_store_still_gets_every_event(make_app):
    """Issue 23's cluster soak: a resume whose reads failed (Redis killed) found the turn
    settled and the log whole again, and was sent the log's last event (`done`, id 10) right
    after the id it had (1). It must read what it missed first: ids in order, none missing."""
    from chatsvc.services.events import EventLog, RedisStore

    url = require_service("TEST_REDIS_URL", "Redis")
    app = make_app({"EVENTS_REDIS_URL": url})
    sent = stream_turn(app.test_client(), "/api/carol/chat", {"message": LONG_ANSWER})
    done = sent[-1].data
    events = app.extensions["chatsvc.turns"].events
    wait_for(lambda: events.flush() and len(events.store.read(done["message_id"], 0)) == len(sent),
             5, "storage")  # fmt: skip

    class ReadsFailOnce(RedisStore):  # real Redis; its first read fails as when Redis is down
        failed = False

        def read(self, message_id: str, after: int) -> list[Any]:
            if not self.failed:
                self.failed = True
                raise ConnectionError("Redis is down")
            return super().read(message_id, after)

    elsewhere = EventLog(ReadsFailOnce(url, 3600), app.extensions["chatsvc.turns"].settings)
    settled = ("done", done, 60.0)  # the stored message's ending, settled a minute ago
    got = [e for e in elsewhere.follow(done["message_id"], 1, 5.0, lambda: settled) if e]
    assert [(e.id, e.name) for e in got] == [(e.id, e.name) for e in sent[1:]]
    elsewhere.close(timeout=0)


class SlowFirstSave:
    """A real store (the app's own) whose first write takes `seconds`: a flusher that lags, as
    redis-py's retry backoff left it after Redis came back in the cluster soak."""

    def __init__(self, store: Any, seconds: float) -> None:
        self._store = store
        self._seconds = seconds

    def save(self, batch: list[Any]) -> None:
        seconds, self._seconds = self._seconds, 0.0
        time.sleep(seconds)
        self._store.save(batch)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._store, name)


def test_a_turn_is_settled_once_its_events_are_stored_so_a_resume_elsewhere_gets_them_all(
    make_app, log_config
):
    """Issue 23's cluster soak (`stream_text`): resumes on the other instance got no delta and
    a lone `done` carrying the whole reply. The turn had been settled while its events still
    waited in its worker's flusher; a reader elsewhere found the message settled for
    SETTLE_GRACE_SECONDS and nothing in the log after the id it had, and made the ending
    alone, as for an expired log. Here the running instance's first write to the store takes
    3 s: the turn settles after its events are stored, so a resume on the other instance
    replays every event after the one it had, once, in order."""
    running, elsewhere = make_app(log_config), make_app(log_config)
    events = running.extensions["chatsvc.turns"].events
    events.store = SlowFirstSave(events.store, seconds=3.0)
    user = someone()
    sent = stream_turn(running.test_client(), f"/api/{user}/chat", {"message": LONG_ANSWER})
    path = assert_resumed_elsewhere(elsewhere, user, sent)
    assert ok(elsewhere.test_client().get(path))["content"] == sent[-1].data["response"]


def assert_resumed_elsewhere(elsewhere: Any, user: str, sent: list[Any]) -> str:
    """The client of a finished streamed turn had `meta` only (it left) and comes back on the
    other instance: every later event once, in order, its text the stored reply. The
    message's path."""
    assert len(sent) >= 6 and sent[-1].name == "done"
    done = sent[-1].data
    path = f"/api/{user}/conversations/{done['conversation_id']}/messages/{done['message_id']}"
    rest = read_events(elsewhere.test_client(), path + "/events", **{"Last-Event-ID": "1"})
    assert [(e.name, e.id) for e in rest] == [(e.name, e.id) for e in sent[1:]]
    assert sse.text_of(rest) == rest[-1].data["response"] == done["response"]
    return path


def test_a_turn_that_ends_while_its_store_is_down_is_settled_once_the_store_has_its_events(
    make_app,
):
    """Issue 23's cluster soak (`stream_text`; its service logs showed how): Redis was killed, a
    turn ran and ended while it was down (its events waiting in its worker's flusher), Redis
    came back, and a resume on the other instance read the log 70 ms before that flusher
    stored them: the turn had been settled for 2 s and the log held nothing after the id the
    client had, so the reader sent the `done` alone. Here the running instance's Redis is cut
    while its turn runs and back 3 s later: the turn is settled only once its events are
    stored (TURN_EVENTS_STORE_WAIT_SECONDS), and the resume elsewhere gets every one."""
    from sqlalchemy.engine import make_url
    from tcpproxy import TcpProxy

    direct = require_service("TEST_REDIS_URL", "Redis")
    url = make_url(direct)
    proxy = TcpProxy(url.port or 6379, url.host or "127.0.0.1")
    restore = threading.Timer(3.0, proxy.restore)
    try:
        via_proxy = url.set(port=proxy.port).render_as_string(hide_password=False)
        running = make_app({"EVENTS_REDIS_URL": via_proxy})
        elsewhere = make_app({"EVENTS_REDIS_URL": direct})
        proxy.cut()
        restore.start()
        user = someone()
        sent = stream_turn(running.test_client(), f"/api/{user}/chat", {"message": LONG_ANSWER})
        assert_resumed_elsewhere(elsewhere, user, sent)
    finally:
        restore.cancel()
        proxy.close()


def test_a_reader_outlives_a_database_outage_while_it_waits(make_app):
    """Issue 23's cluster soak: a resume asked for the turn's stored status while the database
    was cut and answered 500. The status is asked again a second later; the reader ends with
    the turn's ending once the database answers."""
    from sqlalchemy.exc import OperationalError

    from chatsvc.services.events import EventLog

    app = make_app({"TURN_EVENTS_STORE": "database"})
    sent = stream_turn(app.test_client(), "/api/dave/chat", {"message": "hello there"})
    done = sent[-1].data
    turns = app.extensions["chatsvc.turns"]
    wait_for(lambda: turns.events.flush() or True, 5, "storage")
    elsewhere = EventLog.open(turns.settings, database(app))
    asked: list[int] = []

    def outcome() -> Any:  # the database is away the first time it is asked
        asked.append(1)
        if len(asked) == 1:
            raise OperationalError("SELECT", {}, ConnectionRefusedError("connection refused"))
        return ("done", done, 60.0)

    last = sent[-2].id  # the reader has every event but the done
    with elsewhere.store._database.transaction() as session:  # the done was lost (a killed
        session.execute(LoggedEvent.__table__.delete())  # worker's last batch): none is logged
    got = [e for e in elsewhere.follow(done["message_id"], last, 5.0, outcome) if e]
    assert [(e.id, e.name) for e in got] == [(last + 1, "done")]
    assert len(asked) == 2
