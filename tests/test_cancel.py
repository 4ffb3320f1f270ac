"""Cancel a running turn (contract §5): `POST …/messages/{message_id}/cancel` → 202, and the
turn stops within a second wherever it runs — the same process, or another host sharing the
database (the flag) and Redis (the channel) — storing the text so far as `cancelled`."""

from __future__ import annotations

import http.client
import json
import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.error import HTTPError
from urllib.request import Request, urlopen

import pytest
from conftest import require_service
from fakellm import endless, slow
from fakes import ScriptedAgent
from helpers import assert_problem, chat, children, ok, serving, tasks, wait_for
from sse import LiveGet, LiveStream, text_of
from werkzeug.serving import make_server

from chatsvc.agent.base import Reply

ENDLESS = endless(chunk_delay=0.02)


@pytest.fixture
def live(llm_app) -> Iterator[tuple[Any, int]]:
    """chatsvc on a real socket (werkzeug's threaded server): streams are read as they come."""
    app = llm_app(AGENT_TIMEOUT_SECONDS=20.0)
    with serving(make_server("127.0.0.1", 0, app, threaded=True)) as server:
        yield app, server.server_port


def cancel_path(meta: dict[str, Any], user: str | None = "alice") -> str:
    if user is None:
        return f"/api/session/{meta['session_id']}/messages/{meta['message_id']}/cancel"
    conversation = f"/api/{user}/conversations/{meta['conversation_id']}"
    return f"{conversation}/messages/{meta['message_id']}/cancel"


def stored(client: Any, meta: dict[str, Any]) -> dict[str, Any]:
    path = f"/api/alice/conversations/{meta['conversation_id']}/messages/{meta['message_id']}"
    return ok(client.get(path))


def test_a_cancel_from_another_request_stops_a_streamed_turn_within_a_second(live, fake_llm):
    app, port = live
    client = app.test_client()
    fake_llm.script(ENDLESS)
    stream = LiveStream("127.0.0.1", port, "/api/alice/chat", {"message": "a long story"})
    meta = stream.until("delta", 3)[0].data

    asked = time.monotonic()
    response = client.post(cancel_path(meta))
    body = ok(response, 202)
    done = stream.until("done")[-1]
    took = time.monotonic() - asked

    assert took < 1.0, f"the turn went on for {took:.2f} s after the cancel"
    assert body["message_id"] == meta["message_id"] and body["status"] == "pending"
    message = f"/api/alice/conversations/{meta['conversation_id']}/messages/{meta['message_id']}"
    assert body["links"] == {
        "message": message, "events": f"{message}/events", "cancel": f"{message}/cancel"
    }  # fmt: skip
    assert response.headers["Location"] == message
    assert done.data["status"] == "cancelled"
    assert stream.rest()[-1] is done, "done is the last event"
    said = text_of(stream.events)
    assert said.startswith("and on and on") and done.data["response"] == said
    reply = stored(client, meta)
    assert reply["status"] == "cancelled" and reply["content"] == said
    agent = app.extensions["chatsvc.turns"].agent
    assert wait_for(lambda: sum(agent.in_flight()) == 0, what="the provider stream to be cut")
    again = client.post(
        "/api/alice/chat", json={"message": "go on", "conversation_id": meta["conversation_id"]}
    )
    assert ok(again)["status"] == "completed", "the conversation is free for the next turn"


