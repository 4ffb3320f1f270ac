"""POST /api/{user_id}/chat: the Todo assistant's turns (contract §2)."""

from __future__ import annotations

import threading

import pytest
from fakes import GatedAgent, ScriptedAgent
from helpers import assert_problem, chat, history, ok, tasks, turn_in_flight

from chatsvc.agent.base import Reply, ToolCall, UpstreamBusy, UpstreamError, UpstreamTimeout

MESSAGE_FIELDS = {
    "id", "role", "content", "status", "created_at", "tool_calls", "sources", "usage",
}  # fmt: skip


def test_first_message_starts_a_conversation_and_runs_the_task_tool(client):
    body = ok(chat(client, "alice", "Add a task to buy milk"))
    assert body["conversation_id"] and body["message_id"]
    assert "session_id" not in body
    assert body["tool_calls"] == [
        {
            "tool": "add_task",
            "parameters": {"title": "buy milk"},
            "result": {"task_id": 1, "status": "created", "title": "buy milk"},
        }
    ]
    assert "buy milk" in body["response"]
    assert body["sources"] == []
    assert body["usage"] == {"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0}
    assert body["model"] == "local"
    assert body["status"] == "completed"
    assert body["created_at"].endswith("Z")
    assert body["context"] == {"messages": 0, "truncated": False}
    assert [t["title"] for t in tasks(client, "alice")] == ["buy milk"]


def test_json_turn_reports_server_timing(client):
    response = chat(client, "alice", "hello")
    ok(response)
    names = [part.split(";")[0].strip() for part in response.headers["Server-Timing"].split(",")]
    assert names == ["db", "agent", "total"]


def test_conversation_is_titled_from_its_first_message(client):
    long_message = "Please remember " + "very " * 40 + "much"
    first = ok(chat(client, "alice", long_message))
    listed = ok(client.get("/api/alice/conversations"))["items"]
    assert listed[0]["id"] == first["conversation_id"]
    assert listed[0]["kind"] == "user"
    assert long_message.startswith(listed[0]["title"].rstrip("…"))
    assert len(listed[0]["title"]) <= 80


def test_continuing_sends_the_history_and_stores_both_messages(make_app):
    agent = ScriptedAgent()
    client = make_app(agent=agent).test_client()
    first = ok(chat(client, "alice", "one"))
    second = ok(chat(client, "alice", "two", conversation_id=first["conversation_id"]))
    assert second["conversation_id"] == first["conversation_id"]
    assert second["context"] == {"messages": 2, "truncated": False}
    assert [(m.role, m.content) for m in agent.turns[1].history] == [
        ("user", "one"),
        ("assistant", "echo: one"),
    ]
    assert agent.turns[1].user_id == "alice"
    messages = history(client, "alice", first["conversation_id"])
    assert [(m["role"], m["content"], m["status"]) for m in messages] == [
        ("user", "one", "completed"),
        ("assistant", "echo: one", "completed"),
        ("user", "two", "completed"),
        ("assistant", "echo: two", "completed"),
    ]
    assert set(messages[0]) >= MESSAGE_FIELDS
    assert messages[3]["id"] == second["message_id"]
    assert messages[3]["created_at"] == second["created_at"]
    assert [m["created_at"] for m in messages] == sorted(m["created_at"] for m in messages)


def test_agent_receives_the_newest_twenty_messages_oldest_first(make_app):
    agent = ScriptedAgent()
    client = make_app(agent=agent).test_client()
    conversation = ok(chat(client, "alice", "m0"))["conversation_id"]
    for n in range(1, 10):  # 10 turns: exactly 20 stored messages, all of them sent
        ok(chat(client, "alice", f"m{n}", conversation_id=conversation))
    body = ok(chat(client, "alice", "m10", conversation_id=conversation))
    assert body["context"] == {"messages": 20, "truncated": False}
    assert agent.turns[-1].history[0].content == "m0"
    body = ok(chat(client, "alice", "last", conversation_id=conversation))
    assert body["context"] == {"messages": 20, "truncated": True}
    sent = [m.content for m in agent.turns[-1].history]
    expected = [text for n in range(1, 11) for text in (f"m{n}", f"echo: m{n}")]
    assert sent == expected
    assert agent.turns[-1].message == "last"


def test_history_is_trimmed_to_the_token_budget_from_the_oldest_end(make_app):
    # About four characters a token plus four a message: "m1" costs 4, "echo: m1" 6, "q" 4.
    agent = ScriptedAgent()
    client = make_app({"HISTORY_MAX_TOKENS": 4 + 2 * (4 + 6)}, agent=agent).test_client()
    conversation = ok(chat(client, "alice", "m0"))["conversation_id"]
    for n in (1, 2):
        ok(chat(client, "alice", f"m{n}", conversation_id=conversation))
    body = ok(chat(client, "alice", "q", conversation_id=conversation))
    assert body["context"] == {"messages": 4, "truncated": True}
    assert [m.content for m in agent.turns[-1].history] == ["m1", "echo: m1", "m2", "echo: m2"]


def test_tool_calls_come_back_with_the_history(make_app):
    call = ToolCall("list_tasks", {"status": "all"}, {"tasks": []})
    agent = ScriptedAgent([Reply("You have no tasks.", "scripted", [call])])
    client = make_app(agent=agent).test_client()
    first = ok(chat(client, "alice", "show my tasks"))
    ok(chat(client, "alice", "thanks", conversation_id=first["conversation_id"]))
    assert agent.turns[1].history[1].tool_calls == (call,)
    stored = history(client, "alice", first["conversation_id"])[1]
    assert stored["tool_calls"] == [call.as_dict()]


def test_message_is_stored_trimmed_and_otherwise_verbatim(make_app):
    agent = ScriptedAgent()
    client = make_app(agent=agent).test_client()
    text = "🎉 مرحبا \u200fبالعالم\u200e — שָׁלוֹם\tz̴͉a\r\nlgo 👩🏽‍💻"
    body = ok(chat(client, "alice", f"  \n {text} \t\n"))
    assert agent.turns[0].message == text
    assert history(client, "alice", body["conversation_id"])[0]["content"] == text


def test_unknown_or_foreign_conversation_is_404(client, subtests):
    bob = ok(chat(client, "bob", "secret plans"))["conversation_id"]
    for wanted in [bob, "nope", "00000000-0000-0000-0000-000000000000", "x" * 300, "\x00"]:
        with subtests.test(repr(wanted[:10])):
            response = chat(client, "alice", "hi", conversation_id=wanted)
            assert_problem(response, 404, "not_found")
    assert len(history(client, "bob", bob)) == 2
    assert ok(client.get("/api/alice/conversations"))["items"] == []


def test_a_session_id_is_not_a_user_conversation(client):
    session = ok(client.post("/api/chat", json={"message": "hello"}))["session_id"]
    assert_problem(chat(client, "alice", "hi", conversation_id=session), 404, "not_found")


def test_tasks_are_per_user(client):
    ok(chat(client, "alice", "add buy milk"))
    body = ok(chat(client, "bob", "show my tasks"))
    assert body["tool_calls"][0]["result"] == {"tasks": []}
    ok(chat(client, "bob", "add walk the dog"))
    assert [t["task_id"] for t in tasks(client, "bob")] == [1]
    body = ok(chat(client, "bob", "delete task 2"))
    assert body["tool_calls"][0]["result"]["error"] == "task_not_found"
    ok(chat(client, "bob", "delete task 1"))
    assert [t["title"] for t in tasks(client, "alice")] == ["buy milk"]
    assert tasks(client, "bob") == []


@pytest.mark.parametrize(
    ("error", "status", "code"),
    [
        (UpstreamError(), 502, "upstream_error"),
        (UpstreamTimeout(), 504, "upstream_timeout"),
        (UpstreamBusy(retry_after=7), 503, "upstream_busy"),
        (RuntimeError("bug with secret=hunter2"), 500, "internal_error"),
    ],
)
def test_failing_agent_keeps_the_message_and_the_conversation_usable(make_app, error, status, code):
    agent = ScriptedAgent()
    client = make_app(agent=agent).test_client()
    conversation = ok(chat(client, "alice", "hello"))["conversation_id"]
    agent.steps.append(error)
    problem = assert_problem(
        chat(client, "alice", "are you there?", conversation_id=conversation), status, code
    )
    assert "Traceback" not in str(problem) and "hunter2" not in str(problem)
    messages = history(client, "alice", conversation)
    assert [(m["role"], m["content"], m["status"]) for m in messages[2:]] == [
        ("user", "are you there?", "completed"),
        ("assistant", "", "failed"),
    ]
    assert messages[3]["error_code"] == code
    retried = ok(chat(client, "alice", "again", conversation_id=conversation))
    assert retried["status"] == "completed"
    # Neither the failed reply nor the message it failed to answer goes to the model (issue
    # 23): the next turn must not silently carry out what the user may have given up on. The
    # history a person reads keeps both.
    assert [m.content for m in agent.turns[-1].history] == ["hello", "echo: hello"]
    assert [m["content"] for m in history(client, "alice", conversation)][2:4] == [
        "are you there?",
        "",
    ]


def test_busy_upstream_says_when_to_retry(make_app):
    client = make_app(agent=ScriptedAgent([UpstreamBusy(retry_after=7)])).test_client()
    response = chat(client, "alice", "hello")
    assert_problem(response, 503, "upstream_busy")
    assert response.headers["Retry-After"] == "7"


def test_failed_first_turn_is_found_in_the_conversation_list(make_app):
    client = make_app(agent=ScriptedAgent([UpstreamTimeout()])).test_client()
    assert_problem(chat(client, "alice", "first words"), 504, "upstream_timeout")
    listed = ok(client.get("/api/alice/conversations"))["items"]
    assert len(listed) == 1 and listed[0]["message_count"] == 2
    messages = history(client, "alice", listed[0]["id"])
    assert [(m["content"], m["status"]) for m in messages] == [
        ("first words", "completed"),
        ("", "failed"),
    ]


def test_second_turn_while_one_runs_is_409(make_app):
    agent = ScriptedAgent()
    app = make_app(agent=agent)
    client = app.test_client()
    conversation = ok(chat(client, "alice", "start"))["conversation_id"]
    with turn_in_flight(app, agent, conversation):
        second = chat(client, "alice", "impatient", conversation_id=conversation)
        assert_problem(second, 409, "turn_in_progress")
    messages = history(client, "alice", conversation)
    assert [m["content"] for m in messages] == ["start", "echo: start", "crashing", "too late"]
    assert ok(chat(client, "alice", "now", conversation_id=conversation))["status"] == "completed"


def test_a_running_turn_holds_no_connection_and_no_lock(make_app):
    # One pooled connection (PostgreSQL) and a short lock wait (SQLite): if the turn kept its
    # transaction open while the agent waits, these requests would stall and fail.
    agent = GatedAgent()
    app = make_app(
        {"DB_POOL_SIZE": 1, "DB_POOL_TIMEOUT": 2, "SQLITE_BUSY_TIMEOUT_MS": 2000}, agent=agent
    )
    client = app.test_client()
    results = {}
    worker = threading.Thread(
        target=lambda: results.update(turn=chat(app.test_client(), "alice", "slow"))
    )
    worker.start()
    try:
        assert agent.entered.wait(timeout=10)
        ok(client.post("/api/alice/tasks", json={"title": "meanwhile"}), 201)
        listed = ok(client.get("/api/alice/conversations"))["items"]
        assert listed[0]["message_count"] == 2
    finally:
        agent.release()
        worker.join(timeout=10)
    assert ok(results["turn"])["response"] == "released"
