"""chatsvc/speedups.py's send-side tricks: fewer system calls, the same bytes on the wire.

The probes run in a fresh interpreter (the patches must not leak into the test process); the
last test drives a real gunicorn, whose workers apply them, over real sockets."""

from __future__ import annotations

import http.client
import json
import subprocess
import sys
import textwrap
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent

GUNICORN_PROBE = textwrap.dedent(
    """
    import re, socket, sys
    sys.path.insert(0, ".")
    from chatsvc import speedups
    from gunicorn.config import Config
    from gunicorn.http import wsgi

    class Sock:                                    # a real socket that counts its sends
        def __init__(self, real):
            self.real, self.sends = real, []
        def sendall(self, data):
            self.sends.append(bytes(data))
            self.real.sendall(data)

    class Request:
        version, method, path, headers = (1, 1), "GET", "/", []
        def should_close(self):
            return False

    def respond(status, headers, writes):
        ours, theirs = socket.socketpair()
        sock = Sock(ours)
        response = wsgi.Response(Request(), sock, Config())
        response.start_response(status, headers)
        for data in writes:
            response.write(data)
        response.close()
        ours.close()
        wire = b""
        while chunk := theirs.recv(65536):
            wire += chunk
        return sock.sends, re.sub(rb"Date: [^\\r]*", b"Date: -", wire)   # its clock aside

    cases = [
        ("200 OK", [("Content-Type", "text/event-stream")], [b"event: a", b"event: b"]),
        ("200 OK", [("Content-Length", "2")], [b"{}"]),
        ("200 OK", [("Content-Type", "text/plain")], [b"", b"x"]),
        ("304 Not Modified", [], []),
    ]
    before = [respond(*case) for case in cases]
    speedups.headers_with_the_first_write()
    after = [respond(*case) for case in cases]
    for (old_sends, old_wire), (new_sends, new_wire) in zip(before, after):
        assert new_wire == old_wire, (old_wire, new_wire)          # the same bytes
        assert old_wire.startswith(b"HTTP/1.1 ")
    assert [len(s) for s, _ in before] == [4, 2, 3, 1]
    # The head rides along with the first body bytes; an empty first write still sends it
    # at once (an app that yields b"" wants its headers out now).
    assert [len(s) for s, _ in after] == [3, 1, 3, 1]
    assert after[0][0][0].endswith(b"\\r\\n\\r\\n8\\r\\nevent: a\\r\\n")
    print("ok")
    """
)


def test_gunicorn_sends_a_response_head_with_its_first_body_bytes(tmp_path: Path) -> None:
    assert _probe(GUNICORN_PROBE, tmp_path) == "ok"


HTTPCORE_PROBE = textwrap.dedent(
    """
    import socket, sys, threading
    sys.path.insert(0, ".")
    from chatsvc import speedups
    import httpcore2
    from httpcore2._backends.sync import SyncStream
    from httpcore2._sync.http11 import HTTP11Connection

    class Counted(SyncStream):
        def __init__(self, sock):
            super().__init__(sock)
            self.writes = []
        def write(self, buffer, timeout=None):
            self.writes.append(bytes(buffer))
            super().write(buffer, timeout)

    def post(body):
        ours, theirs = socket.socketpair()
        seen = b""
        def serve():
            nonlocal seen
            while not seen.endswith(b"\\r\\n\\r\\n" + body):
                seen += theirs.recv(65536)
            theirs.sendall(b"HTTP/1.1 200 OK\\r\\nContent-Length: 2\\r\\n\\r\\nok")
        server = threading.Thread(target=serve)
        server.start()
        stream = Counted(ours)
        connection = HTTP11Connection(httpcore2.Origin(b"http", b"fake", 80), stream)
        response = connection.request(
            "POST", "http://fake/v1/chat/completions", content=body,
            headers={"Content-Type": "application/json"},
        )
        server.join()
        connection.close()
        return stream.writes, seen, response.status, response.content

    body = b'{"model": "m", "stream": true}'
    old_writes, old_seen, *old_answer = post(body)
    speedups.request_head_with_its_body()
    new_writes, new_seen, *new_answer = post(body)
    assert new_seen == old_seen and new_answer == old_answer == [200, b"ok"]
    old_writes, new_writes = [w for w in old_writes if w], [w for w in new_writes if w]
    assert len(old_writes) == 2 and len(new_writes) == 1           # head and body, together
    assert new_writes[0] == b"".join(old_writes)
    print("ok")
    """
)


def test_httpcore_sends_a_request_head_with_its_body(tmp_path: Path) -> None:
    assert _probe(HTTPCORE_PROBE, tmp_path) == "ok"


def test_a_worker_answers_json_files_streams_and_bodiless_responses_whole(gunicorn) -> None:
    """Through a real gunicorn (its workers hold each head for the first body bytes): every
    kind of response keeps its framing, read by http.client on one kept-alive connection."""
    server = gunicorn()
    host, port = server.url.removeprefix("http://").split(":")
    connection = http.client.HTTPConnection(host, int(port), timeout=30)
    try:
        connection.request("GET", "/health/live")
        live = connection.getresponse()
        assert live.status == 200 and json.loads(live.read())

        # a static file (gunicorn's sendfile path)
        connection.request("GET", "/static/demo/demo.js")
        script = connection.getresponse()
        body = script.read()
        assert script.status == 200 and len(body) == int(script.getheader("Content-Length"))
        tag = script.getheader("ETag")

        connection.request("GET", "/static/demo/demo.js", headers={"If-None-Match": tag})
        unchanged = connection.getresponse()
        assert unchanged.status == 304 and unchanged.read() == b""

        connection.request("HEAD", "/health/live")
        head = connection.getresponse()
        assert head.status == 200 and head.read() == b""

        connection.request(
            "POST", "/api/speedups-user/chat", body=json.dumps({"message": "list my tasks"}),
            headers={"Content-Type": "application/json", "Accept": "text/event-stream"},
        )  # fmt: skip
        stream = connection.getresponse()
        assert stream.status == 200 and stream.getheader("Transfer-Encoding") == "chunked"
        frames = stream.read().decode().split("\n\n")
        lines = [line for frame in frames for line in frame.split("\n")]
        names = [line[7:] for line in lines if line.startswith("event: ")]
        assert names[0] == "meta" and names[-1] == "done" and "delta" in names

        connection.request("GET", "/health/live")  # the connection is still in step
        assert connection.getresponse().status == 200
    finally:
        connection.close()


def _probe(code: str, tmp_path: Path) -> str:
    done = subprocess.run(
        [sys.executable, "-c", code],
        cwd=REPO,
        env={"PROMETHEUS_MULTIPROC_DIR": str(tmp_path), "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()