def test_a_cancel_stops_a_silent_model_within_a_second(llm_app, fake_llm):
    """A JSON turn waits for the model's whole answer (nothing streams): a cancel still ends it
    at once; the JSON response says `cancelled` with what was said (nothing)."""
    app = llm_app(AGENT_TIMEOUT_SECONDS=20.0)
    client = app.test_client()
    conversation = ok(client.post("/api/alice/chat", json={"message": "hi"}))["conversation_id"]
    fake_llm.script(slow(15, "far too late"))
    answers: list[Any] = []
    turn = threading.Thread(
        target=lambda: answers.append(
            app.test_client().post(
                "/api/alice/chat", json={"message": "think hard", "conversation_id": conversation}
            )
        )
    )
    turn.start()
    wait_for(lambda: len(fake_llm.requests) == 2, what="the turn to wait on the model")
    pending = client.get(f"/api/alice/conversations/{conversation}").json["messages"][-1]
    assert pending["status"] == "pending"

    asked = time.monotonic()
    path = cancel_path({"conversation_id": conversation, "message_id": pending["id"]})
    ok(client.post(path), 202)
    turn.join(timeout=5)
    took = time.monotonic() - asked

    assert took < 1.0, f"the turn went on for {took:.2f} s after the cancel"
    answer = ok(answers[0])
    assert answer["message_id"] == pending["id"]
    assert answer["status"] == "cancelled" and answer["response"] == ""
    reply = stored(client, answer)
    assert reply["status"] == "cancelled" and reply["content"] == ""


def test_a_cancelled_turn_keeps_the_tool_calls_that_took_effect_and_runs_no_more(make_app):
    """The agent made a call (a task was added), then waits on its model: the cancel stores
    that call with the reply, and the call the agent tries after the cancel is not executed."""
    in_flight, gate, after = threading.Event(), threading.Event(), []

    def step(turn, tools):
        tools.call("add_task", {"title": "first"})
        in_flight.set()
        gate.wait(timeout=10)
        after.append(tools.call("add_task", {"title": "second"}))
        return Reply("Added both.", "scripted")

    app = make_app(agent=ScriptedAgent(steps=[step]))
    client = app.test_client()
    answers: list[Any] = []
    turn = threading.Thread(
        target=lambda: answers.append(chat(app.test_client(), "alice", "add first and second"))
    )
    turn.start()
    try:
        assert in_flight.wait(timeout=10)
        (conversation,) = client.get("/api/alice/conversations").json["items"]
        pending = client.get(f"/api/alice/conversations/{conversation['id']}").json["messages"][-1]
        cancel = {"conversation_id": conversation["id"], "message_id": pending["id"]}
        ok(client.post(cancel_path(cancel)), 202)
        turn.join(timeout=5)
        answer = ok(answers[0])
    finally:
        gate.set()
    assert answer["status"] == "cancelled"
    assert [call["parameters"] for call in answer["tool_calls"]] == [{"title": "first"}]
    wait_for(lambda: after, what="the agent to try its second call")
    assert after[0].result["error"] == "turn_stopped"
    assert [task["title"] for task in tasks(client, "alice")] == ["first"]
    assert stored(client, answer)["tool_calls"] == answer["tool_calls"]


def test_a_session_turn_is_cancelled_through_the_session_route(live, fake_llm):
    app, port = live
    fake_llm.script(ENDLESS)
    stream = LiveStream("127.0.0.1", port, "/api/chat", {"message": "tell me everything"})
    meta = stream.until("delta", 2)[0].data
    response = app.test_client().post(cancel_path(meta, user=None))
    body = ok(response, 202)
    assert body["session_id"] == meta["session_id"] == body["conversation_id"]
    message = f"/api/session/{meta['session_id']}/messages/{meta['message_id']}"
    assert response.headers["Location"] == body["links"]["message"] == message
    done = stream.until("done")[-1]
    assert done.data["status"] == "cancelled" and done.data["response"] == text_of(stream.events)
    state = ok(app.test_client().get(message))
    assert state["status"] == "cancelled" and state["content"] == done.data["response"]


def test_a_finished_turn_is_409_turn_finished_and_stays_as_it_was(client):
    turn = ok(client.post("/api/alice/chat", json={"message": "add a task to buy milk"}))
    assert_problem(client.post(cancel_path(turn)), 409, "turn_finished")
    reply = stored(client, turn)
    assert reply["status"] == "completed" and reply["content"] == turn["response"]
    session = ok(client.post("/api/chat", json={"message": "hello"}))
    assert_problem(client.post(cancel_path(session, user=None)), 409, "turn_finished")


