"""Quotas on chat turns (contract §10), through HTTP: refused before any model call once the
day's tokens are spent, counted as turns finish, X-Quota-Remaining on chat responses, anonymous
callers counted per address, replays free — on both databases."""

from __future__ import annotations

import pytest
from fakes import ScriptedAgent
from helpers import assert_problem, ok, sse_events

from chatsvc.agent.base import Reply, Usage

CAP = 100


def costing(tokens: int):
    def answer(turn, tools):
        return Reply(
            f"re: {turn.message}",
            "scripted",
            usage=Usage(tokens // 2, tokens - tokens // 2, tokens),
        )

    return answer


@pytest.fixture
def agent():
    return ScriptedAgent()


@pytest.fixture
def client(make_app, agent):
    return make_app({"QUOTA_TOKENS_PER_DAY": CAP}, agent=agent).test_client()


def test_a_spent_quota_refuses_the_next_turn_before_the_model(client, agent):
    agent.steps.extend([costing(80), costing(50), costing(10)])
    first = client.post("/api/alice/chat", json={"message": "one"})
    assert ok(first)["usage"]["total_tokens"] == 80
    assert first.headers["X-Quota-Remaining"] == "20"
    conversation = first.json["conversation_id"]
    # 20 left: admitted, overruns, completes and counts.
    second = client.post(
        "/api/alice/chat", json={"message": "two", "conversation_id": conversation}
    )
    assert ok(second)["status"] == "completed"
    assert second.headers["X-Quota-Remaining"] == "0"
    third = client.post(
        "/api/alice/chat", json={"message": "three", "conversation_id": conversation}
    )
    problem = assert_problem(third, 429, "quota_exceeded")
    assert 0 < int(third.headers["Retry-After"]) <= 86400
    assert third.headers["X-Quota-Remaining"] == "0"
    assert problem["quota"]["used_today"] == 130
    assert [turn.message for turn in agent.turns] == ["one", "two"], "no model call"
    detail = ok(client.get(f"/api/alice/conversations/{conversation}"))
    assert [m["content"] for m in detail["messages"] if m["role"] == "user"] == ["one", "two"]
    assert ok(client.get("/api/alice/usage"))["quota"]["remaining"] == 0
    # Another user has a day of their own.
    other = client.post("/api/bob/chat", json={"message": "hi"})
    assert ok(other) and other.headers["X-Quota-Remaining"] == str(CAP - 10)


def test_a_streamed_turn_says_what_is_left_as_it_starts_and_counts_when_done(client, agent):
    agent.steps.extend([costing(60), costing(60), costing(1)])
    streamed = client.post(
        "/api/alice/chat", json={"message": "one"}, headers={"Accept": "text/event-stream"}
    )
    assert streamed.headers["X-Quota-Remaining"] == str(CAP)
    assert [name for name, _, _ in sse_events(streamed)][-1] == "done"
    again = client.post(
        "/api/alice/chat", json={"message": "two"}, headers={"Accept": "text/event-stream"}
    )
    assert again.headers["X-Quota-Remaining"] == "40"
    sse_events(again)
    refused = client.post(
        "/api/alice/chat", json={"message": "three"}, headers={"Accept": "text/event-stream"}
    )
    assert_problem(refused, 429, "quota_exceeded")


def test_a_replay_costs_nothing_and_is_served_when_the_quota_is_spent(client, agent):
    agent.steps.extend([costing(CAP)])
    key = {"Idempotency-Key": "q-1"}
    first = ok(client.post("/api/alice/chat", json={"message": "all of it"}, headers=key))
    again = client.post("/api/alice/chat", json={"message": "all of it"}, headers=key)
    assert again.headers["Idempotent-Replayed"] == "true" and again.json == first
    assert len(agent.turns) == 1
    assert ok(client.get("/api/alice/usage"))["quota"]["used_today"] == CAP


def test_anonymous_sessions_share_their_addresss_quota(client, agent):
    agent.steps.extend([costing(CAP), costing(1), costing(1)])
    ok(client.post("/api/chat", json={"message": "spend it"}))
    fresh = client.post("/api/chat", json={"message": "a new session"})
    assert_problem(fresh, 429, "quota_exceeded")
    elsewhere = client.post(
        "/api/chat", json={"message": "hi"}, environ_base={"REMOTE_ADDR": "192.0.2.7"}
    )
    assert ok(elsewhere) and elsewhere.headers["X-Quota-Remaining"] == str(CAP - 1)


def test_no_quota_no_header(make_app):
    client = make_app(agent=ScriptedAgent([costing(10**6)])).test_client()
    response = client.post("/api/alice/chat", json={"message": "free"})
    assert ok(response) and "X-Quota-Remaining" not in response.headers
