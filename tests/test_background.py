"""Background turns (contract §5): a chat POST with `Prefer: respond-async` answers 202 at once
with the turn's ids and links; the turn runs on without the request (on gunicorn's gevent
worker too), its message shows `pending` then its final status, and it can be cancelled."""

from __future__ import annotations

import json
import signal
import time
from typing import Any
from urllib.error import HTTPError
from urllib.request import Request, urlopen

import pytest
import sse
from conftest import require_service
from fakellm import endless, say
from helpers import assert_problem, ok, serving, wait_for
from werkzeug.serving import make_server

ASYNC = {"Prefer": "respond-async"}
STORY = "Once upon a time there was a service that kept answering after its client had gone."


@pytest.fixture(params=["database", "redis"])
def live(llm_app, request):
    """chatsvc on a real socket (werkzeug's threaded server): streams are read as they come;
    the turn's events and cancels go through the database, or through Redis."""
    log = {}
    if request.param == "redis":
        log["EVENTS_REDIS_URL"] = require_service("TEST_REDIS_URL", "Redis")
    app = llm_app(AGENT_TIMEOUT_SECONDS=20.0, **log)
    with serving(make_server("127.0.0.1", 0, app, threaded=True)) as server:
        yield app, server.server_port


def message_of(client: Any, links: dict[str, str]) -> dict[str, Any]:
    return ok(client.get(links["message"]))


def settled(client: Any, links: dict[str, str], timeout: float = 10) -> dict[str, Any]:
    return wait_for(
        lambda: (m := message_of(client, links))["status"] != "pending" and m,
        timeout, "the background turn to end",
    )  # fmt: skip


def test_a_background_turn_answers_202_at_once_and_completes_later(llm_app, fake_llm):
    client = llm_app().test_client()
    fake_llm.script(say(STORY, chunk_delay=0.03))
    started = time.monotonic()
    response = client.post("/api/alice/chat", json={"message": "tell me a story"}, headers=ASYNC)
    took = time.monotonic() - started

    body = ok(response, 202)
    assert took < 0.4, f"the 202 took {took:.2f} s: it waited for the model"
    conversation, message = body["conversation_id"], body["message_id"]
    base = f"/api/alice/conversations/{conversation}/messages/{message}"
    assert body == {
        "conversation_id": conversation, "message_id": message, "status": "pending",
        "links": {"message": base, "events": f"{base}/events", "cancel": f"{base}/cancel"},
    }  # fmt: skip
    assert response.headers["Location"] == base
    assert response.headers["Preference-Applied"] == "respond-async"
    assert message_of(client, body["links"])["status"] == "pending"

    reply = settled(client, body["links"])
    assert reply["status"] == "completed" and reply["content"] == STORY
    assert reply["id"] == message and reply["role"] == "assistant"
    messages = ok(client.get(f"/api/alice/conversations/{conversation}"))["messages"]
    assert [(m["role"], m["content"]) for m in messages] == [
        ("user", "tell me a story"), ("assistant", STORY)
    ]  # fmt: skip


def test_a_background_session_turn_links_the_session_routes(client):
    response = client.post("/api/chat", json={"message": "hello"}, headers=ASYNC)
    body = ok(response, 202)
    assert body["session_id"] == body["conversation_id"]
    base = f"/api/session/{body['session_id']}/messages/{body['message_id']}"
    assert body["links"]["message"] == base == response.headers["Location"]
    reply = settled(client, body["links"])
    assert reply["status"] == "completed" and reply["content"]
    state = ok(client.get(f"/api/session/{body['session_id']}"))
    assert state["messages"][-1]["id"] == body["message_id"]
    follow = client.post(
        f"/api/chat/{body['session_id']}", json={"message": "thanks"}, headers=ASYNC
    )
    assert ok(follow, 202)["session_id"] == body["session_id"]
    assert settled(client, follow.get_json()["links"])["status"] == "completed"


