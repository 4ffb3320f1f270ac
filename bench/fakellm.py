"""A fast OpenAI-compatible fake for load: asyncio, keep-alive, TCP_NODELAY, a fixed latency.

    python -m bench.fakellm --port 9100 --latency-ms 2000 [--first-token-ms 50] [--tokens N]
        [--interval-ms M] [--lockstep-port P]

It answers `POST /v1/chat/completions` with a short text completion (streamed when asked) and
never calls a tool, so a turn costs exactly one model round trip of the configured latency.
A streamed answer of `--tokens N` chunks sends its first at the first-token time and the next
ones `--interval-ms` apart (on a fixed schedule from the request's arrival, so a late timer does
not push the rest back); without an interval the chunks follow each other at once. With
`--lockstep-port P` a chunk after the first waits instead for a UDP datagram on 127.0.0.1:P
(one per chunk, sent by a client once it has read the previous one: bench/turncost.py), so
each is read alone however slow the reader is (under valgrind, say).
`GET /trace` returns (and forgets) when each streamed request arrived and when its first chunk
left, by the request's last message, on the clock of `time.monotonic()` (CLOCK_MONOTONIC,
shared by every process on the machine): a client that sent the message can tell its own
latency apart from the fake's.
The test suite's fake (tests/fakellm.py) scripts answers and faults; this one only needs to be
cheap enough that it is never the bottleneck of a benchmark.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import socket
import time
from collections import OrderedDict

WORDS = ["Sure", ",", " here", " is", " a", " short", " answer", "."]
TRACE_LIMIT = 100_000  # streamed requests remembered until /trace is read


def completion(model: str) -> bytes:
    body = {
        "id": "chatcmpl-bench",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": "".join(WORDS)},
                "finish_reason": "stop",
            }
        ],
        "usage": {"prompt_tokens": 20, "completion_tokens": 8, "total_tokens": 28},
    }
    return json.dumps(body).encode()


def chunk(model: str, delta: dict, finish: str | None = None, usage: dict | None = None) -> bytes:
    body = {
        "id": "chatcmpl-bench",
        "object": "chat.completion.chunk",
        "created": int(time.time()),
        "model": model,
        "choices": [] if usage else [{"index": 0, "delta": delta, "finish_reason": finish}],
    }
    if usage:
        body["usage"] = usage
    return b"data: " + json.dumps(body).encode() + b"\n\n"


class FakeLLM:
    def __init__(
        self, latency_ms: float, first_token_ms: float | None, words: int = 0,
        interval_ms: float = 0.0, steps: asyncio.Queue[None] | None = None,
    ) -> None:  # fmt: skip
        self.steps = steps  # lockstep: one datagram lets one more chunk go
        self.latency = latency_ms / 1000
        self.interval = interval_ms / 1000
        # A streamed answer's chunks: WORDS, or that many words (a long answer: per-delta costs).
        self.words = [WORDS[n % len(WORDS)] for n in range(words)] if words else WORDS
        self.first_token = (first_token_ms if first_token_ms is not None else latency_ms) / 1000
        # last message -> (arrived, first chunk sent), for GET /trace
        self.trace: OrderedDict[str, tuple[float, float]] = OrderedDict()

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        sock = writer.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                # Latencies count from the request's arrival, not from after its parsing.
                arrived = asyncio.get_running_loop().time()
                length = 0
                for line in head.split(b"\r\n"):
                    if line.lower().startswith(b"content-length:"):
                        length = int(line.split(b":", 1)[1])
                request = json.loads(await reader.readexactly(length)) if length else {}
                model = request.get("model", "bench")
                if head.startswith(b"GET /trace "):
                    _write_json(writer, json.dumps(self.trace).encode())
                    self.trace.clear()
                elif request.get("stream"):
                    sent = await self.stream(writer, model, arrived)
                    self.remember(request, arrived, sent)
                else:
                    await _sleep_until(arrived + self.latency)
                    _write_json(writer, completion(model))
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    def remember(self, request: dict, arrived: float, sent: float) -> None:
        messages = request.get("messages") or [{}]
        self.trace[str(messages[-1].get("content"))] = (arrived, sent)
        if len(self.trace) > TRACE_LIMIT:
            self.trace.popitem(last=False)

    async def stream(self, writer: asyncio.StreamWriter, model: str, arrived: float) -> float:
        """Send the stream; returns when its first chunk went out."""
        writer.write(
            b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n"
            b"Transfer-Encoding: chunked\r\n\r\n"
        )
        pieces = [chunk(model, {"role": "assistant", "content": self.words[0]})]
        pieces += [chunk(model, {"content": word}) for word in self.words[1:]]
        pieces.append(chunk(model, {}, "stop"))
        usage = {"prompt_tokens": 20, "completion_tokens": 8, "total_tokens": 28}
        pieces += [chunk(model, {}, usage=usage), b"data: [DONE]\n\n"]
        await _sleep_until(arrived + self.first_token)  # the pieces are ready: the first goes now
        sent = asyncio.get_running_loop().time()
        while self.steps is not None and not self.steps.empty():
            self.steps.get_nowait()  # a step left over from the last stream
        for number, piece in enumerate(pieces):
            if self.steps is not None and 0 < number < len(self.words):
                await self.steps.get()
            elif self.interval and 0 < number < len(self.words):
                await _sleep_until(sent + number * self.interval)
                if writer.is_closing():  # the client left during the pause (uvloop would raise)
                    raise ConnectionResetError
            writer.write(f"{len(piece):x}\r\n".encode() + piece + b"\r\n")
            await writer.drain()
        writer.write(b"0\r\n\r\n")
        return sent


def _write_json(writer: asyncio.StreamWriter, body: bytes) -> None:
    writer.write(
        b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
        b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body
    )


async def _sleep_until(deadline: float) -> None:
    await asyncio.sleep(max(0.0, deadline - asyncio.get_running_loop().time()))


class _Steps(asyncio.DatagramProtocol):
    def __init__(self, steps: asyncio.Queue[None]) -> None:
        self.steps = steps

    def datagram_received(self, data: bytes, addr: object) -> None:
        self.steps.put_nowait(None)


async def serve(
    port: int, latency_ms: float, first_token_ms: float | None, words: int, interval_ms: float,
    lockstep_port: int = 0,
) -> None:  # fmt: skip
    steps: asyncio.Queue[None] | None = None
    if lockstep_port:
        steps = asyncio.Queue()
        await asyncio.get_running_loop().create_datagram_endpoint(
            lambda: _Steps(steps), local_addr=("127.0.0.1", lockstep_port)
        )
    fake = FakeLLM(latency_ms, first_token_ms, words, interval_ms, steps)
    server = await asyncio.start_server(fake.handle, "127.0.0.1", port, backlog=2048)
    async with server:
        await server.serve_forever()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--latency-ms", type=float, default=0.0)
    parser.add_argument("--first-token-ms", type=float, default=None)
    parser.add_argument(
        "--tokens", "--words", dest="words", type=int, default=0,
        help="chunks (tokens) of a streamed answer",
    )  # fmt: skip
    parser.add_argument(
        "--interval-ms", type=float, default=0.0, help="between a streamed answer's chunks"
    )
    parser.add_argument(
        "--lockstep-port", type=int, default=0,
        help="a chunk after the first waits for a UDP datagram on this port",
    )  # fmt: skip
    args = parser.parse_args()
    serving = serve(args.port, args.latency_ms, args.first_token_ms, args.words, args.interval_ms,
                    args.lockstep_port)  # fmt: skip
    run = asyncio.run
    if args.interval_ms:  # paced streams by the thousand (P7, P8): on uvloop when installed
        with contextlib.suppress(ImportError):
            import uvloop

            run = uvloop.run
    run(serving)


if __name__ == "__main__":
    main()
