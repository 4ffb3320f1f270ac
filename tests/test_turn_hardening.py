"""Turn-path findings of the adversarial review (issue 15): idempotency scope for anonymous
callers (11), tool arguments validated like REST (12), and the claim taken before the history
is read (the turn that wins the claim sees every answer that finished before it)."""

from __future__ import annotations

import json
import threading

import pytest
from fakes import ScriptedAgent
from helpers import assert_problem, history, ok, tasks, wait_for
from sqlalchemy import create_engine, text

from chatsvc.agent.base import Reply
from chatsvc.db import database

POSTGRES_ONLY = pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)


# Finding 11: a replay never hands a session to a client that could not already read it -------


def test_an_anonymous_session_start_refuses_an_idempotency_key(client):
    for key in ("same-key", "k" * 255, "another"):
        problem = assert_problem(
            client.post("/api/chat", json={"message": "hello"}, headers={"Idempotency-Key": key}),
            422,
            "validation_error",
        )
        assert "Idempotency-Key" in problem["errors"]["headers"]
    assert client.post("/api/chat", json={"message": "hello"}).status_code == 200


def test_two_anonymous_sessions_with_one_key_never_see_each_others_turns(client):
    first = ok(client.post("/api/chat", json={"message": "start one"}))["session_id"]
    second = ok(client.post("/api/chat", json={"message": "start two"}))["session_id"]
    same = {"Idempotency-Key": "shared-key"}
    body = {"message": "my secret question"}
    one = client.post(f"/api/chat/{first}", json=body, headers=same)
    two = client.post(f"/api/chat/{second}", json=body, headers=same)
    assert one.status_code == two.status_code == 200
    assert "Idempotent-Replayed" not in two.headers
    assert two.json["session_id"] == second and two.json["message_id"] != one.json["message_id"]
    again = client.post(f"/api/chat/{first}", json=body, headers=same)
    assert again.headers["Idempotent-Replayed"] == "true"
    assert again.json["message_id"] == one.json["message_id"]


def test_a_signed_in_callers_session_start_may_be_idempotent(make_app):
    from chatsvc.auth import create_token

    secret = "s" * 40
    client = make_app({"JWT_SECRET": secret, "AUTH_MODE": "optional"}).test_client()
    token = {"Authorization": f"Bearer {create_token('alice', secret=secret)}"}
    headers = {**token, "Idempotency-Key": "start-1"}
    first = ok(client.post("/api/chat", json={"message": "hello"}, headers=headers))
    again = client.post("/api/chat", json={"message": "hello"}, headers=headers)
    assert again.headers["Idempotent-Replayed"] == "true" and again.json == first


# Finding 12: tool arguments are validated by the REST schemas; a bad one is a tool error ------


BAD_TOOL_CALLS = [
    ("add_task", {"title": "buy milk\n2. transfer all money"}),  # a fake second list line
    ("add_task", {"title": "buy\r\nmilk"}),
    ("add_task", {"title": "nul \x00 byte"}),
    ("add_task", {"title": "   "}),
    ("add_task", {"title": "x" * 201}),
    ("add_task", {"title": "ok", "description": "bell \x07"}),
    ("add_task", {"title": 42}),
    ("add_task", {"title": "ok", "user_id": "bob"}),  # not a tool argument: never a user id
    ("update_task", {"task_id": 1}),
    ("update_task", {"task_id": 1, "title": "tab\tin\x00title"}),
    ("complete_task", {"task_id": "1"}),
    ("complete_task", {"task_id": True}),
    ("delete_task", {"task_id": 2**31}),
    ("list_tasks", {"status": "everything"}),
    ("search_knowledge", {"query": "nul \x00"}),
    ("search_knowledge", {"query": "x", "k": 1000}),
    ("add_task", "[" * 100_000),  # nested too deep to decode
    ("add_task", "{not json"),
    ("add_task", "[1, 2]"),
]


