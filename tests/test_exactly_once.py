"""Exactly once under faults (issue 23): an idempotent retry never executes a tool twice — the
effect and the record that it happened commit together, keyed to the turn — and a failed turn's
message does not leak into the next turn's context."""

from __future__ import annotations

import pytest
from fakellm import call, fail, say
from fakes import ScriptedAgent
from helpers import assert_problem, ok, tasks
from sqlalchemy import select

from chatsvc.agent.base import AgentError, Reply
from chatsvc.db import database
from chatsvc.models import ToolExecution

KEY = {"Idempotency-Key": "once-1"}


def adds_then_fails(title: str):
    def step(turn, tools):
        tools.call("add_task", {"title": title})
        raise AgentError("the model failed after the tool ran")

    return step


def adds(title: str):
    def step(turn, tools):
        return Reply("added", "scripted", [tools.call("add_task", {"title": title})])

    return step


def test_a_retry_after_the_model_failed_past_a_tool_call_does_not_run_it_again(make_app):
    agent = ScriptedAgent([adds_then_fails("buy milk"), adds("buy milk")])
    client = make_app(agent=agent).test_client()
    body = {"message": "add buy milk"}
    assert_problem(client.post("/api/alice/chat", json=body, headers=KEY), 502, "upstream_error")
    assert [t["title"] for t in tasks(client, "alice")] == ["buy milk"]  # the effect happened
    retried = ok(client.post("/api/alice/chat", json=body, headers=KEY))
    assert [t["title"] for t in tasks(client, "alice")] == ["buy milk"], "not executed twice"
    (reused,) = retried["tool_calls"]
    assert reused["result"] == {"task_id": 1, "status": "created", "title": "buy milk"}
    assert len(agent.turns) == 2  # the agent did run again, for the stored message


def test_a_retry_that_asks_for_something_else_does_execute_it(make_app):
    agent = ScriptedAgent([adds_then_fails("buy milk"), adds("buy oat milk")])
    client = make_app(agent=agent).test_client()
    body = {"message": "add milk"}
    assert_problem(client.post("/api/alice/chat", json=body, headers=KEY), 502, "upstream_error")
    ok(client.post("/api/alice/chat", json=body, headers=KEY))
    assert [t["title"] for t in tasks(client, "alice")] == ["buy milk", "buy oat milk"]


def test_without_a_key_the_same_request_twice_is_two_turns(make_app):
    client = make_app(agent=ScriptedAgent([adds("buy milk"), adds("buy milk")])).test_client()
    for _ in range(2):
        ok(client.post("/api/alice/chat", json={"message": "add buy milk"}))
    assert [t["title"] for t in tasks(client, "alice")] == ["buy milk", "buy milk"]


def test_the_same_through_the_openai_adapter_and_the_fake_model(llm_app, fake_llm):
    """The model calls add_task, then its next request fails (500); the client retries with the
    same key; the model calls add_task again: the stored result comes back, no second task."""
    client = llm_app().test_client()
    fake_llm.script(call(("add_task", {"title": "call mum"})), fail(500))
    body = {"message": "remind me to call mum"}
    assert_problem(client.post("/api/alice/chat", json=body, headers=KEY), 502, "upstream_error")
    fake_llm.script(call(("add_task", {"title": "call mum"})), say("Added it."))
    retried = ok(client.post("/api/alice/chat", json=body, headers=KEY))
    assert retried["response"] == "Added it."
    assert [t["title"] for t in tasks(client, "alice")] == ["call mum"]
    assert retried["tool_calls"][0]["result"]["task_id"] == 1


