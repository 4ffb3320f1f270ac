"""A streamed turn on gunicorn's gevent worker, where its hand-offs between greenlets are
gevent's own (in-process tests run real threads instead). Deltas one at a time and several
at once, silence long enough for keep-alives, and a cancel that lands mid-stream: the text the
client reads is the stored reply, every event once and in order."""

from __future__ import annotations

import http.client
import json
import uuid
from typing import Any
from urllib.parse import urlsplit
from urllib.request import Request, urlopen

import pytest
import sse
from fakellm import FakeLLM, endless, say, slow

STREAM = {"Accept": "text/event-stream", "Content-Type": "application/json"}
PACED = " ".join(f"word{n}" for n in range(30)) + "."


@pytest.fixture
def fake_llm(shared_llm: FakeLLM) -> FakeLLM:
    shared_llm.reset()
    return shared_llm


def environ(fake_llm: FakeLLM, **more: str) -> dict[str, str]:
    return {
        "WEB_CONCURRENCY": "1", "AGENT_PROVIDER": "openai", "OPENAI_BASE_URL": fake_llm.url,
        "OPENAI_MODEL": "fake-model", "OPENAI_API_KEY": "sk-test", "AGENT_MAX_RETRIES": "0",
        "AGENT_TIMEOUT_SECONDS": "30", "RATELIMIT_ENABLED": "false", **more,
    }  # fmt: skip


def streamed(base: str, user: str, message: str) -> str:
    """The SSE text of a streamed chat POST, read to its end."""
    parts = urlsplit(base)
    connection = http.client.HTTPConnection(parts.hostname, parts.port, timeout=30)
    connection.request(
        "POST", f"/api/{user}/chat", body=json.dumps({"message": message}), headers=STREAM
    )
    response = connection.getresponse()
    assert response.status == 200
    text = response.read().decode()
    connection.close()
    return text


def stored(base: str, user: str, done: dict[str, Any]) -> dict[str, Any]:
    path = f"/api/{user}/conversations/{done['conversation_id']}/messages/{done['message_id']}"
    with urlopen(base + path, timeout=10) as response:
        return json.loads(response.read())


def assert_whole(events: list[sse.Event]) -> dict[str, Any]:
    """Ids 1, 2, 3… in order, `meta` first, `done` last, the deltas' text its response."""
    assert [e.id for e in events] == list(range(1, len(events) + 1))
    assert events[0].name == "meta" and events[-1].name == "done"
    done = events[-1].data
    assert done["response"] == sse.text_of(events)
    return done


def someone() -> str:
    return "gevent-" + uuid.uuid4().hex[:8]


def test_on_gunicorn_paced_and_bunched_deltas_reach_the_client_whole_and_in_order(
    gunicorn, fake_llm
):
    server = gunicorn(**environ(fake_llm, SSE_PING_SECONDS="0.1"))
    user = someone()
    # One chunk every 20 ms (each delta handed on and written alone), then one answer whose
    # chunks all arrive at once (taken together by the reader), then a second of silence
    # before the first chunk (the reader's bell times out: keep-alives).
    fake_llm.script(
        say(PACED, chunk_delay=0.02), say(PACED), slow(1.0, "late but whole")
    )  # fmt: skip
    for expected in (PACED, PACED, "late but whole"):
        events, pings = sse.parse(streamed(server.url, user, "talk to me"))
        done = assert_whole(events)
        assert done["response"] == expected
        assert stored(server.url, user, done)["content"] == expected
    assert pings >= 3  # the last turn's second of silence, a keep-alive every 0.1 s


def test_on_gunicorn_a_cancel_mid_stream_ends_it_with_the_text_so_far(gunicorn, fake_llm):
    server = gunicorn(**environ(fake_llm))
    user = someone()
    fake_llm.script(endless(chunk_delay=0.02))
    parts = urlsplit(server.url)
    connection = http.client.HTTPConnection(parts.hostname, parts.port, timeout=30)
    connection.request(
        "POST", f"/api/{user}/chat", body=json.dumps({"message": "go on"}), headers=STREAM
    )
    response = connection.getresponse()
    assert response.status == 200
    seen = ""
    while seen.count("event: delta") < 5 or not seen.endswith("\n\n"):
        seen += response.readline().decode()
    meta = sse.parse(seen)[0][0].data
    cancel = Request(
        f"{server.url}/api/{user}/conversations/{meta['conversation_id']}/messages/"
        f"{meta['message_id']}/cancel",
        method="POST",
    )
    with urlopen(cancel, timeout=10) as answer:
        assert answer.status == 202
    events, _ = sse.parse(seen + response.read().decode())
    connection.close()
    done = assert_whole(events)
    assert done["status"] == "cancelled" and done["response"].startswith("and on")
    after = stored(server.url, user, done)
    assert (after["status"], after["content"]) == ("cancelled", done["response"])
