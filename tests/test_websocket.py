"""The WebSocket transport (contract §5, "WebSocket") through a real socket: gunicorn's gevent
worker serving flask-sock, driven by the `websocket-client` library, on both databases."""

from __future__ import annotations

import json
import os
import struct
import time
import uuid
from typing import Any
from urllib.error import HTTPError
from urllib.request import Request, urlopen

import pytest
import websocket
from fakellm import endless, say
from helpers import wait_for

from chatsvc.auth import create_token

SECRET = "s" * 40
# Open sockets hold a stopping worker for its graceful timeout: the tests close theirs, and
# keep that timeout short in case one stays open.
QUICK_STOP = {"GUNICORN_GRACEFUL_TIMEOUT": "3"}
NO_LIMITS = {"RATELIMIT_ENABLED": "false", **QUICK_STOP}
OPENED: list[websocket.WebSocket] = []


@pytest.fixture(autouse=True)
def close_sockets(gunicorn, shared_gunicorn):
    """Before the servers stop (this fixture depends on theirs, so it is torn down first)."""
    yield
    while OPENED:
        OPENED.pop().close()


@pytest.fixture
def server(shared_gunicorn):
    """The module's server in development's optional auth (a JWT secret set), no rate limits:
    shared by the tests that need nothing else (starting one per test cost most of their time);
    each test has its own users."""
    return shared_gunicorn(JWT_SECRET=SECRET, **NO_LIMITS)


@pytest.fixture
def fake_llm(shared_llm):
    """The module's fake model (its servers outlive a test), script and record fresh."""
    shared_llm.reset()
    return shared_llm


def someone() -> str:
    return "ws-" + uuid.uuid4().hex[:10]


def connect(server, path: str, **options: Any) -> websocket.WebSocket:
    url = server.url.replace("http://", "ws://", 1) + path
    ws = websocket.create_connection(url, timeout=10, **options)
    OPENED.append(ws)
    return ws


def refused(server, path: str, **options: Any) -> int:
    """The HTTP status of a handshake the service refuses."""
    with pytest.raises(websocket.WebSocketBadStatusException) as refusal:
        connect(server, path, **options).close()
    return refusal.value.status_code


def receive(ws: websocket.WebSocket) -> dict[str, Any]:
    return json.loads(ws.recv())


def send(ws: websocket.WebSocket, **frame: Any) -> None:
    ws.send(json.dumps(frame))


def turn(ws: websocket.WebSocket, message: str, **fields: Any) -> list[dict[str, Any]]:
    """Send a message; the frames up to and including its `done` or `error`."""
    send(ws, type="message", message=message, **fields)
    return until_end(ws)


def until_end(ws: websocket.WebSocket) -> list[dict[str, Any]]:
    frames = [receive(ws)]
    while frames[-1]["event"] not in ("done", "error"):
        frames.append(receive(ws))
    return frames


def closed_with(ws: websocket.WebSocket, within: float = 15) -> int:
    """Read until the server closes the socket (pings and frames skipped); its close code."""
    deadline = time.monotonic() + within
    while True:
        remaining = deadline - time.monotonic()
        assert remaining > 0, "the server did not close the socket"
        ws.settimeout(remaining)
        opcode, frame = ws.recv_data_frame(control_frame=True)
        if opcode == websocket.ABNF.OPCODE_CLOSE:
            return struct.unpack("!H", frame.data[:2])[0]


def http(server, method: str, path: str, body: Any = None, **headers: str) -> tuple[int, Any]:
    data = None if body is None else json.dumps(body).encode()
    request = Request(server.url + path, data=data, method=method, headers=headers)
    if data is not None:
        request.add_header("Content-Type", "application/json")
    try:
        with urlopen(request, timeout=15) as response:
            return response.status, json.loads(response.read())
    except HTTPError as error:
        return error.code, json.loads(error.read() or b"{}")


def assert_well_formed(frames: list[dict[str, Any]]) -> None:
    names = [f["event"] for f in frames]
    assert names[0] == "meta" and names[-1] in ("done", "error")
    assert names.count("done") + names.count("error") == 1
    assert [f["id"] for f in frames] == list(range(1, len(frames) + 1))


def problem(frame: dict[str, Any], status: int, code: str) -> dict[str, Any]:
    assert frame["event"] == "error", frame
    assert frame["id"] is None
    body = frame["data"]
    assert (body["status"], body["code"], body["type"]) == (status, code, "about:blank"), body
    assert body["detail"]
    return body


