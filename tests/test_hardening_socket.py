"""Issue 15 over real sockets against gunicorn as `make run` starts it: what gunicorn refuses
itself is a problem body (finding 8), the token is checked before the body is read and a body
that trickles in is cut off with 408 while other requests are served (finding 4), and
forwarded headers such as SCRIPT_NAME are not trusted by default (finding 14)."""

from __future__ import annotations

import json
import socket
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from urllib.parse import urlsplit

import pytest

SECRET = "s" * 40


@dataclass
class Answer:
    status: int
    headers: dict[str, str]
    body: bytes
    seconds: float  # from the first byte sent to the whole answer read

    def problem(self) -> dict:
        assert self.headers["content-type"] == "application/problem+json", self
        body = json.loads(self.body)
        assert body["status"] == self.status and body["type"] == "about:blank"
        assert body["request_id"] == self.headers["x-request-id"]
        assert b"<html" not in self.body.lower()
        return body


def connect(url: str) -> socket.socket:
    parts = urlsplit(url)
    sock = socket.create_connection((parts.hostname, parts.port), timeout=15)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


def read_answer(sock: socket.socket, started: float) -> Answer:
    """One HTTP/1.1 response with a Content-Length (every answer here has one)."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        if not chunk:
            raise AssertionError(f"connection closed before a response: {data!r}")
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    length = int(headers.get("content-length", "0"))
    while len(body) < length:
        chunk = sock.recv(65536)
        if not chunk:
            break
        body += chunk
    return Answer(int(lines[0].split()[1]), headers, body, time.monotonic() - started)


def exchange(url: str, raw: bytes) -> Answer:
    with connect(url) as sock:
        started = time.monotonic()
        sock.sendall(raw)
        return read_answer(sock, started)


# Finding 8: gunicorn's own refusals are problem bodies -----------------------------------

REFUSED = [
    (b"GET /" + b"a" * 10_000 + b" HTTP/1.1\r\nHost: x\r\n\r\n", 414, "uri_too_long"),
    (b"GET /api/alice/tasks?" + b"q" * 5000 + b" HTTP/1.1\r\nHost: x\r\n\r\n", 414, None),
    (b"GET / HTTP/1.1\r\nHost: x\r\nX-Big: " + b"b" * 9000 + b"\r\n\r\n", 431, None),
    (b"GET / HTTP/1.1\r\nHost: x\r\n" + b"".join(b"X-H%d: v\r\n" % i for i in range(150))
     + b"\r\n", 431, "headers_too_large"),
    (b"HELLO THERE\r\n\r\n", 400, "bad_request"),
    (b"G(E)T / HTTP/1.1\r\nHost: x\r\n\r\n", 400, "bad_request"),
    (b"GET / HTTP/9.9\r\nHost: x\r\n\r\n", 400, "bad_request"),
    (b"GET / HTTP/1.1\r\nHost: x\r\nBad Header: v\r\n\r\n", 400, "bad_request"),
    (b"POST /api/alice/tasks HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\n"
     b"Content-Length: 2\r\n\r\nab", 400, "bad_request"),
    (b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03\r\n\r\n", 400, "bad_request"),
]  # fmt: skip


def test_what_gunicorn_refuses_is_a_problem_body(shared_gunicorn):
    server = shared_gunicorn()  # with the defaults: the module's tests that need no more share it
    for raw, status, code in REFUSED:
        answer = exchange(server.url, raw)
        assert answer.status == status, (raw[:60], answer)
        problem = answer.problem()
        assert problem["code"] == (code or problem["code"])
        assert answer.headers["x-content-type-options"] == "nosniff"
        assert b"aaaa" not in answer.body and b"Bad Header" not in answer.body  # no echo
    # A refused request line naming a session (a capability) is not written to the log.
    session = uuid.uuid4().hex
    line = f"GET /api/session/{session}\x7f HTTP/1.1\r\nHost: x\r\n\r\n"  # DEL: not a target
    answer = exchange(server.url, line.encode())
    assert answer.status == 400 and answer.problem()["code"] == "bad_request"
    deadline = time.monotonic() + 5
    while "Invalid request from" not in server.log.read_text() and time.monotonic() < deadline:
        time.sleep(0.05)
    log = server.log.read_text()
    assert "Invalid request from" in log and session not in log


# Finding 4: the token before the body; a body that does not arrive in time is 408 --------


def headers_only(path: str, length: int, token: str | None = None) -> bytes:
    auth = f"Authorization: Bearer {token}\r\n" if token is not None else ""
    return (
        f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        f"Content-Length: {length}\r\n{auth}\r\n"
    ).encode()


def test_a_request_without_a_valid_token_is_401_before_its_body(gunicorn):
    server = gunicorn(AUTH_MODE="required", JWT_SECRET=SECRET, ALLOW_ANONYMOUS_SESSIONS="false")
    cases = [
        ("/api/alice/chat", None), ("/api/alice/chat", "not-a-jwt"), ("/api/alice/tasks", None),
        ("/api/chat", None), ("/api/documents", None), ("/api/alice/tasks", "x.y.z"),
    ]  # fmt: skip
    for path, token in cases:
        # 60 kB announced, none sent: the answer cannot have waited for it.
        answer = exchange(server.url, headers_only(path, 60_000, token))
        assert answer.status == 401, (path, answer)
        assert answer.problem()["code"] == "unauthorized"
        assert answer.seconds < 2


def trickle(url: str, path: str, stop_after: float) -> Answer:
    """A body sent a few bytes at a time until an answer comes (or `stop_after` passes)."""
    with connect(url) as sock:
        started = time.monotonic()
        sock.sendall(headers_only(path, 60_000))
        sock.settimeout(0.2)
        while time.monotonic() - started < stop_after:
            try:
                sock.sendall(b'{"m')
            except OSError:
                break
            try:
                peek = sock.recv(1, socket.MSG_PEEK)
            except TimeoutError:
                continue
            if peek:
                break
        sock.settimeout(15)
        return read_answer(sock, started)


def test_a_body_that_trickles_is_408_and_others_are_served_meanwhile(gunicorn):
    server = gunicorn(BODY_TIMEOUT_SECONDS="1.5", RATELIMIT_ENABLED="false")
    slow = 120
    with ThreadPoolExecutor(max_workers=slow) as pool:
        trickling = [
            pool.submit(trickle, server.url, path, 20)
            for path in ["/api/alice/chat", "/api/alice/tasks", "/api/chat"] * (slow // 3)
        ]
        time.sleep(0.3)  # the trickles are connected and sending
        # Meanwhile the service answers at once.
        lively = []
        for _ in range(10):
            answer = exchange(server.url, b"GET /health/live HTTP/1.1\r\nHost: x\r\n\r\n")
            lively.append(answer.seconds)
            assert answer.status == 200
        answers = [future.result(timeout=30) for future in trickling]
    assert max(lively) < 2.0, lively  # before: /health/live timed out
    for answer in answers:
        assert answer.status == 408, answer
        assert answer.problem()["code"] == "request_timeout"
        assert 1.4 < answer.seconds < 5, answer.seconds
    # A slow body that does arrive in time is served.
    body = json.dumps({"title": "slow but steady"}).encode()
    with connect(server.url) as sock:
        started = time.monotonic()
        sock.sendall(headers_only("/api/alice/tasks", len(body)))
        for i in range(0, len(body), 8):
            sock.sendall(body[i : i + 8])
            time.sleep(0.1)
        answer = read_answer(sock, started)
    assert answer.status == 201, answer
    assert json.loads(answer.body)["title"] == "slow but steady"


# Finding 14: SCRIPT_NAME is not taken from an untrusted client -------------------------


@pytest.mark.parametrize("script_name", ['/x";alert(1);//', "/x</script>"])
def test_script_name_from_a_client_is_not_trusted_by_default(shared_gunicorn, script_name):
    server = shared_gunicorn()
    raw = (
        f"GET {script_name}/docs/init.js HTTP/1.1\r\nHost: x\r\nSCRIPT_NAME: {script_name}\r\n\r\n"
    ).encode()
    answer = exchange(server.url, raw)
    assert b"alert" not in answer.body and b"</script>" not in answer.body
    plain = exchange(server.url, b"GET /docs/init.js HTTP/1.1\r\nHost: x\r\n\r\n")
    assert b'{url: "/openapi.json"' in plain.body
