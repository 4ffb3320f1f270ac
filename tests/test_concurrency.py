"""Concurrent requests: nothing lost, nothing duplicated, numbers stay gap-free."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
from fakes import GatedAgent, ScriptedAgent

from chatsvc.agent.base import AgentError, Reply


def test_simultaneous_task_creations_get_unique_gap_free_numbers(app):
    def create(i: int) -> int:
        response = app.test_client().post("/api/alice/tasks", json={"title": f"task {i}"})
        assert response.status_code == 201, response.json
        return response.json["task_id"]

    with ThreadPoolExecutor(max_workers=16) as pool:
        numbers = list(pool.map(create, range(50)))

    assert sorted(numbers) == list(range(1, 51))
    listed = app.test_client().get("/api/alice/tasks?limit=100").json["items"]
    assert [task["task_id"] for task in listed] == list(range(1, 51))


def test_simultaneous_turns_on_one_conversation_never_interleave(make_app):
    agent = ScriptedAgent(steps=[lambda turn, tools: Reply(f"re: {turn.message}", "scripted")] * 60)
    app = make_app(agent=agent)
    first = app.test_client().post("/api/alice/chat", json={"message": "start"}).json
    conversation_id = first["conversation_id"]

    def turn(i: int) -> int:
        response = app.test_client().post(
            "/api/alice/chat", json={"message": f"m{i}", "conversation_id": conversation_id}
        )
        assert response.status_code in (200, 409), response.json
        if response.status_code == 409:
            assert response.json["code"] == "turn_in_progress"
        return response.status_code

    with ThreadPoolExecutor(max_workers=16) as pool:
        statuses = list(pool.map(turn, range(50)))

    accepted = statuses.count(200)
    assert accepted >= 1
    detail = app.test_client().get(f"/api/alice/conversations/{conversation_id}?limit=100").json
    messages = detail["messages"]
    assert detail["message_count"] == len(messages) == 2 * (accepted + 1)
    # Pairs in order: each user message is followed by the answer to it.
    for user, assistant in zip(messages[::2], messages[1::2], strict=True):
        assert user["role"] == "user" and assistant["role"] == "assistant"
        assert assistant["content"] == f"re: {user['content']}"
        assert assistant["status"] == "completed"
    assert len({m["id"] for m in messages}) == len(messages)


class Race:
    """`requests` identical idempotent POSTs at once, while the first attempt's agent run is
    held open: every other request arrives while it runs (the race is proven to happen, not
    hoped for), then the run is released."""

    def __init__(self) -> None:
        self.running = threading.Event()
        self.release = threading.Event()

    def echo(self, turn, tools):
        self.running.set()
        assert self.release.wait(timeout=30), "the race never ended"
        return Reply(f"re: {turn.message}", "scripted")

    def run(self, app, requests: int, path: str, body: dict, key: str) -> list:
        def send(_: int):
            return app.test_client().post(path, json=body, headers={"Idempotency-Key": key})

        with ThreadPoolExecutor(max_workers=requests) as pool:
            futures = [pool.submit(send, n) for n in range(requests)]
            assert self.running.wait(timeout=30), "no attempt reached the agent"
            deadline = time.monotonic() + 60
            while sum(f.done() for f in futures) < requests - 1:
                assert time.monotonic() < deadline, "the racing requests did not all answer"
                time.sleep(0.01)
            raced = [f.result() for f in futures if f.done()]
            self.release.set()
            responses = [f.result(timeout=60) for f in futures]
        # Everything that answered before the release raced the running attempt: all 409.
        assert len(raced) == requests - 1
        assert all(r.status_code == 409 for r in raced), [r.status_code for r in raced]
        return responses


def _one_turn(responses) -> dict:
    """One 200 (the attempt that ran); every other request 409 turn_in_progress."""
    done = [r for r in responses if r.status_code == 200]
    busy = [r for r in responses if r.status_code == 409]
    assert len(done) == 1 and len(busy) == len(responses) - 1, [r.status_code for r in responses]
    assert all(r.json["code"] == "turn_in_progress" for r in busy)
    return done[0].json


@pytest.mark.parametrize("new_conversation", [True, False], ids=["new", "existing"])
def test_replays_racing_each_other_run_the_agent_once(make_app, new_conversation):
    race = Race()
    agent = ScriptedAgent(steps=[race.echo] if new_conversation else [Reply("hi", "s"), race.echo])
    app = make_app(agent=agent)
    body = {"message": "only once"}
    if not new_conversation:
        body["conversation_id"] = (
            app.test_client()
            .post("/api/alice/chat", json={"message": "start"})
            .json["conversation_id"]
        )
        agent.turns.clear()
    first = _one_turn(race.run(app, 20, "/api/alice/chat", body, "race-1"))
    assert [turn.message for turn in agent.turns] == ["only once"], "one agent run"
    again = app.test_client().post(
        "/api/alice/chat", json=body, headers={"Idempotency-Key": "race-1"}
    )
    assert again.headers["Idempotent-Replayed"] == "true" and again.json == first
    listed = app.test_client().get("/api/alice/conversations").json["items"]
    assert len(listed) == 1, "one conversation"
    detail = app.test_client().get(f"/api/alice/conversations/{first['conversation_id']}").json
    users = [m for m in detail["messages"] if m["role"] == "user"]
    assert [m["content"] for m in users].count("only once") == 1, "one user message"
    assert detail["message_count"] == len(detail["messages"])
    assert detail["messages"][-1]["id"] == first["message_id"]


def test_retries_of_a_failed_turn_racing_each_other_rerun_it_once(make_app):
    race = Race()
    agent = ScriptedAgent(steps=[AgentError("the provider failed"), race.echo])
    app = make_app(agent=agent)
    body = {"message": "try again"}
    client = app.test_client()
    failed = client.post("/api/alice/chat", json=body, headers={"Idempotency-Key": "race-2"})
    assert failed.status_code == 502
    first = _one_turn(race.run(app, 20, "/api/alice/chat", body, "race-2"))
    assert [turn.message for turn in agent.turns] == ["try again", "try again"]
    detail = client.get(f"/api/alice/conversations/{first['conversation_id']}").json
    assert [(m["role"], m["status"]) for m in detail["messages"]] == [
        ("user", "completed"),
        ("assistant", "failed"),
        ("assistant", "completed"),
    ]
    assert detail["message_count"] == 3


@pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)
def test_a_turn_that_waited_to_claim_is_stamped_after_the_turn_it_waited_for(make_app):
    """Issue 23's single-host soak (`history_order`: created_at went back): a turn's messages
    were stamped when its request began; the request then waited (for a connection: the
    database had just come back after a cut) while the turn before it settled, stamping its
    reply, and released the conversation; the later user message was older than the reply
    before it. Here the second request is held just before its claim (the first statement
    that claims the conversation) until the first turn has settled: its messages are stamped
    once the conversation is its own, after that reply. PostgreSQL: a claim that waited reads
    the committed release (SQLite's snapshot would refuse the write instead)."""
    from sqlalchemy import event

    from chatsvc.db import database

    gated = GatedAgent()
    running = make_app(agent=gated)
    waiting = make_app(agent=ScriptedAgent(steps=[Reply("second answer", "scripted")]))
    gated.release()  # the first turn, which creates the conversation, goes through
    started = running.test_client().post("/api/alice/chat", json={"message": "start"}).json
    conversation = started["conversation_id"]
    gated.gate.clear()
    gated.entered.clear()

    claiming, go_on = threading.Event(), threading.Event()

    def hold_the_claim(conn, cursor, statement, parameters, context, executemany):  # noqa: ANN001
        if statement.lstrip().startswith("UPDATE conversations") and "RETURNING" in statement:
            claiming.set()
            assert go_on.wait(20), "never let go"

    engine = database(waiting).engine
    event.listen(engine, "before_cursor_execute", hold_the_claim)
    results: dict[str, object] = {}
    body = {"conversation_id": conversation}
    first = threading.Thread(
        target=lambda: results.__setitem__(
            "first", running.test_client().post("/api/alice/chat", json={**body, "message": "one"})
        )
    )
    first.start()
    assert gated.entered.wait(10)  # the first turn holds the conversation, in its agent
    second = threading.Thread(
        target=lambda: results.__setitem__(
            "second", waiting.test_client().post("/api/alice/chat", json={**body, "message": "two"})
        )
    )
    second.start()
    assert claiming.wait(10)  # the second request began, and is about to claim
    gated.release()
    first.join(10)
    assert results["first"].status_code == 200  # the first turn settled, the conversation free
    go_on.set()
    second.join(10)
    event.remove(engine, "before_cursor_execute", hold_the_claim)
    assert results["second"].status_code == 200, results["second"].json
    shown = running.test_client().get(f"/api/alice/conversations/{conversation}").json
    said = [(m["role"], m["content"]) for m in shown["messages"]]
    assert said[2:] == [("user", "one"), ("assistant", "released"), ("user", "two"),
                        ("assistant", "second answer")]  # fmt: skip
    times = [m["created_at"] for m in shown["messages"]]
    assert times == sorted(times), list(zip(said, times, strict=True))
