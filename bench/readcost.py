"""What reading one chunk of the provider's stream costs, through httpx against the ceiling of
reading the connection's raw bytes (issue 22): CPU time in process, under gevent.

    python -m bench.readcost [--chunks 2000] [--turns 20] [--rounds 3]

The fake model (bench/fakellm.py, its own process) streams `--chunks` chunks at once after a
20 ms first token; each turn sends the agent's request through `_ChatCompletions` (the SDK
client's own httpx client and pool) and reads the answer two ways, alternately:

- `httpx`: what the agent does (`response.iter_bytes()`: httpx, httpcore, h11's chunked
  reader, one event per HTTP chunk), then `_event_data` and `json.loads` of each chunk;
- `iter_raw`: the same through `response.iter_raw()` (httpx without its content decoder and
  re-chunker: right only for a body sent without Content-Encoding);
- `raw`: the same response's network stream read directly (`extensions["network_stream"]`,
  64 KiB reads), its chunked framing cut by hand, then the same `_event_data` and
  `json.loads`. Not a way to read it in production: h11 does not see the body, so the
  connection cannot be reused (it is closed), and there would be a hand-written HTTP/1.1
  body parser to keep. It measures what h11 and httpx cost per chunk, at most.
"""

from __future__ import annotations

from gevent import monkey

monkey.patch_all()

import argparse  # noqa: E402
import json  # noqa: E402
import statistics  # noqa: E402
import time  # noqa: E402
from collections.abc import Iterator  # noqa: E402

import openai  # noqa: E402

from bench import harness  # noqa: E402
from chatsvc.agent.openai import _ChatCompletions, _event_data  # noqa: E402

REQUEST = {"model": "bench", "messages": [{"role": "user", "content": "hello"}], "stream": True}


def chunked_body(stream: object) -> Iterator[bytes]:
    """The body of a chunked HTTP/1.1 response, read from its network stream."""
    buffer = b""
    while True:
        while b"\r\n" not in buffer:
            buffer += stream.read(65536)  # type: ignore[attr-defined]
        line, buffer = buffer.split(b"\r\n", 1)
        size = int(line.split(b";", 1)[0], 16)
        if size == 0:
            return
        while len(buffer) < size + 2:
            more = stream.read(65536)  # type: ignore[attr-defined]
            if not more:
                return
            buffer += more
        yield buffer[:size]
        buffer = buffer[size + 2 :]


def read(sender: _ChatCompletions, way: str) -> int:
    response = sender.post(REQUEST, 30.0, stream=True)
    chunks = 0
    try:
        if way == "raw":
            source = chunked_body(response.extensions["network_stream"])
        elif way == "iter_raw":
            source = response.iter_raw()
        else:
            source = response.iter_bytes()
        for data in _event_data(source):
            if data.startswith(b"[DONE]"):
                break
            json.loads(data.decode("utf-8", "replace"))
            chunks += 1
    finally:
        response.close()
    return chunks


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--chunks", type=int, default=2000)
    parser.add_argument("--turns", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    llm = harness.start_fake_llm(0, first_token_ms=20, words=args.chunks)
    try:
        client = openai.OpenAI(base_url=f"{llm.url}/v1", api_key="bench", max_retries=0)
        sender = _ChatCompletions(client)
        figures: dict[str, list[float]] = {"httpx": [], "iter_raw": [], "raw": []}
        for way in figures:  # warm-up
            read(sender, way)
        for _ in range(args.rounds):
            for way in figures:
                cpu, chunks = time.process_time(), 0
                for _ in range(args.turns):
                    chunks += read(sender, way)
                figures[way].append((time.process_time() - cpu) / chunks * 1e6)
        for way, runs in figures.items():
            print(f"{way:>8}: {statistics.median(runs):.2f} µs CPU a chunk "
                  f"(runs {[round(r, 2) for r in runs]})")  # fmt: skip
    finally:
        llm.stop()


if __name__ == "__main__":
    main()
