"""Leases (issue 23, 4): a running turn renews its claim on the conversation while it runs, so
a live turn longer than the lease is never taken over, and a dead worker's turn (no renewals)
frees its conversation in seconds — not after TURN_STALE_SECONDS — for a new turn and for an
idempotent retry."""

from __future__ import annotations

import threading
import time

from fakes import ScriptedAgent
from helpers import assert_problem, history, ok, wait_for

from chatsvc.agent.base import Reply

LEASE = {"TURN_LEASE_SECONDS": 0.6, "TURN_STALE_SECONDS": 300}


class Held:
    """An agent step that runs until released."""

    def __init__(self) -> None:
        self.entered = threading.Event()
        self.release = threading.Event()

    def __call__(self, turn, tools):
        self.entered.set()
        assert self.release.wait(timeout=30)
        return Reply("finally", "scripted")


def start(app, held: Held, conversation: str, **headers: str) -> tuple[threading.Thread, list]:
    out: list = []
    thread = threading.Thread(
        target=lambda: out.append(
            app.test_client().post(
                "/api/alice/chat",
                json={"message": "long one", "conversation_id": conversation},
                headers=headers,
            )
        )
    )
    thread.start()
    assert held.entered.wait(timeout=10)
    return thread, out


def test_a_live_turn_longer_than_its_lease_keeps_the_conversation(make_app):
    held = Held()
    app = make_app(LEASE, agent=ScriptedAgent([Reply("hi", "s"), held]))
    client = app.test_client()
    conversation = ok(client.post("/api/alice/chat", json={"message": "hi"}))["conversation_id"]
    thread, out = start(app, held, conversation)
    deadline = time.monotonic() + 4 * LEASE["TURN_LEASE_SECONDS"]
    while time.monotonic() < deadline:  # several leases long: renewed every third of one
        other = client.post(
            "/api/alice/chat", json={"message": "x", "conversation_id": conversation}
        )
        assert_problem(other, 409, "turn_in_progress")
        time.sleep(0.1)
    held.release.set()
    thread.join(timeout=10)
    assert ok(out[0])["status"] == "completed" and out[0].json["response"] == "finally"


def test_a_dead_workers_turn_frees_the_conversation_within_seconds(make_app):
    held = Held()
    app = make_app(LEASE, agent=ScriptedAgent([Reply("hi", "s"), held, Reply("again", "s")]))
    client = app.test_client()
    conversation = ok(client.post("/api/alice/chat", json={"message": "hi"}))["conversation_id"]
    thread, _ = start(app, held, conversation)
    dead = history(client, "alice", conversation)[-1]["id"]
    app.extensions["chatsvc.turns"].leases.release(dead)  # its worker died: no more renewals
    started = time.monotonic()
    follow = {"message": "are you back?", "conversation_id": conversation}
    answered = wait_for(
        lambda: (r := client.post("/api/alice/chat", json=follow)).status_code == 200 and r,
        10,
        "the lapsed claim to be taken over",
    )
    assert time.monotonic() - started < 5 * LEASE["TURN_LEASE_SECONDS"] + 2
    assert answered.json["response"] == "again"
    failed = [m for m in history(client, "alice", conversation) if m["id"] == dead][0]
    assert (failed["status"], failed["error_code"]) == ("failed", "interrupted")
    held.release.set()
    thread.join(timeout=10)


def test_an_idempotent_retry_of_a_dead_turn_proceeds_within_seconds(make_app):
    held = Held()
    app = make_app(LEASE, agent=ScriptedAgent([Reply("hi", "s"), held, Reply("redone", "s")]))
    client = app.test_client()
    conversation = ok(client.post("/api/alice/chat", json={"message": "hi"}))["conversation_id"]
    key = {"Idempotency-Key": "lease-1"}
    thread, _ = start(app, held, conversation, **key)
    retry = {"message": "long one", "conversation_id": conversation}
    assert_problem(client.post("/api/alice/chat", json=retry, headers=key), 409, "turn_in_progress")
    dead = history(client, "alice", conversation)[-1]["id"]
    app.extensions["chatsvc.turns"].leases.release(dead)
    retried = wait_for(
        lambda: (
            (r := client.post("/api/alice/chat", json=retry, headers=key)).status_code == 200 and r
        ),
        10,
        "the retry to proceed",
    )
    assert retried.json["response"] == "redone"
    users = [m["content"] for m in history(client, "alice", conversation) if m["role"] == "user"]
    assert users == ["hi", "long one"], "the stored message is reused, not stored twice"
    held.release.set()
    thread.join(timeout=10)