# Many turns over one socket --------------------------------------------------------------


def test_many_turns_on_one_socket_send_the_sse_events_and_store_what_json_stores(server):
    user = someone()
    ws = connect(server, f"/api/{user}/chat/ws")
    first = turn(ws, "add a task to buy milk")
    assert_well_formed(first)
    names = [f["event"] for f in first]
    assert names.index("tool_call") < names.index("done")
    meta, done = first[0]["data"], first[-1]["data"]
    assert meta["message_id"] == done["message_id"]
    assert done["tool_calls"][0]["tool"] == "add_task"
    assert "".join(f["data"]["text"] for f in first if f["event"] == "delta") == done["response"]
    assert set(done["timing"]) == {"db", "agent", "total"}
    assert done["timing"]["total"] >= done["timing"]["db"] + done["timing"]["agent"]
    conversation = done["conversation_id"]

    second = turn(ws, "show my tasks", conversation_id=conversation)
    third = turn(ws, "complete task 1", conversation_id=conversation)
    for frames in (second, third):
        assert_well_formed(frames)
        assert frames[-1]["data"]["conversation_id"] == conversation
    ws.close()

    # The same first turn through the JSON route and through SSE: the same bodies.
    status, body = http(
        server, "POST", f"/api/{someone()}/chat", {"message": "add a task to buy milk"}
    )
    assert status == 200
    assert set(body) == set(done) - {"timing"}
    assert (body["response"], body["status"]) == (done["response"], "completed")
    assert body["tool_calls"] == done["tool_calls"]
    request = Request(
        f"{server.url}/api/{someone()}/chat", method="POST",
        data=json.dumps({"message": "add a task to buy milk"}).encode(),
        headers={"Content-Type": "application/json", "Accept": "text/event-stream"},
    )  # fmt: skip
    with urlopen(request, timeout=15) as response:
        lines = response.read().decode().splitlines()
    sse = [
        (name.split(": ", 1)[1], json.loads(data.split(": ", 1)[1]))
        for name, data in zip(lines, lines[2:], strict=False)
        if name.startswith("event: ") and data.startswith("data: ")
    ]
    assert [name for name, _ in sse] == names
    assert [d for n, d in sse if n in ("delta", "tool_call")] == [
        f["data"] for f in first if f["event"] in ("delta", "tool_call")
    ]
    assert set(sse[-1][1]) == set(done)

    status, stored = http(server, "GET", f"/api/{user}/conversations/{conversation}")
    assert status == 200
    messages = stored["messages"]
    assert [m["role"] for m in messages] == ["user", "assistant"] * 3
    assert [m["content"] for m in messages[1::2]] == [
        f[-1]["data"]["response"] for f in (first, second, third)
    ]
    assert messages[1]["tool_calls"] == done["tool_calls"]
    assert all(m["status"] == "completed" for m in messages)
    status, listed = http(server, "GET", f"/api/{user}/tasks")
    assert [(t["title"], t["completed"]) for t in listed["items"]] == [("buy milk", True)]


def test_a_session_socket_starts_and_continues_sessions(server):
    ws = connect(server, "/api/chat/ws")
    first = turn(ws, "hello")
    assert_well_formed(first)
    session = first[0]["data"]["session_id"]
    assert first[-1]["data"]["session_id"] == session
    second = turn(ws, "and again", session_id=session)
    assert second[-1]["data"]["session_id"] == session
    ws.close()
    status, state = http(server, "GET", f"/api/session/{session}")
    assert status == 200 and state["message_count"] == 4
    # A user's conversation is not a session: 404, and the socket stays usable.
    user_turn = turn(connect(server, "/api/carol/chat/ws"), "hi")
    ws = connect(server, "/api/chat/ws")
    problem(
        turn(ws, "hi", session_id=user_turn[-1]["data"]["conversation_id"])[0], 404, "not_found"
    )
    assert_well_formed(turn(ws, "still here"))


# Cancel ----------------------------------------------------------------------------------


@pytest.fixture
def model_server(shared_gunicorn, fake_llm):
    return shared_gunicorn(
        AGENT_PROVIDER="openai", OPENAI_BASE_URL=fake_llm.url, OPENAI_MODEL="fake-model",
        OPENAI_API_KEY="sk-test", AGENT_TIMEOUT_SECONDS="30", AGENT_MAX_RETRIES="0", **NO_LIMITS,
    )  # fmt: skip


