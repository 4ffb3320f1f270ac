"""Small helpers shared by the tests: requests, problem checks, SSE parsing, moving time back."""

from __future__ import annotations

import base64
import json
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import timedelta
from pathlib import Path
from typing import Any
from urllib.error import HTTPError, URLError
from urllib.request import Request, urlopen

import sse
from flask import Flask
from sqlalchemy import select
from werkzeug.test import TestResponse

from chatsvc.agent.base import Reply
from chatsvc.db import database
from chatsvc.models import Chunk, Conversation, Message, Section
from chatsvc.services import chunking, knowledge


def chat(client: Any, user: str, message: str, **body: Any) -> TestResponse:
    return client.post(f"/api/{user}/chat", json={"message": message, **body})


def ok(response: TestResponse, status: int = 200) -> dict[str, Any]:
    """The JSON body of a successful response, with a readable failure when it is not."""
    assert response.status_code == status, response.get_data(as_text=True)
    return response.get_json()


def assert_problem(response: TestResponse, status: int, code: str) -> dict[str, Any]:
    """An RFC 9457 problem body of the contract, with the request id of the response."""
    assert response.status_code == status, response.get_data(as_text=True)
    assert response.mimetype == "application/problem+json"
    body = response.get_json()
    assert body["status"] == status
    assert body["code"] == code
    assert body["type"] == "about:blank"
    assert body["title"] and body["detail"]
    assert body["request_id"] == response.headers["X-Request-ID"]
    return body


def tasks(client: Any, user: str, status: str = "all") -> list[dict[str, Any]]:
    return ok(client.get(f"/api/{user}/tasks?status={status}&limit=100"))["items"]


def history(client: Any, user: str, conversation_id: str, limit: int = 100) -> list[dict]:
    response = client.get(f"/api/{user}/conversations/{conversation_id}?limit={limit}")
    return ok(response)["messages"]


def age(app: Flask, conversation_id: str, seconds: float) -> None:
    """Move a conversation's clock (last activity, turn start, messages) `seconds` back. A turn
    in flight on it stops renewing its lease first: as if its worker had died."""
    shift = timedelta(seconds=seconds)
    with database(app).sessions() as session:
        conversation = session.get(Conversation, conversation_id)
        if conversation.active_turn_id is not None:
            app.extensions["chatsvc.turns"].leases.release(conversation.active_turn_id)
        conversation.last_activity -= shift
        if conversation.turn_started_at is not None:
            conversation.turn_started_at -= shift
        for message in session.scalars(
            select(Message).where(Message.conversation_id == conversation_id)
        ):
            message.created_at -= shift
        session.commit()


def sse_events(response: TestResponse) -> list[tuple[str, int, dict[str, Any]]]:
    """(event, id, data) of each Server-Sent Event; comment lines are skipped."""
    events, _ = sse.parse(response.get_data(as_text=True))
    return [(event.name, event.id, event.data) for event in events]


def forged_cursor(*position: Any) -> str:
    """A cursor the service never issued, in the shape of its own (base64url JSON)."""
    return base64.urlsafe_b64encode(json.dumps(position).encode()).decode().rstrip("=")


FORGED_INT_CURSORS = [forged_cursor(n) for n in (2**31, 2**63, 10**30, -(10**30), -1)]


@contextmanager
def turn_in_flight(
    app: Flask, agent: Any, conversation: str, path: str = "/api/alice/chat"
) -> Iterator[None]:
    """A turn ("crashing") whose agent hangs until the block ends: a turn in flight, or, once
    aged past TURN_STALE_SECONDS, one whose worker crashed."""
    entered, gate = threading.Event(), threading.Event()

    def hang(turn, tools):
        entered.set()
        gate.wait(timeout=10)
        return Reply("too late", "scripted")

    agent.steps.append(hang)
    body = {"message": "crashing"}
    if path.endswith("/chat"):
        body["conversation_id"] = conversation
    worker = threading.Thread(target=app.test_client().post, args=(path,), kwargs={"json": body})
    worker.start()
    try:
        assert entered.wait(timeout=10)
        yield
    finally:
        gate.set()
        worker.join(timeout=10)


@contextmanager
def serving(server: Any) -> Iterator[Any]:
    """`server` (werkzeug's make_server, an http.server one) answering in a thread for the
    block, then shut down and closed. Its loop looks for the shutdown every 0.05 s: at the
    default 0.5 s each stop waited 0.2-0.5 s, in the teardown of every test that used one."""
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()


def wait_for(condition: Any, timeout: float = 10.0, what: str = "the condition") -> Any:
    """Poll `condition` until it returns something true (returned), or fail after `timeout`."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def get(url: str, headers: dict[str, str] | None = None) -> int:
    """The status of a GET to a real server; 0 while nothing listens (or a booting worker has
    not answered within 10 s, as on a loaded machine)."""
    try:
        with urlopen(Request(url, headers=headers or {}), timeout=10) as response:
            return response.status
    except HTTPError as error:
        return error.code
    except (URLError, OSError):
        return 0


def children(pid: int) -> list[int]:
    """The processes whose parent is `pid` (a gunicorn master's workers), from /proc."""
    found = []
    for status in Path("/proc").glob("[0-9]*/status"):
        try:
            text = status.read_text()
        except OSError:  # it exited meanwhile
            continue
        if f"\nPPid:\t{pid}\n" in text:
            found.append(int(status.parent.name))
    return found


def stored(app, document_id: str) -> list[tuple[str, int, str]]:
    """A document's passages as stored: (section path, ordinal, text), in order."""
    with database(app).read() as session:
        return [
            (row.path, row.ordinal, row.text)
            for row in session.execute(
                select(Section.path, Chunk.ordinal, Chunk.text)
                .join(Section, Section.id == Chunk.section_id)
                .where(Chunk.document_id == document_id)
                .order_by(Chunk.ordinal)
            )
        ]


def expected(title: str, body: str) -> list[tuple[str, int, str]]:
    """The passages `stored` should find for a text: (section path, ordinal, text), in order."""
    parts = chunking.split(title, knowledge.normalise(body))
    passages = [(part.path, passage) for part in parts for passage in part.passages]
    return [(path, n, passage) for n, (path, passage) in enumerate(passages)]


def race_the_split(app: Flask, monkeypatch: Any, title: str, text: str) -> list[str]:
    """Another writer stores `text` (titled `title` + " elsewhere") the first time a document
    titled `title` is split; the returned list then holds that writer's document id."""
    split = chunking.split
    raced: list[str] = []

    def split_while_another_writer_stores(split_title: str, body: str) -> Any:
        if split_title == title and not raced:
            with database(app).sessions() as other:
                document, created = knowledge.ingest(other, f"{title} elsewhere", text)
                assert created
                raced.append(document.id)
        return split(split_title, body)

    monkeypatch.setattr(chunking, "split", split_while_another_writer_stores)
    return raced
