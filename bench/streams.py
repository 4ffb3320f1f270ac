"""P7's load client: many concurrent streamed turns, read over raw asyncio sockets.

    python -m bench.streams --port P --kind chatsvc|peer|fake --concurrency C
        [--seconds S] [--ramp-seconds R] [--token T] [--user U] [--tokens N] [--processes K]

Each of C clients runs streamed turns one after another, each a new conversation: its first
starts at its own moment within the ramp (one answer's length by default, so streams are spread
as independent users' would be), the next as soon as one ends, until the steady window (after
the ramp, S seconds long) closes; the turns still running then are read to their end. Every
`delta` is timed as the client's socket sees it: TTFD (time to the first delta, from the
connect) and the gap between consecutive deltas of a turn. A turn fails when it is not a 200
(a 503 `overloaded` is counted apart, as refused: the client waits its Retry-After and tries
again), carries an `error` event, ends without `done`, times out, or its text is not the whole
answer. `--kind fake` reads the fake model directly (OpenAI chunks): the floor.

The parser is incremental and allocation-light (one bytes split per frame, one json.loads per
delta) and the process counts its own CPU per delta and its event loop's lag, so a report can
show that the client was not the bottleneck; `--processes K` splits the clients over K
processes (`measure` does that for you). The summary is one JSON line on stdout.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .fakellm import WORDS

REPO = Path(__file__).resolve().parent.parent
BUCKET_MS = 0.1  # latency histograms count in tenths of a millisecond
TURN_TIMEOUT_S = 30.0  # a 5 s answer that has not ended in 30 s is a failure (timeout)
# A refused client waits Retry-After, at most this long: the server's own cap
# (OVERLOAD_RETRY_AFTER_MAX_SECONDS) is what counts; BENCH_RETRY_CAP_S=2 is the old client, which
# came back every 2 s at most however long it was asked to wait (bench/RESULTS.md, "Refusals").
RETRY_CAP_S = float(os.environ.get("BENCH_RETRY_CAP_S", "600"))
SIZE_NEXT, CRLF_NEXT = -1, -2  # the chunk decoder's states between chunks


def expected_text(tokens: int) -> str:
    """The answer the fake model streams with `--tokens N`."""
    return "".join(WORDS[n % len(WORDS)] for n in range(tokens))


# Parsing --------------------------------------------------------------------------------------


class ResponseReader:
    """An HTTP/1.1 response fed as it arrives: the status line and headers, then a chunked,
    length-delimited or close-delimited body cut into Server-Sent Events frames.

    `feed(data)` returns the complete frames in `data` as (event, id, data) tuples: the
    `event:` name ("message" when absent), the `id:` ("" when absent) and the `data:` lines
    joined by newlines; comment lines (`: ping`) are dropped. `ended` tells the body is whole."""

    __slots__ = ("status", "headers", "ended", "_raw", "_body", "_chunk_left", "_length")

    def __init__(self) -> None:
        self.status = 0
        self.headers: dict[str, str] = {}
        self.ended = False
        self._raw = b""  # bytes not yet taken by the head or the chunk decoder
        self._body = b""  # body bytes not yet cut into frames
        self._chunk_left = SIZE_NEXT  # chunked: bytes left of the current chunk, or a state
        self._length: int | None = None  # Content-Length, when the body is not chunked

    def feed(self, data: bytes) -> list[tuple[str, str, str]]:
        if not self.status:
            self._raw += data
            end = self._raw.find(b"\r\n\r\n")
            if end < 0:
                return []
            self._head(self._raw[:end].decode("latin-1"))
            data, self._raw = self._raw[end + 4 :], b""
        if self.ended:  # the last chunk's trailer, or bytes past the length
            return []
        if self.headers.get("transfer-encoding", "").lower() == "chunked":
            self._dechunk(data)
        else:
            self._body += data
            if self._length is not None and len(self._body) >= self._length:
                self.ended = True
        return self._frames()

    @property
    def body(self) -> bytes:
        """What the body holds that is not a complete frame (an error response's JSON)."""
        return self._body

    def _head(self, head: str) -> None:
        lines = head.split("\r\n")
        self.status = int(lines[0].split(" ", 2)[1])
        for line in lines[1:]:
            name, _, value = line.partition(":")
            self.headers[name.strip().lower()] = value.strip()
        if "content-length" in self.headers:
            self._length = int(self.headers["content-length"])
            self.ended = self._length == 0

    def _dechunk(self, data: bytes) -> None:
        raw = self._raw + data if self._raw else data
        position, size = 0, len(raw)
        pieces = [self._body] if self._body else []
        while position < size:
            left = self._chunk_left
            if left > 0:  # the chunk's own bytes
                take = min(left, size - position)
                pieces.append(raw[position : position + take])
                position += take
                self._chunk_left = left - take or CRLF_NEXT
            elif left == CRLF_NEXT:
                if size - position < 2:
                    break
                position += 2
                self._chunk_left = SIZE_NEXT
            else:
                line_end = raw.find(b"\r\n", position)
                if line_end < 0:
                    break
                length = int(raw[position:line_end].split(b";", 1)[0], 16)
                position = line_end + 2
                if length == 0:
                    self.ended = True
                    position = size
                    break
                self._chunk_left = length
        self._raw = raw[position:]
        self._body = b"".join(pieces)

    def _frames(self) -> list[tuple[str, str, str]]:
        body = self._body
        if b"\n\n" not in body:
            return []
        *complete, self._body = body.split(b"\n\n")
        frames = []
        for block in complete:
            name, event_id, data = "message", "", []
            for line in block.decode().split("\n"):
                if line.startswith("data:"):
                    data.append(line[6:] if line[5:6] == " " else line[5:])
                elif line.startswith("event:"):
                    name = line[6:].strip()
                elif line.startswith("id:"):
                    event_id = line[3:].strip()
            if data or name != "message":
                frames.append((name, event_id, "\n".join(data)))
        return frames


def delta_text(kind: str, frame: tuple[str, str, str]) -> str | None:
    """The text a frame adds to the answer (None: not a delta). chatsvc and the peer send
    `event: delta` with `{"text"}`; the fake sends OpenAI chunks."""
    name, _, data = frame
    if kind != "fake":
        return json.loads(data)["text"] if name == "delta" else None
    if not data.startswith("{"):
        return None
    choices = json.loads(data)["choices"]
    return (choices[0]["delta"].get("content") or None) if choices else None


# The load -------------------------------------------------------------------------------------


@dataclass
class Plan:
    """What the clients run: where, as whom, how many, and when (monotonic seconds)."""

    kind: str
    port: int
    concurrency: int
    start_at: float
    ramp_s: float
    steady_s: float
    tokens: int
    token: str = ""
    user: str = "bench-p7"
    first_client: int = 0  # this process's first client number (several processes)
    total_clients: int = 0  # over every process: spreads the starts over the ramp

    @property
    def window(self) -> tuple[float, float]:
        start = self.start_at + self.ramp_s
        return start, start + self.steady_s

    def request(self, number: int) -> bytes:
        run = f"{os.getpid()}-{number}-{time.monotonic_ns():x}"
        if self.kind == "fake":
            body = json.dumps(
                {"model": "bench", "stream": True, "stream_options": {"include_usage": True},
                 "messages": [{"role": "system", "content": "x" * 2800},
                              {"role": "user", "content": f"stream please {run}"}]}
            )  # fmt: skip
            path, auth = "/v1/chat/completions", ""
        else:
            body = json.dumps({"message": f"stream please {run}"})
            path = f"/api/{self.user}/chat"
            auth = f"Authorization: Bearer {self.token}\r\n" if self.token else ""
        encoded = body.encode()
        return (
            f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1:{self.port}\r\n"
            "Content-Type: application/json\r\nAccept: text/event-stream\r\n"
            f"{auth}Content-Length: {len(encoded)}\r\nConnection: close\r\n\r\n"
        ).encode() + encoded


@dataclass
class Tally:
    """What one process saw: histograms (tenths of a ms) and counts; `merge` adds two."""

    ttfd: Counter = field(default_factory=Counter)
    gaps: Counter = field(default_factory=Counter)
    lag: Counter = field(default_factory=Counter)
    turns: int = 0
    ok: int = 0
    refused: int = 0
    failures: Counter = field(default_factory=Counter)
    deltas: int = 0
    window_deltas: int = 0
    window_cpu_s: float = 0.0
    processes: int = 1

    def as_json(self) -> dict[str, Any]:
        return {
            "ttfd": dict(self.ttfd), "gaps": dict(self.gaps), "lag": dict(self.lag),
            "turns": self.turns, "ok": self.ok, "refused": self.refused,
            "failures": dict(self.failures), "deltas": self.deltas,
            "window_deltas": self.window_deltas, "window_cpu_s": self.window_cpu_s,
            "processes": self.processes,
        }  # fmt: skip

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Tally:
        histogram = {key: Counter({int(k): v for k, v in data[key].items()}) for key in
                     ("ttfd", "gaps", "lag")}  # fmt: skip
        return cls(
            **histogram, turns=data["turns"], ok=data["ok"], refused=data["refused"],
            failures=Counter(data["failures"]), deltas=data["deltas"],
            window_deltas=data["window_deltas"], window_cpu_s=data["window_cpu_s"],
            processes=data["processes"],
        )  # fmt: skip

    def merge(self, other: Tally) -> Tally:
        return Tally(
            self.ttfd + other.ttfd, self.gaps + other.gaps, self.lag + other.lag,
            self.turns + other.turns, self.ok + other.ok, self.refused + other.refused,
            self.failures + other.failures, self.deltas + other.deltas,
            self.window_deltas + other.window_deltas, self.window_cpu_s + other.window_cpu_s,
            self.processes + other.processes,
        )  # fmt: skip


def percentile(histogram: Counter, fraction: float) -> float:
    """The `fraction` quantile of a histogram of tenths of a millisecond, in ms (nan: empty)."""
    total = sum(histogram.values())
    if not total:
        return math.nan
    rank, seen = math.ceil(fraction * total), 0
    for bucket in sorted(histogram):
        seen += histogram[bucket]
        if seen >= rank:
            return bucket * BUCKET_MS
    return max(histogram) * BUCKET_MS


def _bucket(seconds: float) -> int:
    return int(seconds * 1000 / BUCKET_MS)


class TurnProtocol(asyncio.Protocol):
    """One streamed turn on its own connection: sends the request, times every delta."""

    def __init__(self, plan: Plan, tally: Tally, request: bytes, sent: float) -> None:
        self.plan, self.tally, self.request, self.sent = plan, tally, request, sent
        self.reader = ResponseReader()
        self.done = asyncio.get_running_loop().create_future()
        self.last = 0.0
        self.text: list[str] = []
        self.outcome = ""  # "" while running; then "ok", "refused" or a failure
        self.retry_after = 1.0
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        transport.write(self.request)  # type: ignore[attr-defined]

    def data_received(self, data: bytes) -> None:
        now = time.monotonic()
        reader = self.reader
        frames = reader.feed(data)
        if reader.status and reader.status != 200:
            if reader.ended:
                self._refused_or_failed()
            return
        kind, tally = self.plan.kind, self.tally
        for frame in frames:
            text = delta_text(kind, frame)
            if text is not None:
                if self.last:
                    tally.gaps[_bucket(now - self.last)] += 1
                else:
                    tally.ttfd[_bucket(now - self.sent)] += 1
                self.last = now
                self.text.append(text)
                tally.deltas += 1
                start, end = self.plan.window
                if start <= now < end:
                    tally.window_deltas += 1
            elif frame[0] in ("done", "error") or frame[2] == "[DONE]":
                self._finish("error_event" if frame[0] == "error" else self._check_text())
                return
        if reader.ended:
            self._finish("no_done")

    def connection_lost(self, exc: Exception | None) -> None:
        if self.reader.status and self.reader.status != 200:
            self._refused_or_failed()
        self._finish("no_done")

    def _refused_or_failed(self) -> None:
        body = self.reader.body
        if self.reader.status == 503 and b"overloaded" in body:
            self.retry_after = float(self.reader.headers.get("retry-after") or 1)
            self._finish("refused")
        else:
            self._finish("status")

    def _check_text(self) -> str:
        return "ok" if "".join(self.text) == expected_text(self.plan.tokens) else "short_text"

    def _finish(self, outcome: str) -> None:
        if self.outcome:
            return
        self.outcome = outcome
        if self.transport is not None:
            self.transport.close()
        if not self.done.done():
            self.done.set_result(outcome)


async def one_turn(plan: Plan, tally: Tally, number: int) -> tuple[str, float]:
    """Runs a turn; returns its outcome and, when refused, how long to wait."""
    loop = asyncio.get_running_loop()
    request = plan.request(number)
    sent = time.monotonic()
    try:
        transport, protocol = await asyncio.wait_for(
            loop.create_connection(
                lambda: TurnProtocol(plan, tally, request, sent), "127.0.0.1", plan.port
            ),
            TURN_TIMEOUT_S,
        )
    except (TimeoutError, OSError):
        return "connect", 0.0
    try:
        outcome = await asyncio.wait_for(
            asyncio.shield(protocol.done), TURN_TIMEOUT_S - (time.monotonic() - sent)
        )
    except TimeoutError:
        protocol._finish("timeout")
        transport.abort()
        outcome = "timeout"
    return outcome, protocol.retry_after


async def client(plan: Plan, tally: Tally, number: int) -> None:
    """A user sending streamed turns one after another until the window closes."""
    share = number / max(1, plan.total_clients or plan.concurrency)
    await _sleep_until(plan.start_at + plan.ramp_s * share)
    end = plan.window[1]
    turn = 0
    while time.monotonic() < end:
        outcome, wait = await one_turn(plan, tally, number * 1_000_000 + turn)
        turn += 1
        tally.turns += 1
        if outcome == "ok":
            tally.ok += 1
        elif outcome == "refused":
            tally.refused += 1
            await asyncio.sleep(min(wait, RETRY_CAP_S))
        else:
            tally.failures[outcome] += 1


async def _sleep_until(moment: float) -> None:
    await asyncio.sleep(max(0.0, moment - time.monotonic()))


async def watch(plan: Plan, tally: Tally, every_s: float = 0.01) -> None:
    """The event loop's own lag (how late a 10 ms timer fires), and this process's CPU over
    the steady window."""
    start, end = plan.window
    cpu_start = None
    while True:
        before = time.monotonic()
        await asyncio.sleep(every_s)
        now = time.monotonic()
        tally.lag[_bucket(max(0.0, now - before - every_s))] += 1
        if cpu_start is None and now >= start:
            cpu_start = time.process_time()
        if now >= end:
            tally.window_cpu_s = time.process_time() - (cpu_start or 0.0)
            return


async def run(plan: Plan) -> Tally:
    tally = Tally()
    watcher = asyncio.ensure_future(watch(plan, tally))
    numbers = range(plan.first_client, plan.first_client + plan.concurrency)
    await asyncio.gather(*(client(plan, tally, n) for n in numbers))
    await watcher
    return tally


def run_here(plan: Plan) -> Tally:
    """Runs `plan` in this process, on uvloop when it is installed (bench's extra)."""
    try:
        import uvloop
    except ImportError:
        return asyncio.run(run(plan))
    return uvloop.run(run(plan))


# Several processes ----------------------------------------------------------------------------


def measure(
    kind: str, port: int, concurrency: int, *, steady_s: float, ramp_s: float, tokens: int,
    token: str = "", user: str = "bench-p7", processes: int | None = None,
    at_window: Callable[[str], None] | None = None,
) -> Tally:  # fmt: skip
    """`concurrency` clients over `processes` load processes (one per 1,000 clients by
    default); `at_window("start")` / `at_window("end")` is called as the steady window opens
    and closes (to read the server's CPU)."""
    processes = processes or max(1, math.ceil(concurrency / 1000))
    start_at = time.monotonic() + 1.0 + 0.1 * processes  # the processes' start-up
    share = [concurrency // processes + (n < concurrency % processes) for n in range(processes)]
    children = []
    first = 0
    for count in share:
        argv = [
            sys.executable, "-m", "bench.streams", "--kind", kind, "--port", str(port),
            "--concurrency", str(count), "--seconds", str(steady_s),
            "--ramp-seconds", str(ramp_s), "--tokens", str(tokens), "--user", user,
            "--start-at", repr(start_at), "--first-client", str(first),
            "--total-clients", str(concurrency),
        ]  # fmt: skip
        env = {**os.environ, "BENCH_STREAM_TOKEN": token}
        children.append(subprocess.Popen(argv, stdout=subprocess.PIPE, env=env, cwd=REPO))
        first += count
    if at_window is not None:
        time.sleep(max(0.0, start_at + ramp_s - time.monotonic()))
        at_window("start")
        time.sleep(max(0.0, start_at + ramp_s + steady_s - time.monotonic()))
        at_window("end")
    tallies = []
    for child in children:
        out, _ = child.communicate(timeout=steady_s + ramp_s + TURN_TIMEOUT_S + 60)
        if child.returncode:
            raise RuntimeError(f"bench.streams exited with {child.returncode}")
        tallies.append(Tally.from_json(json.loads(out.decode().splitlines()[-1])))
    total = tallies[0]
    for other in tallies[1:]:
        total = total.merge(other)
    return total


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kind", choices=("chatsvc", "peer", "fake"), required=True)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--concurrency", type=int, required=True)
    parser.add_argument("--seconds", type=float, default=15.0, help="the steady window")
    parser.add_argument("--ramp-seconds", type=float, default=5.0)
    parser.add_argument("--tokens", type=int, default=100, help="deltas of the fake's answer")
    parser.add_argument("--user", default="bench-p7")
    parser.add_argument("--token", default=os.environ.get("BENCH_STREAM_TOKEN", ""))
    parser.add_argument("--processes", type=int, default=0, help="0: one per 1,000 clients")
    parser.add_argument("--start-at", type=float, default=0.0, help="time.monotonic() value")
    parser.add_argument("--first-client", type=int, default=0)
    parser.add_argument("--total-clients", type=int, default=0)
    args = parser.parse_args()
    if args.start_at:  # one of several processes
        plan = Plan(
            args.kind, args.port, args.concurrency, args.start_at, args.ramp_seconds,
            args.seconds, args.tokens, args.token, args.user, args.first_client,
            args.total_clients,
        )  # fmt: skip
        print(json.dumps(run_here(plan).as_json()))
        return
    tally = measure(
        args.kind, args.port, args.concurrency, steady_s=args.seconds, ramp_s=args.ramp_seconds,
        tokens=args.tokens, token=args.token, user=args.user, processes=args.processes or None,
    )  # fmt: skip
    print(json.dumps(summary(tally)))


def summary(tally: Tally) -> dict[str, Any]:
    """The figures P7 reports, from a tally."""
    return {
        "turns": tally.turns, "ok": tally.ok, "refused": tally.refused,
        "failures": sum(tally.failures.values()), "failure_kinds": dict(tally.failures),
        "ttfd_p50_ms": percentile(tally.ttfd, 0.5), "ttfd_p99_ms": percentile(tally.ttfd, 0.99),
        "gap_p50_ms": percentile(tally.gaps, 0.5), "gap_p99_ms": percentile(tally.gaps, 0.99),
        "deltas": tally.deltas, "window_deltas": tally.window_deltas,
        "client_us_per_delta": 1e6 * tally.window_cpu_s / max(1, tally.window_deltas),
        "client_lag_p99_ms": percentile(tally.lag, 0.99), "processes": tally.processes,
    }  # fmt: skip


if __name__ == "__main__":
    main()
