"""A gunicorn worker killed (SIGKILL) while its turns wait on the model: the master replaces
it, the stuck turns end `failed` — by the cleanup job, or by the next request that finds one
stale — and nothing the user sent is lost or stored twice."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any
from urllib.error import HTTPError, URLError
from urllib.request import Request, urlopen

from fakellm import slow
from helpers import children, get, wait_for

ROOT = Path(__file__).resolve().parent.parent


def post(url: str, body: dict[str, Any], **headers: str) -> tuple[int, dict[str, Any]]:
    """(status, JSON body); (0, {}) when the connection broke off."""
    request = Request(
        url, data=json.dumps(body).encode(), method="POST",
        headers={"Content-Type": "application/json", **headers},
    )  # fmt: skip
    try:
        with urlopen(request, timeout=15) as response:
            return response.status, json.loads(response.read())
    except HTTPError as error:
        return error.code, json.loads(error.read() or b"{}")
    except (URLError, ConnectionError, OSError):
        return 0, {}


def read(url: str) -> dict[str, Any]:
    with urlopen(url, timeout=10) as response:
        return json.loads(response.read())


def test_a_worker_killed_mid_turn_is_replaced_and_its_turns_end_failed(
    gunicorn, fake_llm, database_url
):
    server = gunicorn(
        WEB_CONCURRENCY="1", AGENT_PROVIDER="openai", OPENAI_BASE_URL=fake_llm.url,
        OPENAI_MODEL="fake-model", OPENAI_API_KEY="sk-test", AGENT_TIMEOUT_SECONDS="30",
        AGENT_MAX_RETRIES="0", TURN_LEASE_SECONDS="2", RATELIMIT_ENABLED="false",
    )  # fmt: skip
    chat = f"{server.url}/api/alice/chat"
    a = post(chat, {"message": "first a"})[1]["conversation_id"]
    b = post(chat, {"message": "first b"})[1]["conversation_id"]
    fake_llm.script(slow(30, "never said"), slow(30, "never said"))
    outcomes: list[int] = []
    doomed = [
        threading.Thread(target=lambda body, key: outcomes.append(post(chat, body, **key)[0]),
                         args=(body, key))
        for body, key in (
            ({"message": "crash a", "conversation_id": a}, {"Idempotency-Key": "crash-a"}),
            ({"message": "crash b", "conversation_id": b}, {}),
        )
    ]  # fmt: skip
    for thread in doomed:
        thread.start()
    wait_for(lambda: len(fake_llm.requests) == 4, 10, "both turns to wait on the model")

    (killed,) = children(server.process.pid)
    os.kill(killed, signal.SIGKILL)
    for thread in doomed:
        thread.join(timeout=15)
    assert outcomes == [0, 0], "the connections broke off with the worker"
    wait_for(
        lambda: set(children(server.process.pid)) - {killed} and get(server.url + "/health") == 200,
        60, "the master to start a new worker",
    )  # fmt: skip
    assert server.process.poll() is None

    conversation = f"{server.url}/api/alice/conversations/"
    for cid, text in ((a, "crash a"), (b, "crash b")):
        stored = read(conversation + cid)["messages"]
        assert [(m["role"], m["content"], m["status"]) for m in stored[-2:]] == [
            ("user", text, "completed"),
            ("assistant", "", "pending"),
        ], "the user's message survived the crash"

    # b: the next request that finds the lease lapsed (TURN_LEASE_SECONDS, not the 300 s of
    # TURN_STALE_SECONDS: nobody renewed it) fails the turn and goes on.
    deadline = time.monotonic() + 15
    while (status := post(chat, {"message": "after b", "conversation_id": b}))[0] == 409:
        assert status[1]["code"] == "turn_in_progress"
        assert time.monotonic() < deadline, "the stuck turn never went stale"
        time.sleep(0.1)
    # The interrupted exchange stays in the history but is not sent to the model (issue 23).
    assert status[0] == 200 and status[1]["response"] == "fake: after b"
    assert [m["content"] for m in fake_llm.requests[-1]["messages"] if m["role"] == "user"] == [
        "first b",
        "after b",
    ]
    stored = read(conversation + b)["messages"]
    assert [(m["content"], m["status"], m["error_code"]) for m in stored[2:]] == [
        ("crash b", "completed", None),
        ("", "failed", "interrupted"),
        ("after b", "completed", None),
        ("fake: after b", "completed", None),
    ]

    # a: the cleanup job fails it; a retry with the same key then completes the turn once.
    cleanup = subprocess.run(
        [sys.executable, "-m", "flask", "--app", "chatsvc", "sessions", "cleanup"],
        cwd=ROOT, capture_output=True, text=True, timeout=60,
        env={**os.environ, "CHATSVC_ENV": "development", "DATABASE_URL": database_url,
             "TURN_STALE_SECONDS": "1"},
    )  # fmt: skip
    assert cleanup.returncode == 0, cleanup.stderr
    assert "failed 1 stuck turns" in cleanup.stdout
    assert read(conversation + a)["messages"][-1]["error_code"] == "interrupted"
    retried = post(
        chat, {"message": "crash a", "conversation_id": a}, **{"Idempotency-Key": "crash-a"}
    )
    assert retried[0] == 200 and retried[1]["response"] == "fake: crash a"
    stored = read(conversation + a)["messages"]
    assert [m["content"] for m in stored if m["role"] == "user"] == ["first a", "crash a"]
    assert post(chat, {"message": "and on", "conversation_id": a})[0] == 200