def test_unknown_and_foreign_replies_are_404(client):
    mine = ok(client.post("/api/alice/chat", json={"message": "hello"}))
    theirs = ok(client.post("/api/bob/chat", json={"message": "hello"}))
    session = ok(client.post("/api/chat", json={"message": "hello"}))
    user_message = client.get(f"/api/alice/conversations/{mine['conversation_id']}").json[
        "messages"
    ][0]["id"]
    cases = [
        cancel_path({**mine, "message_id": "no-such-message"}),
        cancel_path({**mine, "message_id": user_message}),  # not a turn's reply
        cancel_path({**mine, "message_id": theirs["message_id"]}),  # another conversation's
        cancel_path(theirs),  # bob's conversation, asked as alice
        cancel_path({**mine, "conversation_id": "x" * 300}),
        cancel_path({**session, "session_id": mine["conversation_id"]}, user=None),
        cancel_path({"conversation_id": session["conversation_id"],
                     "message_id": session["message_id"]}),  # anonymous: no user's
    ]  # fmt: skip
    for path in cases:
        assert_problem(client.post(path), 404, "not_found")
    assert stored(client, mine)["status"] == "completed"


def test_cancel_requires_the_owner_when_auth_is_required(make_app):
    from chatsvc.auth import create_token

    secret = "s" * 40
    app = make_app({"AUTH_MODE": "required", "JWT_SECRET": secret})
    client = app.test_client()
    alice = {"Authorization": f"Bearer {create_token('alice', secret=secret)}"}
    bob = {"Authorization": f"Bearer {create_token('bob', secret=secret)}"}
    turn = ok(client.post("/api/alice/chat", json={"message": "hello"}, headers=alice))
    assert_problem(client.post(cancel_path(turn)), 401, "unauthorized")
    assert_problem(client.post(cancel_path(turn), headers=bob), 403, "forbidden")
    assert_problem(client.post(cancel_path(turn), headers=alice), 409, "turn_finished")


# Across hosts: two gunicorn instances sharing one database (and Redis) ---------------------


def post(url: str, body: dict[str, Any] | None = None) -> tuple[int, dict[str, Any]]:
    data = json.dumps(body or {}).encode() if body is not None else b""
    request = Request(url, data=data, method="POST", headers={"Content-Type": "application/json"})
    try:
        with urlopen(request, timeout=10) as response:
            return response.status, json.loads(response.read())
    except HTTPError as error:
        return error.code, json.loads(error.read() or b"{}")


@pytest.fixture
def fake_llm(shared_llm):
    """The module's fake model (its servers outlive a test), script and record fresh."""
    shared_llm.reset()
    return shared_llm


@pytest.fixture(params=["database", "redis"])
def hosts(request, shared_gunicorn, shared_llm) -> tuple[Any, Any]:
    """Two instances of two gevent workers each, sharing the database and the cancels' channel
    (the database's flag, or Redis too): one pair per signal for the module's tests (starting
    them per test cost most of their time); each test has its own conversation."""
    environ = {
        "AGENT_PROVIDER": "openai", "OPENAI_BASE_URL": shared_llm.url, "OPENAI_MODEL": "fake",
        "OPENAI_API_KEY": "sk-test", "AGENT_TIMEOUT_SECONDS": "30", "AGENT_MAX_RETRIES": "0",
        "RATELIMIT_ENABLED": "false", "WEB_CONCURRENCY": "2",
    }  # fmt: skip
    if request.param == "redis":
        environ["EVENTS_REDIS_URL"] = require_service("TEST_REDIS_URL", "Redis")
    first = shared_gunicorn(instance="first", **environ)
    return first, shared_gunicorn(instance="second", **environ)


