"""Idempotency-Key on chat POSTs (contract §1): replay, mismatch, in flight, retry of a failure."""

from __future__ import annotations

import json
import threading
import time

import pytest
from fakes import GatedAgent, ScriptedAgent

from chatsvc.agent.base import AgentError, Reply

SSE = {"Accept": "text/event-stream"}


def key(value: str = "key-1", **more: str) -> dict[str, str]:
    return {"Idempotency-Key": value, **more}


def adds_a_task(turn, tools):
    return Reply("Added.", "scripted", [tools.call("add_task", {"title": "buy milk"})])


def events(response) -> list[tuple[str, dict]]:
    found = []
    for block in response.get_data(as_text=True).strip().split("\n\n"):
        lines = dict(line.split(": ", 1) for line in block.splitlines() if ": " in line)
        found.append((lines["event"], json.loads(lines["data"])))
    return found


def test_same_key_same_body_replays_the_first_response_without_a_second_run(make_app):
    agent = ScriptedAgent([adds_a_task])
    client = make_app(agent=agent).test_client()
    first = client.post("/api/alice/chat", json={"message": "buy milk"}, headers=key())
    assert first.status_code == 200
    assert "Idempotent-Replayed" not in first.headers
    again = client.post("/api/alice/chat", json={"message": "buy milk"}, headers=key())
    assert again.status_code == 200
    assert again.headers["Idempotent-Replayed"] == "true"
    assert again.json == first.json
    assert len(agent.turns) == 1
    tasks = client.get("/api/alice/tasks").json["items"]
    assert [task["title"] for task in tasks] == ["buy milk"]  # the tool ran once
    history = client.get(f"/api/alice/conversations/{first.json['conversation_id']}").json
    assert [m["role"] for m in history["messages"]] == ["user", "assistant"]


def test_a_replay_comes_in_the_format_asked_for(make_app):
    client = make_app().test_client()
    first = client.post("/api/alice/chat", json={"message": "hello"}, headers=key())
    streamed = client.post("/api/alice/chat", json={"message": "hello"}, headers=key(**SSE))
    assert streamed.mimetype == "text/event-stream"
    assert streamed.headers["Idempotent-Replayed"] == "true"
    (meta_name, meta), (done_name, done) = events(streamed)
    assert (meta_name, done_name) == ("meta", "done")
    assert meta["message_id"] == first.json["message_id"]
    assert done == first.json
    # And a first attempt made as a stream replays as JSON.
    streamed_first = client.post(
        "/api/alice/chat", json={"message": "again"}, headers=key("key-2", **SSE)
    )
    assert events(streamed_first)[-1][0] == "done"  # reading the stream runs the turn
    replay = client.post("/api/alice/chat", json={"message": "again"}, headers=key("key-2"))
    assert replay.headers["Idempotent-Replayed"] == "true"
    done = dict(events(streamed_first)[-1][1])
    done.pop("timing")
    assert replay.json == done


def test_same_key_with_another_body_is_refused(make_app):
    client = make_app().test_client()
    client.post("/api/alice/chat", json={"message": "hello"}, headers=key())
    refused = client.post("/api/alice/chat", json={"message": "goodbye"}, headers=key())
    assert refused.status_code == 422
    assert refused.json["code"] == "idempotency_mismatch"


def test_keys_are_scoped_to_the_caller_and_the_route(make_app):
    client = make_app().test_client()
    alice = client.post("/api/alice/chat", json={"message": "hello"}, headers=key())
    bob = client.post("/api/bob/chat", json={"message": "hello"}, headers=key())
    assert "Idempotent-Replayed" not in bob.headers
    assert bob.json["conversation_id"] != alice.json["conversation_id"]
    session_id = client.post("/api/chat", json={"message": "start"}).json["session_id"]
    session = client.post(f"/api/chat/{session_id}", json={"message": "hello"}, headers=key())
    assert "Idempotent-Replayed" not in session.headers
    assert session.json["session_id"] == session_id != alice.json["conversation_id"]


@pytest.mark.parametrize("length", [0, 256])
def test_a_key_longer_than_255_characters_is_invalid(client, length):
    response = client.post("/api/alice/chat", json={"message": "hi"}, headers=key("k" * length))
    assert response.status_code == 422
    assert response.json["code"] == "validation_error"
    assert "Idempotency-Key" in response.json["errors"]["headers"]


