"""The basic shape of a streamed turn (contract §5)."""

from __future__ import annotations

from fakes import ScriptedAgent
from helpers import history, ok, sse_events

from chatsvc.agent.base import UpstreamTimeout

STREAM = {"Accept": "text/event-stream"}


def test_stream_sends_meta_deltas_tool_calls_and_done(client):
    response = client.post(
        "/api/alice/chat", json={"message": "Add a task to buy milk"}, headers=STREAM
    )
    assert response.status_code == 200
    assert response.mimetype == "text/event-stream"
    assert response.headers["Cache-Control"] == "no-cache"
    assert response.headers["X-Accel-Buffering"] == "no"
    events = sse_events(response)
    names = [name for name, _, _ in events]
    assert names[0] == "meta" and names[-1] == "done"
    assert names.count("done") == 1 and "error" not in names
    assert set(names[1:-1]) == {"delta", "tool_call"}
    ids = [event_id for _, event_id, _ in events]
    assert ids == sorted(ids) and len(set(ids)) == len(ids)
    meta, done = events[0][2], events[-1][2]
    assert meta == {"conversation_id": done["conversation_id"], "message_id": done["message_id"]}
    text = "".join(data["text"] for name, _, data in events if name == "delta")
    assert text == done["response"]
    tool_calls = [data for name, _, data in events if name == "tool_call"]
    assert tool_calls == done["tool_calls"]
    assert tool_calls[0]["result"]["status"] == "created"
    assert set(done["timing"]) == {"db", "agent", "total"}
    assert done["status"] == "completed" and done["context"] == {
        "messages": 0,
        "truncated": False,
    }
    stored = history(client, "alice", done["conversation_id"])[-1]
    assert stored["id"] == done["message_id"]
    assert (stored["content"], stored["status"], stored["tool_calls"], stored["created_at"]) == (
        done["response"],
        "completed",
        done["tool_calls"],
        done["created_at"],
    )


def test_session_stream_names_the_session(client):
    events = sse_events(client.post("/api/chat", json={"message": "hello"}, headers=STREAM))
    meta, done = events[0][2], events[-1][2]
    assert meta["session_id"] == meta["conversation_id"] == done["session_id"]
    state = ok(client.get(f"/api/session/{meta['session_id']}"))
    assert state["messages"][-1]["content"] == done["response"]


def test_a_failing_agent_ends_the_stream_with_an_error_event(make_app):
    client = make_app(agent=ScriptedAgent([UpstreamTimeout()])).test_client()
    events = sse_events(client.post("/api/chat", json={"message": "hello"}, headers=STREAM))
    assert [name for name, _, _ in events] == ["meta", "error"]
    error = events[-1][2]
    assert (error["status"], error["code"]) == (504, "upstream_timeout")
    state = ok(client.get(f"/api/session/{events[0][2]['session_id']}"))
    assert [(m["content"], m["status"]) for m in state["messages"]] == [
        ("hello", "completed"),
        ("", "failed"),
    ]