def test_a_background_turn_streams_from_its_events_link(llm_app, fake_llm):
    client = llm_app().test_client()
    fake_llm.script(say(STORY, chunk_delay=0.03))
    body = ok(client.post("/api/alice/chat", json={"message": "a story"}, headers=ASYNC), 202)
    response = client.get(body["links"]["events"], headers={"Accept": "text/event-stream"})
    events, _ = sse.parse(response.get_data(as_text=True))
    assert [e.id for e in events] == list(range(1, len(events) + 1))
    assert events[0].name == "meta" and events[0].data["message_id"] == body["message_id"]
    assert events[-1].name == "done" and events[-1].data["status"] == "completed"
    assert sse.text_of(events) == STORY == events[-1].data["response"]
    assert message_of(client, body["links"])["content"] == STORY


def test_a_background_turn_can_be_cancelled(live, fake_llm):
    app, port = live
    client = app.test_client()
    fake_llm.script(endless(chunk_delay=0.02))
    body = ok(client.post("/api/alice/chat", json={"message": "go on"}, headers=ASYNC), 202)
    follower = sse.LiveGet("127.0.0.1", port, body["links"]["events"])
    follower.until("delta", 3)  # some text said: it is kept
    asked = time.monotonic()
    ok(client.post(body["links"]["cancel"]), 202)
    done = follower.until("done")[-1]
    reply = settled(client, body["links"], timeout=1.0)
    assert time.monotonic() - asked < 1.0
    assert reply["status"] == "cancelled" and reply["content"].startswith("and on and on")
    assert done.data["status"] == "cancelled" and done.data["response"] == reply["content"]
    assert sse.text_of(follower.rest()) == reply["content"], "the log holds what was stored"
    assert_problem(client.post(body["links"]["cancel"]), 409, "turn_finished")


def test_a_background_post_is_idempotent(llm_app, fake_llm):
    client = llm_app().test_client()
    fake_llm.script(say(STORY, chunk_delay=0.03))
    headers = {**ASYNC, "Idempotency-Key": "story-1"}
    first = ok(client.post("/api/alice/chat", json={"message": "a story"}, headers=headers), 202)
    while_running = client.post("/api/alice/chat", json={"message": "a story"}, headers=headers)
    assert_problem(while_running, 409, "turn_in_progress")
    settled(client, first["links"])

    replay = client.post("/api/alice/chat", json={"message": "a story"}, headers=headers)
    again = ok(replay, 202)
    assert replay.headers["Idempotent-Replayed"] == "true"
    assert (again["conversation_id"], again["message_id"], again["links"]) == (
        first["conversation_id"], first["message_id"], first["links"]
    )  # fmt: skip
    assert again["status"] == "completed"
    assert len(fake_llm.requests) == 1, "the model ran once"
    conversation = ok(client.get(f"/api/alice/conversations/{first['conversation_id']}"))
    assert conversation["message_count"] == 2
    as_json = client.post("/api/alice/chat", json={"message": "a story"},
                          headers={"Idempotency-Key": "story-1"})  # fmt: skip
    assert ok(as_json)["response"] == STORY, "the same key without the preference: the reply"


def test_the_preference_is_read_as_rfc_7240_says(client):
    for prefer in ("respond-async", "RESPOND-ASYNC", "wait=10, respond-async", "respond-async;x=1"):
        response = client.post(
            "/api/alice/chat", json={"message": "hi"}, headers={"Prefer": prefer}
        )
        assert response.status_code == 202, prefer
        settled(client, response.get_json()["links"])
    for prefer in ("respond-asyncx", "return=minimal", "", "x" * 4000):
        response = client.post(
            "/api/alice/chat", json={"message": "hi"}, headers={"Prefer": prefer}
        )
        assert ok(response)["status"] == "completed", prefer
    streamed = client.post(
        "/api/alice/chat", json={"message": "hi"},
        headers={**ASYNC, "Accept": "text/event-stream"},
    )  # fmt: skip
    assert streamed.status_code == 202 and streamed.mimetype == "application/json"
    settled(client, streamed.get_json()["links"])