def test_cancel_stops_the_running_turn_and_stores_it_cancelled(model_server, fake_llm):
    user = someone()
    fake_llm.script(endless(chunk_delay=0.02))
    ws = connect(model_server, f"/api/{user}/chat/ws")
    send(ws, type="message", message="tell me a long story")
    meta = receive(ws)
    assert meta["event"] == "meta"
    deltas = [receive(ws) for _ in range(3)]
    assert [f["event"] for f in deltas] == ["delta"] * 3

    # One turn at a time on a socket: a second message is refused, the turn goes on.
    send(ws, type="message", message="and another", conversation_id=meta["data"]["conversation_id"])
    frame = receive(ws)
    while frame["event"] == "delta":
        frame = receive(ws)
    problem(frame, 409, "turn_in_progress")

    send(ws, type="cancel", message_id=meta["data"]["message_id"])
    rest = until_end(ws)
    done = rest[-1]
    assert done["event"] == "done"
    assert done["data"]["status"] == "cancelled"
    assert done["data"]["message_id"] == meta["data"]["message_id"]
    assert done["data"]["response"].startswith("and on and on")
    ids = [meta["id"], *(f["id"] for f in deltas), *(f["id"] for f in rest)]
    assert ids == sorted(set(ids))

    conversation = meta["data"]["conversation_id"]
    status, stored = http(model_server, "GET", f"/api/{user}/conversations/{conversation}")
    assert [m["status"] for m in stored["messages"]] == ["completed", "cancelled"]
    assert stored["messages"][1]["content"] == done["data"]["response"]

    # The socket and the conversation are free for the next turn; a finished turn: 409.
    fake_llm.script(say("Fine."))
    after = turn(ws, "ok", conversation_id=conversation)
    assert after[-1]["data"]["response"] == "Fine."
    send(ws, type="cancel", message_id=meta["data"]["message_id"])
    problem(receive(ws), 409, "turn_finished")
    send(ws, type="cancel", message_id="no-such-turn")
    problem(receive(ws), 404, "not_found")


def test_a_client_that_hangs_up_mid_turn_leaves_it_cancelled(model_server, fake_llm):
    user = someone()
    fake_llm.script(endless(chunk_delay=0.02))
    ws = connect(model_server, f"/api/{user}/chat/ws")
    send(ws, type="message", message="tell me a long story")
    meta = receive(ws)["data"]
    receive(ws)
    ws.close()
    path = f"/api/{user}/conversations/{meta['conversation_id']}"
    wait_for(
        lambda: http(model_server, "GET", path)[1]["messages"][1]["status"] == "cancelled",
        15,
        "the turn to be stored cancelled",
    )


# Auth ------------------------------------------------------------------------------------


@pytest.fixture
def secured(shared_gunicorn):
    return shared_gunicorn(
        AUTH_MODE="required", JWT_SECRET=SECRET, ALLOW_ANONYMOUS_SESSIONS="false", **NO_LIMITS
    )


def token(user: str) -> str:
    return create_token(user, secret=SECRET)


def test_the_authorization_header_authenticates_the_socket(secured):
    user = someone()
    ws = connect(secured, f"/api/{user}/chat/ws", header=[f"Authorization: Bearer {token(user)}"])
    assert_well_formed(turn(ws, "add a task to call mum"))
    ws.close()
    assert refused(secured, f"/api/{user}/chat/ws", header=["Authorization: Bearer nope"]) == 401
    other = [f"Authorization: Bearer {token('mallory')}"]
    assert refused(secured, f"/api/{user}/chat/ws", header=other) == 403
    ws = connect(secured, "/api/chat/ws", header=[f"Authorization: Bearer {token(user)}"])
    assert_well_formed(turn(ws, "hello"))