@pytest.mark.parametrize("tool", ["complete_task", "delete_task"])
def test_every_tool_that_changes_state_runs_once_per_turn(make_app, tool):
    def first(turn, tools):
        tools.call(tool, {"task_id": 1})
        raise AgentError("failed after the tool ran")

    def again(turn, tools):
        return Reply("done", "scripted", [tools.call(tool, {"task_id": 1})])

    app = make_app(agent=ScriptedAgent([first, again]))
    client = app.test_client()
    ok(client.post("/api/alice/tasks", json={"title": "the task"}), 201)
    body = {"message": "do it"}
    assert_problem(client.post("/api/alice/chat", json=body, headers=KEY), 502, "upstream_error")
    retried = ok(client.post("/api/alice/chat", json=body, headers=KEY))
    # Executed again, delete would answer task_not_found; complete would touch the task again.
    assert "error" not in retried["tool_calls"][0]["result"], retried["tool_calls"]
    with database(app).read() as session:
        executions = session.scalars(select(ToolExecution.tool)).all()
    assert executions == [tool], "one execution, recorded with its effect"


def test_a_failed_turns_message_is_not_sent_with_the_next_one(make_app):
    agent = ScriptedAgent([Reply("hi", "s"), AgentError("down"), Reply("ok", "s")])
    client = make_app(agent=agent).test_client()
    conversation = ok(client.post("/api/alice/chat", json={"message": "hello"}))["conversation_id"]
    follow = {"conversation_id": conversation}
    assert_problem(
        client.post("/api/alice/chat", json={"message": "delete all my tasks", **follow}),
        502,
        "upstream_error",
    )
    ok(client.post("/api/alice/chat", json={"message": "what's the weather?", **follow}))
    sent = [(m.role, m.content) for m in agent.turns[-1].history]
    assert sent == [("user", "hello"), ("assistant", "hi")]
    assert agent.turns[-1].message == "what's the weather?"


def test_a_tool_s_effect_does_not_outlive_a_failure_to_record_it(make_app):
    """Issue 23's cluster soak: a worker killed after the task committed and before its record
    did left a task the retry created again (the task service commits by itself). The effect
    and its record are one transaction: when recording fails (here a real trigger refuses the
    row, where the soak lost the worker), the effect is rolled back too, and the retry with
    the same key executes the tool once."""
    app = make_app(agent=ScriptedAgent([adds("buy milk"), adds("buy milk")]))
    client = app.test_client()
    engine = database(app).engine
    with engine.begin() as connection:
        for statement in REFUSE_RECORDS[engine.dialect.name]:
            connection.exec_driver_sql(statement)
    body = {"message": "add buy milk"}
    try:
        failed = client.post("/api/alice/chat", json=body, headers=KEY)
        assert failed.status_code >= 500, failed.get_data(as_text=True)
        assert tasks(client, "alice") == [], "the effect was committed without its record"
    finally:
        with engine.begin() as connection:
            connection.exec_driver_sql(ALLOW_RECORDS[engine.dialect.name])
    retried = ok(client.post("/api/alice/chat", json=body, headers=KEY))
    assert [t["title"] for t in tasks(client, "alice")] == ["buy milk"]
    assert retried["tool_calls"][0]["result"]["task_id"] == 1
    with database(app).read() as session:
        assert session.scalars(select(ToolExecution.tool)).all() == ["add_task"]


REFUSE_RECORDS = {
    "sqlite": [
        "CREATE TRIGGER refuse_records BEFORE INSERT ON tool_executions "
        "BEGIN SELECT RAISE(ABORT, 'the worker died here'); END"
    ],
    "postgresql": [
        "CREATE FUNCTION refuse_records() RETURNS trigger LANGUAGE plpgsql AS "
        "$$ BEGIN RAISE EXCEPTION 'the worker died here'; END $$",
        "CREATE TRIGGER refuse_records BEFORE INSERT ON tool_executions "
        "FOR EACH ROW EXECUTE FUNCTION refuse_records()",
    ],
}
ALLOW_RECORDS = {
    "sqlite": "DROP TRIGGER refuse_records",
    "postgresql": "DROP FUNCTION refuse_records() CASCADE",
}
