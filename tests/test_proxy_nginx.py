"""deploy/nginx/chatsvc.conf in front of chatsvc (gunicorn) on real sockets: a slow client's body
is buffered by nginx, SSE passes through unbuffered, the WebSocket upgrade and X-Forwarded-For
reach the backend, and the timeouts outlast AGENT_TIMEOUT_SECONDS."""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from conftest import empty_tables, require_service
from fakellm import say
from helpers import free_port, get
from sqlalchemy import create_engine

from chatsvc.config import Config

CONF = Path(__file__).resolve().parent.parent / "deploy" / "nginx" / "chatsvc.conf"
# compose's API replicas (each again as a backup)
UPSTREAM = re.compile(r"^ *server api\d+:8000(?: [^;\n]*)?;\n", re.M)
LISTEN = "listen 8080;"


def nginx_binary() -> str:
    found = shutil.which("nginx") or shutil.which("nginx", path="/usr/sbin:/sbin")
    return found or require_service("NGINX_BIN", "nginx (apt-get install nginx-light)")


def site(backend_port: int, port: int) -> str:
    """The committed config with only its upstream (one backend) and listen port changed."""
    text = CONF.read_text()
    servers = UPSTREAM.findall(text)
    assert servers and text.count(LISTEN) == 1
    text = text.replace(servers[0], f"    server 127.0.0.1:{backend_port};\n", 1)
    for other in servers[1:]:
        text = text.replace(other, "", 1)
    return text.replace(LISTEN, f"listen 127.0.0.1:{port};")


@pytest.fixture
def served(gunicorn, database_url: str):
    """The gunicorn fixture; what its requests stored is deleted after the test, so the tests
    after this one start from an empty database, as make_app's do."""
    yield gunicorn
    empty_tables(create_engine(database_url))


@pytest.fixture
def nginx(tmp_path: Path) -> Iterator[Callable[[int], str]]:
    """nginx with deploy/nginx/chatsvc.conf in front of a backend port; its URL."""
    binary = nginx_binary()
    processes: list[subprocess.Popen] = []

    def start(backend_port: int) -> str:
        port = free_port()
        prefix = tmp_path / f"nginx-{port}"
        (prefix / "logs").mkdir(parents=True)
        (prefix / "chatsvc.conf").write_text(site(backend_port, port))
        (prefix / "nginx.conf").write_text(
            ""
            # As root, workers would run as nobody, who cannot enter pytest's private tmp folders.
            + ("user root;\n" if os.geteuid() == 0 else "")
            + "worker_processes 1;\npid nginx.pid;\nerror_log logs/error.log warn;\n"
            "events { worker_connections 256; }\n"
            "http {\n  access_log off;\n"
            f"  client_body_temp_path {prefix}/body;\n  proxy_temp_path {prefix}/proxy;\n"
            f"  include {prefix}/chatsvc.conf;\n}}\n"
        )
        command = [binary, "-p", str(prefix), "-c", str(prefix / "nginx.conf")]
        checked = subprocess.run([*command, "-t"], capture_output=True, text=True)
        assert checked.returncode == 0, checked.stderr
        process = subprocess.Popen([*command, "-g", "daemon off;"], stderr=subprocess.PIPE)
        processes.append(process)
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 10
        while not listening(port):
            assert process.poll() is None, process.stderr.read().decode()
            assert time.monotonic() < deadline, "nginx did not start"
            time.sleep(0.05)
        return url

    yield start
    for process in processes:
        process.terminate()
        process.wait(timeout=10)