def test_a_first_auth_frame_authenticates_the_socket(secured):
    user = someone()
    ws = connect(secured, f"/api/{user}/chat/ws")
    send(ws, type="auth", token=token(user))
    done = turn(ws, "add a task to water plants")[-1]
    assert done["event"] == "done" and done["data"]["tool_calls"][0]["tool"] == "add_task"
    status, listed = http(
        secured, "GET", f"/api/{user}/tasks", Authorization=f"Bearer {token(user)}"
    )
    assert [t["title"] for t in listed["items"]] == ["water plants"]
    # A second auth frame is refused, the socket stays.
    send(ws, type="auth", token=token(user))
    problem(receive(ws), 400, "bad_request")
    assert_well_formed(turn(ws, "show my tasks", conversation_id=done["data"]["conversation_id"]))
    ws.close()
    # Right after the first one too; and on a socket opened with the header.
    ws = connect(secured, f"/api/{user}/chat/ws")
    send(ws, type="auth", token=token(user))
    send(ws, type="auth", token=token("mallory"))
    problem(receive(ws), 400, "bad_request")
    assert_well_formed(turn(ws, "show my tasks"))
    ws = connect(secured, f"/api/{user}/chat/ws", header=[f"Authorization: Bearer {token(user)}"])
    send(ws, type="auth", token=token("mallory"))
    problem(receive(ws), 400, "bad_request")
    assert turn(ws, "show my tasks")[-1]["event"] == "done"


def test_an_optional_auth_frame_makes_the_token_the_caller(server):
    """AUTH_MODE=optional (development), the module's server."""
    user = someone()
    ws = connect(server, f"/api/{user}/chat/ws")
    send(ws, type="auth", token=token("mallory"))
    problem(receive(ws), 403, "forbidden")
    assert closed_with(ws) == 1008
    ws = connect(server, f"/api/{user}/chat/ws")
    assert_well_formed(turn(ws, "no token needed here"))


@pytest.mark.parametrize(
    ("first", "status", "code"),
    [
        ({"type": "message", "message": "no token"}, 401, "unauthorized"),
        ({"type": "auth", "token": "garbage"}, 401, "unauthorized"),
        ({"type": "auth", "token": 42}, 401, "unauthorized"),
        ({"type": "auth", "token": create_token("mallory", secret=SECRET)}, 403, "forbidden"),
    ],
    ids=["no-auth-frame", "bad-token", "not-a-string", "another-user"],
)
def test_a_socket_without_a_valid_first_auth_frame_is_closed(secured, first, status, code):
    user = someone()
    ws = connect(secured, f"/api/{user}/chat/ws")
    send(ws, **first)
    problem(receive(ws), status, code)
    assert closed_with(ws) == 1008
    status, listed = http(
        secured, "GET", f"/api/{user}/tasks", Authorization=f"Bearer {token(user)}"
    )
    assert status == 200 and listed["items"] == []


def test_a_socket_that_does_not_authenticate_within_5_seconds_is_closed(secured):
    ws = connect(secured, f"/api/{someone()}/chat/ws")
    started = time.monotonic()
    assert closed_with(ws) == 1008
    assert 4.5 <= time.monotonic() - started < 10


def test_a_user_cannot_reach_another_users_conversation(server):
    alice, bob = someone(), someone()
    theirs = turn(connect(server, f"/api/{alice}/chat/ws"), "add a task to buy milk")[-1]
    ws = connect(server, f"/api/{bob}/chat/ws")
    conversation = theirs["data"]["conversation_id"]
    problem(turn(ws, "show my tasks", conversation_id=conversation)[0], 404, "not_found")
    problem(turn(ws, "hi", conversation_id=conversation)[0], 404, "not_found")
    status, stored = http(server, "GET", f"/api/{alice}/conversations/{conversation}")
    assert stored["message_count"] == 2
    status, listed = http(server, "GET", f"/api/{bob}/tasks")
    assert listed["items"] == []


# Origin ----------------------------------------------------------------------------------


def test_only_allowed_origins_may_open_a_socket(gunicorn):
    server = gunicorn(CORS_ORIGINS="https://app.example", **NO_LIMITS)
    path = f"/api/{someone()}/chat/ws"
    assert refused(server, path, origin="https://evil.example") == 403
    assert refused(server, "/api/chat/ws", origin="http://localhost:3000") == 403
    assert_well_formed(turn(connect(server, path, origin="https://app.example"), "hi"))
    # The service's own pages (the demo), and clients that are not browsers (no Origin).
    assert_well_formed(turn(connect(server, path), "hi"))
    assert_well_formed(turn(connect(server, path, suppress_origin=True), "hi"))


# Rate limit ------------------------------------------------------------------------------