def test_a_cancel_sent_to_another_host_stops_the_turn_within_a_second(hosts, fake_llm):
    first, second = hosts
    fake_llm.script(ENDLESS)
    port = int(first.url.rsplit(":", 1)[1])
    stream = LiveStream("127.0.0.1", port, "/api/alice/chat", {"message": "a long story"})
    meta = stream.until("delta", 3)[0].data
    base = f"/api/alice/conversations/{meta['conversation_id']}/messages/{meta['message_id']}"
    follower = LiveGet("127.0.0.1", int(second.url.rsplit(":", 1)[1]), f"{base}/events")
    follower.until("delta", 3)  # the other host follows the turn from its log

    asked = time.monotonic()
    status, body = post(second.url + cancel_path(meta), None)
    done = stream.until("done")[-1]
    took = time.monotonic() - asked
    followed = follower.until("done")[-1]

    assert status == 202 and body["status"] == "pending"
    assert took < 1.0, f"the turn on the other host went on for {took:.2f} s"
    assert done.data["status"] == "cancelled"
    assert followed.data == done.data, "every reader ends with the same cancelled done"
    assert [e.id for e in follower.events] == [e.id for e in stream.events]
    with urlopen(second.url + body["links"]["message"], timeout=10) as response:
        reply = json.loads(response.read())
    assert reply["status"] == "cancelled" and reply["content"] == text_of(stream.events)
    assert post(second.url + cancel_path(meta), None)[0] == 409


@pytest.mark.parametrize(
    "setting", [{"TURN_CANCEL_POLL_SECONDS": 2.0}, {"TURN_CANCEL_POLL_SECONDS": 0.0},
                {"EVENTS_REDIS_URL": "http://127.0.0.1:6379"}],
)  # fmt: skip
def test_settings_that_break_the_one_second_promise_refuse_to_start(setting):
    from chatsvc import create_app
    from chatsvc.config import ConfigError

    with pytest.raises(ConfigError, match=next(iter(setting))):
        create_app(setting)


def worker_of(master: int, local_port: int, server_port: int) -> int | None:
    """The gunicorn worker (pid) holding the server side of the client connection that has
    `local_port` on this machine, from /proc (None: no worker has accepted it yet)."""
    inodes = set()
    with open("/proc/net/tcp") as table:
        for line in table.readlines()[1:]:
            fields = line.split()
            here, there = int(fields[1].split(":")[1], 16), int(fields[2].split(":")[1], 16)
            if (here, there) == (server_port, local_port) and fields[9] != "0":
                inodes.add(f"socket:[{fields[9]}]")
    for pid in children(master):
        for fd in Path(f"/proc/{pid}/fd").iterdir():
            try:
                if os.readlink(fd) in inodes:
                    return pid
            except OSError:  # closed meanwhile
                continue
    return None


def test_a_cancel_that_lands_on_the_other_worker_stops_the_turn_within_a_second(hosts, fake_llm):
    """One instance, two gevent workers: the stream is on one, the cancel is sent on a
    connection the other worker accepted (found in /proc), and the turn still stops."""
    server = hosts[0]
    port = int(server.url.rsplit(":", 1)[1])
    master = server.process.pid
    wait_for(lambda: len(children(master)) == 2)
    fake_llm.script(ENDLESS)
    stream = LiveStream("127.0.0.1", port, "/api/alice/chat", {"message": "a long story"})
    meta = stream.until("delta", 3)[0].data
    running = worker_of(master, stream.connection.sock.getsockname()[1], port)
    assert running is not None

    for _ in range(40):  # each new connection lands on either worker
        other = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        other.request("GET", "/health/live")
        other.getresponse().read()
        if worker_of(master, other.sock.getsockname()[1], port) not in (running, None):
            break
        other.close()
    else:
        pytest.fail("no connection reached the second worker")

    asked = time.monotonic()
    other.request("POST", cancel_path(meta))
    answer = other.getresponse()
    answer.read()
    done = stream.until("done")[-1]
    took = time.monotonic() - asked
    assert answer.status == 202
    assert took < 1.0, f"the turn on the other worker went on for {took:.2f} s"
    assert done.data["status"] == "cancelled" and done.data["response"] == text_of(stream.events)
