"""Knowledge sessions: new, continue, state, reset, expiry (contract §3)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from fakes import ScriptedAgent
from helpers import age, assert_problem, chat, ok, turn_in_flight


def start(client, message="hello"):
    return ok(client.post("/api/chat", json={"message": message}))


def test_new_session_answers_with_its_id_twice(client):
    body = start(client)
    assert body["session_id"] == body["conversation_id"]
    assert body["status"] == "completed"
    assert body["context"] == {"messages": 0, "truncated": False}
    assert body["sources"] == []


def test_anonymous_session_turn_has_no_user_and_no_task_tools(make_app):
    client = make_app().test_client()
    body = start(client, "Add a task to buy milk")
    assert [call["tool"] for call in body["tool_calls"]] == ["search_knowledge"]
    assert "don't know" in body["response"]
    assert client.get("/api/alice/tasks").json["items"] == []


def test_session_agent_gets_no_user(make_app):
    agent = ScriptedAgent()
    client = make_app(agent=agent).test_client()
    session = start(client)["session_id"]
    body = ok(client.post(f"/api/chat/{session}", json={"message": "more"}))
    assert body["session_id"] == session
    assert body["context"] == {"messages": 2, "truncated": False}
    assert agent.turns[1].user_id is None
    assert [m.content for m in agent.turns[1].history] == ["hello", "echo: hello"]


def test_session_state_lists_messages_oldest_first(client):
    session = start(client, "first")["session_id"]
    ok(client.post(f"/api/chat/{session}", json={"message": "second"}))
    state = ok(client.get(f"/api/session/{session}"))
    assert set(state) == {
        "session_id", "created_at", "last_activity", "expires_at", "message_count", "messages",
    }  # fmt: skip
    assert state["session_id"] == session
    assert state["message_count"] == 4
    assert [m["role"] for m in state["messages"]] == ["user", "assistant", "user", "assistant"]
    assert [state["messages"][0]["content"], state["messages"][2]["content"]] == [
        "first",
        "second",
    ]
    last_activity = datetime.fromisoformat(state["last_activity"])
    expires_at = datetime.fromisoformat(state["expires_at"])
    assert expires_at - last_activity == timedelta(seconds=3600)
    assert state["created_at"].endswith("Z")
    newest = ok(client.get(f"/api/session/{session}?limit=1"))["messages"]
    assert [m["id"] for m in newest] == [state["messages"][-1]["id"]]


def test_session_state_limit_out_of_range_is_422(client, subtests):
    session = start(client)["session_id"]
    for limit in ["0", "101", "x"]:
        with subtests.test(limit):
            response = client.get(f"/api/session/{session}?limit={limit}")
            body = assert_problem(response, 422, "validation_error")
            assert "limit" in body["errors"]["query"]


def test_reset_clears_history_and_keeps_the_id(make_app):
    agent = ScriptedAgent()
    client = make_app(agent=agent).test_client()
    session = start(client)["session_id"]
    state = ok(client.post(f"/api/session/{session}/reset"))
    assert state["session_id"] == session
    assert state["message_count"] == 0 and state["messages"] == []
    body = ok(client.post(f"/api/chat/{session}", json={"message": "again"}))
    assert body["context"] == {"messages": 0, "truncated": False}
    assert agent.turns[-1].history == ()
    assert ok(client.get(f"/api/session/{session}"))["message_count"] == 2


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("post", "/api/chat/{id}"),
        ("get", "/api/session/{id}"),
        ("post", "/api/session/{id}/reset"),
    ],
)
def test_unknown_and_user_conversation_ids_are_404_on_session_routes(client, method, path):
    conversation = ok(chat(client, "alice", "my own"))["conversation_id"]
    for unknown in (conversation, "00000000-0000-0000-0000-000000000000", "not-an-id", "%00"):
        url = path.format(id=unknown)
        response = getattr(client, method)(url, json={"message": "hi"} if "chat" in url else None)
        assert_problem(response, 404, "not_found")
    assert ok(client.get(f"/api/alice/conversations/{conversation}"))["message_count"] == 2


def test_session_id_is_not_reachable_through_user_routes(client):
    session = start(client)["session_id"]
    assert_problem(client.get(f"/api/alice/conversations/{session}"), 404, "not_found")
    assert_problem(client.delete(f"/api/alice/conversations/{session}"), 404, "not_found")
    assert ok(client.get("/api/alice/conversations"))["items"] == []
    assert ok(client.get(f"/api/session/{session}"))["message_count"] == 2


def test_idle_session_expires_with_410_on_every_session_route(make_app):
    app = make_app({"SESSION_TTL_SECONDS": 60})
    client = app.test_client()
    session = start(client)["session_id"]
    age(app, session, 59)
    ok(client.get(f"/api/session/{session}"))
    age(app, session, 2)
    for response in (
        client.post(f"/api/chat/{session}", json={"message": "still there?"}),
        client.get(f"/api/session/{session}"),
        client.post(f"/api/session/{session}/reset"),
    ):
        assert_problem(response, 410, "session_expired")


def test_activity_keeps_a_session_alive(make_app):
    app = make_app({"SESSION_TTL_SECONDS": 60})
    client = app.test_client()
    session = start(client)["session_id"]
    age(app, session, 50)
    before = datetime.now(UTC)
    ok(client.post(f"/api/chat/{session}", json={"message": "still here"}))
    age(app, session, 50)
    state = ok(client.get(f"/api/session/{session}"))
    assert datetime.fromisoformat(state["expires_at"]) > before


def test_reset_waits_for_the_running_turn_unless_it_is_stale(make_app):
    agent = ScriptedAgent()
    app = make_app({"TURN_STALE_SECONDS": 300}, agent=agent)
    client = app.test_client()
    session = start(client)["session_id"]
    with turn_in_flight(app, agent, session, path=f"/api/chat/{session}"):
        assert_problem(client.post(f"/api/session/{session}/reset"), 409, "turn_in_progress")
        assert ok(client.get(f"/api/session/{session}"))["message_count"] == 4
        age(app, session, 301)  # as if the worker running it had crashed
        state = ok(client.post(f"/api/session/{session}/reset"))
        assert state["message_count"] == 0
        body = ok(client.post(f"/api/chat/{session}", json={"message": "fresh start"}))
        assert body["context"] == {"messages": 0, "truncated": False}