def test_each_message_spends_the_chat_budget_the_posts_share(gunicorn):
    """The same bucket as the chat POSTs: in memory, and in Redis when TEST_REDIS_URL is set
    (then shared by every worker)."""
    redis_url = os.environ.get("TEST_REDIS_URL")
    storage = {"RATELIMIT_STORAGE_URI": redis_url} if redis_url else {}
    server = gunicorn(RATELIMIT_CHAT="3 per minute", **QUICK_STOP, **storage)
    user = someone()
    assert http(server, "POST", f"/api/{user}/chat", {"message": "hi"})[0] == 200
    ws = connect(server, f"/api/{user}/chat/ws")
    assert_well_formed(turn(ws, "one"))
    assert_well_formed(turn(ws, "two"))
    send(ws, type="message", message="three")
    body = problem(receive(ws), 429, "rate_limited")
    assert 1 <= body["retry_after"] <= 60
    assert http(server, "POST", f"/api/{user}/chat", {"message": "hi"})[0] == 429
    # Another caller has a budget of its own.
    assert_well_formed(turn(connect(server, f"/api/{someone()}/chat/ws"), "hi"))


# Bad frames ------------------------------------------------------------------------------


def test_bad_frames_get_error_events_and_the_socket_stays_usable(server):
    ws = connect(server, f"/api/{someone()}/chat/ws")
    cases = [
        ("not json", 400, "bad_request"),
        ('{"type": "message", "message": NaN}', 400, "bad_request"),
        ("[" * 1000 + "]" * 1000, 400, "bad_request"),
        ('{"type": "message", "message": "hi", "n": 1' + "0" * 5000 + "}", 400, "bad_request"),
        ("[1, 2]", 422, "validation_error"),
        ('{"message": "hi"}', 422, "validation_error"),
        ('{"type": "shout", "message": "hi"}', 422, "validation_error"),
        ('{"type": "message"}', 422, "validation_error"),
        ('{"type": "message", "message": "   "}', 422, "validation_error"),
        ('{"type": "message", "message": "a\\u0000b"}', 422, "validation_error"),
        ('{"type": "message", "message": "hi", "extra": 1}', 422, "validation_error"),
        ('{"type": "message", "message": "' + "x" * 4001 + '"}', 422, "validation_error"),
        ('{"type": "message", "message": "hi", "conversation_id": 7}', 422, "validation_error"),
        ('{"type": "cancel"}', 422, "validation_error"),
    ]
    for text, status, code in cases:
        ws.send(text)
        body = problem(receive(ws), status, code)
        if status == 422 and "errors" in body:
            assert body["errors"]["json"]
    ws.send_binary(b'{"type": "message", "message": "hi"}')
    problem(receive(ws), 400, "bad_request")
    ws.send(json.dumps({"type": "message", "message": "x" * 4001}))
    assert "message" in problem(receive(ws), 422, "validation_error")["errors"]["json"]
    assert_well_formed(turn(ws, "still usable"))


def test_a_frame_over_the_size_limit_closes_the_socket_with_1009(server):
    ws = connect(server, f"/api/{someone()}/chat/ws")
    ws.send(json.dumps({"type": "message", "message": "x" * (70 * 1024)}))
    assert closed_with(ws) == 1009
    assert http(server, "GET", "/health/live")[0] == 200


# Idle sockets ----------------------------------------------------------------------------


def test_idle_sockets_get_pings_and_are_closed(gunicorn):
    server = gunicorn(WS_IDLE_SECONDS="2", **NO_LIMITS)
    ws = connect(server, f"/api/{someone()}/chat/ws")
    assert_well_formed(turn(ws, "hi"))
    ws.settimeout(10)
    started, pings = time.monotonic(), 0
    while True:
        opcode, frame = ws.recv_data_frame(control_frame=True)
        if opcode == websocket.ABNF.OPCODE_PING:
            pings += 1  # answered with a pong by the client library
        elif opcode == websocket.ABNF.OPCODE_CLOSE:
            break
    idle = time.monotonic() - started
    assert struct.unpack("!H", frame.data[:2])[0] == 1000
    assert pings >= 1
    assert 1.5 <= idle < 6


def test_a_plain_get_of_the_socket_route_is_426_and_other_routes_open_no_socket(server):
    try:
        urlopen(f"{server.url}/api/{someone()}/chat/ws", timeout=10)
    except HTTPError as error:
        assert error.code == 426
        assert error.headers["Upgrade"] == "websocket"
        assert json.loads(error.read())["code"] == "upgrade_required"
    else:
        pytest.fail("a plain GET opened nothing and must say so")
    assert refused(server, f"/api/{someone()}/tasks") in (400, 405)  # opens nothing