def listening(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
        return True
    except OSError:
        return False


def access_lines(server, path_template: str) -> list[dict]:
    lines = []
    for line in server.log.read_text().splitlines():
        if line.startswith("{"):
            entry = json.loads(line)
            if entry.get("logger") == "chatsvc.access" and entry.get("path") == path_template:
                lines.append(entry)
    return lines


def test_a_slow_clients_body_reaches_chatsvc_only_when_complete(served, nginx):
    server = served(LOG_LEVEL="INFO", LOG_FORMAT="json")
    url = nginx(int(server.url.rsplit(":", 1)[1]))
    port = int(url.rsplit(":", 1)[1])
    body = json.dumps({"message": "add a task to buy slow milk"}).encode()
    started = time.monotonic()
    with socket.create_connection(("127.0.0.1", port), timeout=10) as client:
        client.sendall(
            b"POST /api/alice/chat HTTP/1.1\r\nHost: chat.example\r\n"
            b"Content-Type: application/json\r\nConnection: close\r\n"
            b"Content-Length: %d\r\n\r\n" % len(body)
        )
        for start in range(0, len(body), 8):  # about 1.5 s to send the whole body
            client.sendall(body[start : start + 8])
            time.sleep(1.5 / (len(body) / 8))
        reply = b""
        while chunk := client.recv(65536):
            reply += chunk
    sending = time.monotonic() - started
    assert reply.startswith(b"HTTP/1.1 200"), reply[:200]
    assert sending > 1.4
    deadline = time.monotonic() + 10
    while not (entries := access_lines(server, "/api/<user_id>/chat")):
        assert time.monotonic() < deadline, server.log.read_text()[-2000:]
        time.sleep(0.05)
    # chatsvc saw the request only once nginx had the whole body: it took milliseconds there.
    assert entries[-1]["duration_ms"] < 500, entries[-1]


def test_sse_passes_through_the_proxy_event_by_event(served, nginx, fake_llm):
    fake_llm.script(say("one two three four five six seven eight", chunk_delay=0.3))
    server = served(
        AGENT_PROVIDER="openai", OPENAI_BASE_URL=fake_llm.url, OPENAI_API_KEY="sk-test",
        AGENT_MAX_RETRIES="0",
    )  # fmt: skip
    url = nginx(int(server.url.rsplit(":", 1)[1]))
    port = int(url.rsplit(":", 1)[1])
    body = json.dumps({"message": "count"}).encode()
    arrivals: list[tuple[float, str]] = []
    started = time.monotonic()
    with socket.create_connection(("127.0.0.1", port), timeout=10) as client:
        client.sendall(
            b"POST /api/alice/chat HTTP/1.1\r\nHost: chat.example\r\nAccept: text/event-stream\r\n"
            b"Content-Type: application/json\r\nConnection: close\r\n"
            b"Content-Length: %d\r\n\r\n%s" % (len(body), body)
        )
        buffer = b""
        while chunk := client.recv(65536):
            buffer += chunk
            # Each event counted once, when its name line is complete (chunks split anywhere).
            names = re.findall(rb"\nevent: (\w+)\r?\n", buffer)
            for name in names[len(arrivals) :]:
                arrivals.append((time.monotonic() - started, name.decode()))
    head = buffer.split(b"\r\n\r\n", 1)[0].decode().lower()
    assert head.startswith("http/1.1 200") and "content-type: text/event-stream" in head
    deltas = [at for at, name in arrivals if name == "delta"]
    assert len(deltas) >= 6 and arrivals[-1][1] == "done", buffer.decode(errors="replace")
    # The model took ~2.1 s; the first words reached the client long before the last ones.
    assert deltas[-1] - deltas[0] > 1.2, arrivals


class UpgradeBackend:
    """A stand-in backend for the WebSocket route (chatsvc gains /chat/ws in issue 18): it
    records the request head, answers 101 and echoes what the tunnel then carries."""

    def __init__(self) -> None:
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.heads: list[str] = []
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                connection, _ = self.listener.accept()
            except OSError:
                return
            with connection:
                head = b""
                while b"\r\n\r\n" not in head:
                    head += connection.recv(4096)
                self.heads.append(head.decode())
                connection.sendall(
                    b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
                    b"Connection: Upgrade\r\n\r\n"
                )
                while data := connection.recv(4096):
                    connection.sendall(data)

    def close(self) -> None:
        self.listener.close()


@pytest.mark.parametrize("path", ["/api/alice/chat/ws", "/api/chat/ws"])
def test_websocket_upgrade_and_forwarded_for_reach_the_backend(nginx, path):
    backend = UpgradeBackend()
    try:
        port = int(nginx(backend.port).rsplit(":", 1)[1])
        with socket.create_connection(("127.0.0.1", port), timeout=10) as client:
            client.sendall(
                f"GET {path} HTTP/1.1\r\nHost: chat.example\r\nUpgrade: websocket\r\n"
                "Connection: Upgrade\r\nSec-WebSocket-Version: 13\r\n"
                "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n".encode()
            )
            reply = b""
            while b"\r\n\r\n" not in reply:
                reply += client.recv(4096)
            assert reply.startswith(b"HTTP/1.1 101"), reply
            client.sendall(b"frame through the tunnel")
            echoed = b""
            while len(echoed) < len(b"frame through the tunnel"):
                echoed += client.recv(4096)
            assert echoed == b"frame through the tunnel"
        head = backend.heads[-1].lower()
        assert head.startswith(f"get {path} http/1.1")
        assert "upgrade: websocket" in head and "connection: upgrade" in head
        assert "sec-websocket-key: dghlihnhbxbszsbub25jzq==" in head
        assert "x-forwarded-for: 127.0.0.1" in head and "x-forwarded-proto: http" in head
    finally:
        backend.close()


def test_plain_requests_reach_chatsvc_with_keepalive_not_upgrade(served, nginx):
    server = served()
    url = nginx(int(server.url.rsplit(":", 1)[1]))
    assert get(url + "/health") == 200
    assert get(url + "/api/alice/tasks") == 200


def test_timeouts_outlast_the_agent_timeout():
    text = CONF.read_text()
    timeouts = re.findall(r"proxy_(?:read|send)_timeout\s+(\d+)(s|m|h);", text)
    assert timeouts
    seconds = [int(n) * {"s": 1, "m": 60, "h": 3600}[unit] for n, unit in timeouts]
    assert min(seconds) > Config.AGENT_TIMEOUT_SECONDS