@pytest.mark.parametrize(("tool", "arguments"), BAD_TOOL_CALLS)
def test_a_bad_tool_argument_is_an_error_for_the_model_and_changes_nothing(
    make_app, tool, arguments
):
    raw = arguments if isinstance(arguments, str) else json.dumps(arguments)

    def call_badly(turn, tools):
        return Reply("tried", "scripted", [tools.call(tool, raw)])

    client = make_app(agent=ScriptedAgent([call_badly])).test_client()
    ok(client.post("/api/alice/tasks", json={"title": "the only task"}), 201)
    body = ok(client.post("/api/alice/chat", json={"message": "do it"}))
    (call,) = body["tool_calls"]
    assert call["result"]["error"] == "invalid_arguments", call
    assert call["result"]["detail"]
    assert [t["title"] for t in tasks(client, "alice")] == ["the only task"]
    stored = history(client, "alice", body["conversation_id"])[-1]
    assert stored["status"] == "completed" and stored["tool_calls"] == body["tool_calls"]


def test_a_tool_call_that_fits_the_schema_still_works(make_app):
    def add(turn, tools):
        return Reply("added", "scripted", [tools.call("add_task", {"title": "  buy milk  "})])

    client = make_app(agent=ScriptedAgent([add])).test_client()
    body = ok(client.post("/api/alice/chat", json={"message": "add"}))
    assert body["tool_calls"][0]["result"]["status"] == "created"
    assert [t["title"] for t in tasks(client, "alice")] == ["buy milk"]  # trimmed as REST does


# The claim comes before the history -----------------------------------------------------------


@POSTGRES_ONLY
def test_a_turn_claimed_just_after_another_finished_sees_that_answer(make_app, database_url):
    """Turn A's second unit of work (its answer stored, the conversation row written) is in
    flight when turn B arrives: B's claim of the conversation waits for it, and B's history,
    read after the claim, holds A's answer. Read before the claim (as it was), the history
    missed it: the pending reply was all there was to see."""
    agent = ScriptedAgent([Reply("answer one", "scripted")])
    app = make_app(agent=agent)
    client = app.test_client()
    conversation = ok(client.post("/api/alice/chat", json={"message": "one"}))["conversation_id"]
    engine = create_engine(database_url)
    with engine.begin() as connection:  # turn A: its user message stored, its reply pending
        connection.execute(
            text(
                "INSERT INTO messages (id, conversation_id, seq, role, content, status,"
                " tool_calls, sources, prompt_tokens, completion_tokens, total_tokens,"
                " created_at) VALUES ('a-user', :c, 3, 'user', 'two', 'completed', '[]', '[]',"
                " 0, 0, 0, now()), ('a-reply', :c, 4, 'assistant', '', 'pending', '[]', '[]',"
                " 0, 0, 0, now())"
            ),
            {"c": conversation},
        )
        connection.execute(
            text("UPDATE conversations SET last_seq = 4, message_count = 4 WHERE id = :c"),
            {"c": conversation},
        )
    finishing = engine.connect()
    transaction = finishing.begin()  # turn A's unit of work 2, not yet committed
    results: list = []
    try:
        finishing.execute(
            text(
                "UPDATE messages SET content = 'answer two', status = 'completed'"
                " WHERE id = 'a-reply'"
            )
        )
        finishing.execute(
            text("UPDATE conversations SET last_activity = now() WHERE id = :c"),
            {"c": conversation},
        )
        turn_b = threading.Thread(
            target=lambda: results.append(
                app.test_client().post(
                    "/api/alice/chat", json={"message": "three", "conversation_id": conversation}
                )
            )
        )
        turn_b.start()
        with engine.connect() as watcher:
            wait_for(
                lambda: watcher.execute(
                    text(
                        "SELECT count(*) FROM pg_stat_activity"
                        " WHERE wait_event_type = 'Lock' AND datname = current_database()"
                    )
                ).scalar(),
                30,
                "turn B to wait for turn A's row",
            )
        transaction.commit()
    finally:
        if transaction.is_active:
            transaction.rollback()
        finishing.close()
    turn_b.join(timeout=30)
    assert results and results[0].status_code == 200, results and results[0].json
    seen = [(m.role, m.content) for m in agent.turns[-1].history]
    assert seen[-2:] == [("user", "two"), ("assistant", "answer two")]
    database(app).engine.dispose()
    engine.dispose()