def test_a_background_turn_still_validates_first(client):
    response = client.post("/api/alice/chat", json={"message": ""}, headers=ASYNC)
    assert_problem(response, 422, "validation_error")
    unknown = client.post(
        "/api/alice/chat", json={"message": "hi", "conversation_id": "nope"}, headers=ASYNC
    )
    assert_problem(unknown, 404, "not_found")
    assert client.get("/api/alice/conversations").get_json()["items"] == []


# On gunicorn's gevent worker ---------------------------------------------------------------


def request(url: str, body: dict[str, Any] | None = None, **headers: str) -> tuple[int, Any]:
    data = None if body is None else json.dumps(body).encode()
    method = "GET" if body is None else "POST"
    sent = Request(url, data=data, method=method,
                   headers={"Content-Type": "application/json", **headers})  # fmt: skip
    try:
        with urlopen(sent, timeout=10) as response:
            return response.status, json.loads(response.read())
    except HTTPError as error:
        return error.code, json.loads(error.read() or b"{}")


def model_environ(fake_llm: Any, **more: str) -> dict[str, str]:
    return {
        "AGENT_PROVIDER": "openai", "OPENAI_BASE_URL": fake_llm.url, "OPENAI_MODEL": "fake",
        "OPENAI_API_KEY": "sk-test", "AGENT_TIMEOUT_SECONDS": "30", "AGENT_MAX_RETRIES": "0",
        "RATELIMIT_ENABLED": "false", **more,
    }  # fmt: skip


def test_on_gunicorn_a_background_turn_runs_on_after_its_response(gunicorn, fake_llm):
    server = gunicorn(**model_environ(fake_llm, WEB_CONCURRENCY="2"))
    fake_llm.script(say(STORY, chunk_delay=0.05))
    status, body = request(server.url + "/api/alice/chat", {"message": "a story"}, **ASYNC)
    assert status == 202
    assert request(server.url + body["links"]["message"])[1]["status"] == "pending"
    reply = wait_for(
        lambda: (
            (m := request(server.url + body["links"]["message"])[1])["status"] != "pending" and m
        )
    )
    assert reply["status"] == "completed" and reply["content"] == STORY


def test_a_stopping_worker_marks_its_background_turns_interrupted(gunicorn, fake_llm, make_app):
    server = gunicorn(**model_environ(fake_llm, GUNICORN_GRACEFUL_TIMEOUT="2"))
    fake_llm.script(endless(chunk_delay=0.05))
    status, body = request(server.url + "/api/alice/chat", {"message": "go on"}, **ASYNC)
    assert status == 202
    wait_for(lambda: fake_llm.requests, what="the model to be asked")

    server.process.send_signal(signal.SIGTERM)
    assert server.process.wait(timeout=15) == 0

    client = make_app().test_client()  # the same database
    reply = ok(client.get(body["links"]["message"]))
    assert reply["status"] == "failed" and reply["error_code"] == "interrupted"
    assert reply["content"].startswith("and on"), "what was said is kept"
    logged = client.get(body["links"]["events"], headers={"Accept": "text/event-stream"})
    events, _ = sse.parse(logged.get_data(as_text=True))
    assert events[-1].name == "error" and events[-1].data["code"] == "interrupted"
    assert sse.text_of(events) == reply["content"], "its log holds what was stored"
    conversation = ok(client.get(f"/api/alice/conversations/{body['conversation_id']}"))
    assert conversation["messages"][0]["content"] == "go on"
    again = client.post(
        "/api/alice/chat", json={"message": "again", "conversation_id": body["conversation_id"]}
    )
    assert ok(again)["status"] == "completed", "the conversation was freed"
