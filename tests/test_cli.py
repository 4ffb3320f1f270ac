"""`flask sessions cleanup`: expired sessions go after their retention, stuck turns fail."""

from __future__ import annotations

from fakes import ScriptedAgent
from helpers import age, assert_problem, chat, history, ok, turn_in_flight

SHORT = {"SESSION_TTL_SECONDS": 60, "SESSION_RETENTION_SECONDS": 120}


def cleanup(app):
    result = app.test_cli_runner().invoke(args=["sessions", "cleanup"])
    assert result.exit_code == 0, result.output
    return result.output


def start(client):
    return ok(client.post("/api/chat", json={"message": "hello"}))["session_id"]


def test_cleanup_deletes_sessions_expired_beyond_retention_only(make_app):
    app = make_app(SHORT)
    client = app.test_client()
    gone, expired, alive = start(client), start(client), start(client)
    age(app, gone, 60 + 120 + 1)
    age(app, expired, 60 + 119)
    assert "deleted 1 sessions" in cleanup(app)
    assert_problem(client.get(f"/api/session/{gone}"), 404, "not_found")
    assert_problem(client.post(f"/api/chat/{gone}", json={"message": "hi"}), 404, "not_found")
    assert_problem(client.get(f"/api/session/{expired}"), 410, "session_expired")
    assert ok(client.get(f"/api/session/{alive}"))["message_count"] == 2


def test_user_conversations_are_kept_unless_they_have_a_ttl(make_app):
    app = make_app(SHORT)
    client = app.test_client()
    conversation = ok(chat(client, "alice", "keep me"))["conversation_id"]
    age(app, conversation, 10 * 86400)
    assert "0 conversations" in cleanup(app)
    assert len(history(client, "alice", conversation)) == 2

    expiring = make_app({**SHORT, "CONVERSATION_TTL_SECONDS": 60})
    assert "1 conversations" in cleanup(expiring)
    assert_problem(client.get(f"/api/alice/conversations/{conversation}"), 404, "not_found")


def stale_app(make_app):
    agent = ScriptedAgent()
    app = make_app({"TURN_STALE_SECONDS": 300}, agent=agent)
    conversation = ok(chat(app.test_client(), "alice", "first"))["conversation_id"]
    return app, agent, conversation


def test_cleanup_fails_turns_stuck_pending(make_app):
    app, agent, conversation = stale_app(make_app)
    client = app.test_client()
    with turn_in_flight(app, agent, conversation):
        assert "failed 0 stuck turns" in cleanup(app)  # still fresh: a turn in flight
        assert_problem(
            chat(client, "alice", "hello?", conversation_id=conversation), 409, "turn_in_progress"
        )
        age(app, conversation, 301)
        assert "failed 1 stuck turns" in cleanup(app)
        stored = history(client, "alice", conversation)[-1]
        assert (stored["status"], stored["error_code"]) == ("failed", "interrupted")
        body = ok(chat(client, "alice", "are you back?", conversation_id=conversation))
        assert body["response"] == "echo: are you back?"
    statuses = [m["status"] for m in history(client, "alice", conversation)]
    assert statuses == ["completed", "completed", "completed", "failed", "completed", "completed"]


def test_a_new_turn_recovers_a_stale_conversation_without_cleanup(make_app):
    app, agent, conversation = stale_app(make_app)
    client = app.test_client()
    with turn_in_flight(app, agent, conversation):
        age(app, conversation, 301)
        ok(chat(client, "alice", "again", conversation_id=conversation))
    assert history(client, "alice", conversation)[3]["error_code"] == "interrupted"