def test_a_key_of_255_characters_is_fine(client):
    response = client.post("/api/alice/chat", json={"message": "hi"}, headers=key("k" * 255))
    assert response.status_code == 200


def test_a_retry_after_a_failed_run_reruns_the_agent_for_the_stored_message(make_app):
    agent = ScriptedAgent([AgentError("the provider failed")])
    client = make_app(agent=agent).test_client()
    failed = client.post("/api/alice/chat", json={"message": "hello there"}, headers=key())
    assert failed.status_code == 502
    retried = client.post("/api/alice/chat", json={"message": "hello there"}, headers=key())
    assert retried.status_code == 200
    assert "Idempotent-Replayed" not in retried.headers
    assert retried.json["response"] == "echo: hello there"
    assert [turn.message for turn in agent.turns] == ["hello there", "hello there"]
    assert agent.turns[1].history == ()  # its own message is the turn, not history
    conversation = retried.json["conversation_id"]
    history = client.get(f"/api/alice/conversations/{conversation}").json
    assert [(m["role"], m["status"]) for m in history["messages"]] == [
        ("user", "completed"),
        ("assistant", "failed"),
        ("assistant", "completed"),
    ]
    assert history["message_count"] == 3
    replay = client.post("/api/alice/chat", json={"message": "hello there"}, headers=key())
    assert replay.headers["Idempotent-Replayed"] == "true"
    assert replay.json == retried.json


def test_same_key_while_the_first_attempt_runs_is_409_even_from_another_worker(make_app):
    """Two apps on one database stand for two worker processes: the claim lives in the database."""
    gated = GatedAgent()
    first_worker = make_app(agent=gated).test_client()
    second_worker = make_app(agent=ScriptedAgent()).test_client()
    outcome: dict[str, object] = {}

    def first_attempt():
        outcome["first"] = first_worker.post(
            "/api/alice/chat", json={"message": "slow"}, headers=key()
        )

    thread = threading.Thread(target=first_attempt)
    thread.start()
    try:
        assert gated.entered.wait(timeout=10)
        busy = second_worker.post("/api/alice/chat", json={"message": "slow"}, headers=key())
        assert busy.status_code == 409
        assert busy.json["code"] == "turn_in_progress"
    finally:
        gated.release()
        thread.join(timeout=10)
    first = outcome["first"]
    assert first.status_code == 200
    replay = second_worker.post("/api/alice/chat", json={"message": "slow"}, headers=key())
    assert replay.headers["Idempotent-Replayed"] == "true"
    assert replay.json == first.json


def test_one_turn_at_a_time_per_conversation_across_workers(make_app):
    gated = GatedAgent()
    first_worker = make_app(agent=gated).test_client()
    second_worker = make_app(agent=ScriptedAgent()).test_client()
    conversation = second_worker.post("/api/alice/chat", json={"message": "hi"}).json[
        "conversation_id"
    ]
    body = {"message": "next", "conversation_id": conversation}
    thread = threading.Thread(target=lambda: first_worker.post("/api/alice/chat", json=body))
    thread.start()
    try:
        assert gated.entered.wait(timeout=10)
        busy = second_worker.post("/api/alice/chat", json=body)
        assert busy.status_code == 409
        assert busy.json["code"] == "turn_in_progress"
    finally:
        gated.release()
        thread.join(timeout=10)


def test_an_expired_key_starts_a_new_turn(make_app):
    client = make_app({"IDEMPOTENCY_TTL_SECONDS": 1}).test_client()
    first = client.post("/api/alice/chat", json={"message": "hello"}, headers=key())
    deadline = time.monotonic() + 5
    while True:
        again = client.post("/api/alice/chat", json={"message": "hello"}, headers=key())
        if "Idempotent-Replayed" not in again.headers or time.monotonic() > deadline:
            break
        assert again.json == first.json
        time.sleep(0.1)
    assert "Idempotent-Replayed" not in again.headers
    assert again.json["conversation_id"] != first.json["conversation_id"]


def test_cleanup_purges_expired_keys(make_app):
    app = make_app({"IDEMPOTENCY_TTL_SECONDS": 1})
    client = app.test_client()
    client.post("/api/alice/chat", json={"message": "hello"}, headers=key())
    deadline = time.monotonic() + 5
    while True:
        output = app.test_cli_runner().invoke(args=["sessions", "cleanup"]).output
        if "purged 1 expired idempotency keys" in output or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    assert "purged 1 expired idempotency keys" in output
