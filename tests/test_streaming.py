"""Streaming chat turns (contract §5) through HTTP, for both agents."""

from __future__ import annotations

import socket
from collections.abc import Iterator

import pytest
import sse
from fakellm import call, endless, fail, say, slow
from helpers import serving, wait_for
from werkzeug.serving import make_server

STREAM = {"Accept": "text/event-stream"}


def stream(client, path, body):
    response = client.post(path, json=body, headers=STREAM)
    assert response.status_code == 200
    assert response.mimetype == "text/event-stream"
    assert response.headers["Cache-Control"] == "no-cache"
    assert response.headers["X-Accel-Buffering"] == "no"
    return sse.parse(response.get_data(as_text=True))


def assert_well_formed(events):
    assert events[0].name == "meta"
    assert [e.id for e in events] == sorted({e.id for e in events}), "ids increase"
    assert [e.name for e in events].count("done") + [e.name for e in events].count("error") == 1
    assert events[-1].name in {"done", "error"}


def test_local_agent_streams_deltas_tool_calls_then_done(client):
    events, _ = stream(client, "/api/alice/chat", {"message": "add a task to buy milk"})
    assert_well_formed(events)
    names = [e.name for e in events]
    assert names.index("tool_call") < names.index("done")
    done = events[-1].data
    assert sse.text_of(events) == done["response"]
    assert done["tool_calls"][0]["tool"] == "add_task"
    assert events[0].data["message_id"] == done["message_id"]
    assert set(done["timing"]) == {"db", "agent", "total"}
    listed = client.get(f"/api/alice/conversations/{done['conversation_id']}").json
    assert listed["messages"][-1]["content"] == done["response"]


def test_session_stream_carries_the_session_id(client):
    events, _ = stream(client, "/api/chat", {"message": "hello"})
    assert events[0].data["session_id"] == events[-1].data["session_id"]


def test_model_stream_forwards_chunks_and_tool_calls_in_order(llm_app, fake_llm):
    client = llm_app().test_client()
    fake_llm.script(
        call(("add_task", {"title": "water plants"}), text="Let me add that."),
        say("Added task 1: water plants.", usage=(30, 8)),
    )
    events, _ = stream(client, "/api/alice/chat", {"message": "remind me to water plants"})
    assert_well_formed(events)
    names = [e.name for e in events]
    tool_at = names.index("tool_call")
    assert "delta" in names[:tool_at] and "delta" in names[tool_at:]
    done = events[-1].data
    assert sse.text_of(events) == done["response"]
    assert done["response"] == "Let me add that.\n\nAdded task 1: water plants."
    assert len([n for n in names if n == "delta"]) > 4, "chunks forwarded, not one blob"
    assert events[tool_at].data["result"]["status"] == "created"
    assert done["usage"]["total_tokens"] == 15 + 38


def test_a_provider_failure_ends_the_stream_with_an_error_event(llm_app, fake_llm):
    client = llm_app().test_client()
    fake_llm.script(fail(500), fail(500))  # the second: the same round without streaming
    events, _ = stream(client, "/api/alice/chat", {"message": "hi"})
    assert_well_formed(events)
    assert events[-1].name == "error"
    assert events[-1].data["code"] == "upstream_error"
    assert events[-1].data["status"] == 502


def test_a_silent_model_gets_pings(llm_app, fake_llm):
    client = llm_app(SSE_PING_SECONDS=0.05).test_client()
    fake_llm.script(slow(0.4, text="finally"))
    events, pings = stream(client, "/api/alice/chat", {"message": "hi"})
    assert pings >= 3
    assert events[-1].data["response"] == "finally"


@pytest.fixture
def live_server(llm_app) -> Iterator[tuple[str, int]]:
    """chatsvc on a real socket (werkzeug's threaded server), to hang up mid-stream; a client
    that leaves cancels its turn (TURN_ON_DISCONNECT=cancel; tests/test_resume.py has the
    default, where the turn goes on)."""
    app = llm_app(SSE_PING_SECONDS=0.05, AGENT_TIMEOUT_SECONDS=10.0, TURN_ON_DISCONNECT="cancel")
    with serving(make_server("127.0.0.1", 0, app, threaded=True)) as server:
        yield app, server.server_port


def test_a_client_that_hangs_up_leaves_the_partial_answer_cancelled(live_server, fake_llm):
    app, port = live_server
    fake_llm.script(endless(chunk_delay=0.02))
    with socket.create_connection(("127.0.0.1", port)) as connection:
        body = b'{"message": "tell me a long story"}'
        connection.sendall(
            b"POST /api/alice/chat HTTP/1.1\r\nHost: x\r\nAccept: text/event-stream\r\n"
            b"Content-Type: application/json\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body)
        )
        connection.settimeout(5)
        received = b""
        while received.count(b"event: delta") < 3:
            chunk = connection.recv(4096)
            assert chunk, f"the stream ended early: {received!r}"
            received += chunk
    client = app.test_client()
    conversation = wait_for(
        lambda: (client.get("/api/alice/conversations").json["items"] or [None])[0]
    )
    path = f"/api/alice/conversations/{conversation['id']}"
    reply = wait_for(
        lambda: next(
            (m for m in client.get(path).json["messages"] if m["status"] == "cancelled"), None
        )
    )
    user, assistant = client.get(path).json["messages"]
    assert user["content"] == "tell me a long story" and user["status"] == "completed"
    assert assistant["id"] == reply["id"]
    assert assistant["content"].startswith("and on and on")
    agent = app.extensions["chatsvc.turns"].agent
    assert wait_for(lambda: sum(agent.in_flight()) == 0)  # its provider connection is given back
    again = client.post(
        "/api/alice/chat", json={"message": "ok", "conversation_id": conversation["id"]}
    )
    assert again.status_code == 200
