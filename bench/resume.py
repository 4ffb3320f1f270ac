"""P8's client (issue 17): streams that drop their connection and resume, among many live ones.

Each of C clients starts a streamed turn (its start spread over the ramp) against a fake whose
answers are long, reads it until its drop point (after the ramp: by then all C turns stream),
drops the connection (an abort: no orderly close), waits `pause_s` (the events meanwhile are
missed) and resumes with `GET /api/{user}/conversations/{cid}/messages/{mid}/events` and
`Last-Event-ID`. It times the resume from the request's connect to the first event read, then
reads to `done` and checks that every event came once and in order (ids last+1, last+2, …) and
that the deltas before and after the drop, joined, equal the stored reply (the message read
back with GET).
"""

from __future__ import annotations

import asyncio
import json
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from .streams import BUCKET_MS, ResponseReader, _bucket, _sleep_until, percentile

TIMEOUT_S = 60.0  # a 20 s answer


@dataclass
class ResumePlan:
    port: int
    concurrency: int
    start_at: float
    ramp_s: float
    token: str
    user: str
    drop_after: int  # the first client's drop point, in deltas; each next one a little later
    spread: int  # drop points spread over this many deltas
    pause_s: float = 0.5


@dataclass
class ResumeTally:
    resume: Counter = field(default_factory=Counter)  # tenths of a ms
    first_delta: Counter = field(default_factory=Counter)  # the turns' own TTFD: the load
    ok: int = 0
    failures: Counter = field(default_factory=Counter)
    replayed: int = 0  # events the resumes replayed or followed

    def summary(self) -> dict[str, Any]:
        resumes = sum(self.resume.values())
        return {
            "resumes": resumes, "ok": self.ok, "failures": sum(self.failures.values()),
            "failure_kinds": dict(self.failures), "events_after_resume": self.replayed,
            "resume_p50_ms": percentile(self.resume, 0.5),
            "resume_p95_ms": percentile(self.resume, 0.95),
            "resume_p99_ms": percentile(self.resume, 0.99),
            "resume_max_ms": max(self.resume, default=0) * BUCKET_MS,
            "ttfd_p50_ms": percentile(self.first_delta, 0.5),
            "ttfd_p95_ms": percentile(self.first_delta, 0.95),
        }  # fmt: skip


class TurnFailed(Exception):
    """A resumed turn went wrong; its args[0] names how."""


async def _request(plan: ResumePlan, head: str, body: bytes = b"") -> tuple[Any, Any]:
    reader, writer = await asyncio.open_connection("127.0.0.1", plan.port)
    auth = f"Authorization: Bearer {plan.token}\r\n"
    length = f"Content-Length: {len(body)}\r\n" if body else ""
    writer.write(
        f"{head}\r\nHost: 127.0.0.1\r\n{auth}{length}Connection: close\r\n\r\n".encode() + body
    )
    return reader, writer


async def _frames(reader: asyncio.StreamReader, response: ResponseReader) -> Any:
    """The frames of a response as they arrive (an async iterator)."""
    while not response.ended:
        data = await reader.read(65536)
        if not data:
            return
        for frame in response.feed(data):
            yield frame
        if response.status and response.status != 200:
            raise TurnFailed(f"status {response.status}")


async def _start(
    plan: ResumePlan, tally: ResumeTally, number: int, drop_after: int
) -> tuple[dict, int, list[str]]:
    """The turn, read up to its drop point; returns its meta, its last id and its text."""
    body = json.dumps({"message": f"resume please {number}-{time.monotonic_ns():x}"}).encode()
    head = (
        f"POST /api/{plan.user}/chat HTTP/1.1\r\nContent-Type: application/json\r\n"
        "Accept: text/event-stream"
    )
    sent = time.monotonic()
    reader, writer = await _request(plan, head, body)
    meta, last, text = {}, 0, []
    try:
        async for name, event_id, data in _frames(reader, ResponseReader()):
            last = int(event_id) if event_id else last
            if name == "meta":
                meta = json.loads(data)
            elif name == "delta":
                if not text:
                    tally.first_delta[_bucket(time.monotonic() - sent)] += 1
                text.append(json.loads(data)["text"])
                if len(text) >= drop_after:
                    return meta, last, text
            elif name in ("done", "error"):
                raise TurnFailed(f"{name} before the drop")
        raise TurnFailed("closed before the drop")
    finally:
        writer.transport.abort()  # the drop: a lost network, not a goodbye


async def _resume(
    plan: ResumePlan, tally: ResumeTally, meta: dict, last: int
) -> tuple[list[str], str]:
    """The events after `last`: returns the texts of the deltas and the `done`'s response."""
    path = (
        f"/api/{plan.user}/conversations/{meta['conversation_id']}/messages/"
        f"{meta['message_id']}/events"
    )
    sent = time.monotonic()
    head = f"GET {path} HTTP/1.1\r\nAccept: text/event-stream\r\nLast-Event-ID: {last}"
    reader, writer = await _request(plan, head)
    text, expected, first = [], last + 1, True
    try:
        async for name, event_id, data in _frames(reader, ResponseReader()):
            first_seen = not first
            if first:
                tally.resume[_bucket(time.monotonic() - sent)] += 1
                first = False
            if int(event_id) != expected:  # a repeat (id below) or a skip (id above)
                how = "repeated" if int(event_id) < expected else "skipped"
                gap = "" if first_seen else " (at the first event)"
                raise TurnFailed(f"event {how}{gap}")
            expected += 1
            tally.replayed += 1
            if name == "delta":
                text.append(json.loads(data)["text"])
            elif name == "done":
                return text, json.loads(data)["response"]
            elif name == "error":
                raise TurnFailed(f"error event {json.loads(data).get('code')}")
        raise TurnFailed("ended without done")
    finally:
        writer.close()


async def _stored(plan: ResumePlan, meta: dict) -> str:
    path = f"/api/{plan.user}/conversations/{meta['conversation_id']}/messages/{meta['message_id']}"
    reader, writer = await _request(plan, f"GET {path} HTTP/1.1\r\nAccept: application/json")
    response = ResponseReader()
    while not response.ended:
        data = await reader.read(65536)
        if not data:
            break
        response.feed(data)
    writer.close()
    return json.loads(response.body)["content"]


async def client(plan: ResumePlan, tally: ResumeTally, number: int) -> None:
    await _sleep_until(plan.start_at + plan.ramp_s * number / plan.concurrency)
    drop_after = plan.drop_after + number % max(1, plan.spread)
    try:
        meta, last, before = await asyncio.wait_for(
            _start(plan, tally, number, drop_after), TIMEOUT_S
        )
        await asyncio.sleep(plan.pause_s)
        after, response = await asyncio.wait_for(_resume(plan, tally, meta, last), TIMEOUT_S)
        if "".join(before + after) != response:
            raise TurnFailed("text differs from done")
        if await _stored(plan, meta) != response:
            raise TurnFailed("text differs from the stored reply")
        tally.ok += 1
    except TurnFailed as failure:
        tally.failures[str(failure)] += 1
    except (TimeoutError, OSError) as error:
        tally.failures[type(error).__name__] += 1


async def run(plan: ResumePlan) -> ResumeTally:
    tally = ResumeTally()
    await asyncio.gather(*(client(plan, tally, n) for n in range(plan.concurrency)))
    return tally


def measure(plan: ResumePlan) -> ResumeTally:
    try:
        import uvloop
    except ImportError:
        return asyncio.run(run(plan))
    return uvloop.run(run(plan))
