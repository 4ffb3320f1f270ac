"""What admission (issue 22) buys: C streamed turns offered at once to ONE gevent worker,
each answered by a paced fake model (WORDS chunks, one every INTERVAL ms), with admission off
and on. Prints, per run: streams admitted / refused, the admitted streams' gap p50/p99 between
deltas, time to first delta (TTFD) p99, a 5 s answer's duration p99, and the worker's event-loop
lag (chatsvc_event_loop_lag_seconds, sampled while it streams).

    python -m bench.overload --streams 100 200 300 400 --port 23100 [--limit 0 --lag-ms 0]

The load generator shares the machine's cores, as in the issue's figures.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench import harness

WORDS = 100
INTERVAL = 0.05


# The paced fake model -----------------------------------------------------------------------


def _chunk(content: str | None, finish: str | None = None) -> bytes:
    delta = {} if content is None else {"content": content}
    body = {"id": "c", "object": "chat.completion.chunk", "created": 0, "model": "bench",
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}  # fmt: skip
    piece = b"data: " + json.dumps(body).encode() + b"\n\n"
    return f"{len(piece):x}\r\n".encode() + piece + b"\r\n"


async def _serve_one(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    writer.get_extra_info("socket").setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    try:
        while True:
            head = await reader.readuntil(b"\r\n\r\n")
            length = next(
                (int(line.split(b":")[1]) for line in head.split(b"\r\n")
                 if line.lower().startswith(b"content-length:")), 0,
            )  # fmt: skip
            await reader.readexactly(length)
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n"
                         b"Transfer-Encoding: chunked\r\n\r\n")  # fmt: skip
            start = asyncio.get_running_loop().time()
            for n in range(WORDS):
                delay = start + n * INTERVAL - asyncio.get_running_loop().time()
                if delay > 0:
                    await asyncio.sleep(delay)
                writer.write(_chunk(f"w{n} "))
                await writer.drain()
            writer.write(_chunk(None, "stop") + b"e\r\ndata: [DONE]\n\n\r\n0\r\n\r\n")
            await writer.drain()
    except (asyncio.IncompleteReadError, ConnectionError):
        pass
    finally:
        writer.close()


def fake_main(port: int) -> None:
    async def serve() -> None:
        server = await asyncio.start_server(_serve_one, "127.0.0.1", port, backlog=4096)
        async with server:
            await server.serve_forever()

    asyncio.run(serve())


# The load -----------------------------------------------------------------------------------


async def one_stream(port: int, number: int, out: list[dict]) -> None:
    body = json.dumps({"message": f"overload {number}"}).encode()
    started = time.monotonic()
    result: dict = {"status": 0, "deltas": []}
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(
            f"POST /api/bench-{number}/chat HTTP/1.1\r\nHost: x\r\nAccept: text/event-stream\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n"
            "Connection: close\r\n\r\n".encode()
            + body
        )
        status = await asyncio.wait_for(reader.readline(), 60)
        result["status"] = int(status.split()[1])
        result["first_byte"] = time.monotonic() - started
        while line := await asyncio.wait_for(reader.readline(), 60):
            if line.startswith(b"event: delta"):
                result["deltas"].append(time.monotonic() - started)
            elif line.startswith(b"event: done") or line.startswith(b"event: error"):
                result["end"] = line.split(b": ")[1].strip().decode()
                break
        writer.close()
    except (TimeoutError, OSError) as error:
        result["error"] = type(error).__name__
    out.append(result)


async def sample_lag(port: int, samples: list[float], stop: asyncio.Event) -> None:
    while not stop.is_set():
        try:
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            text = (await reader.read()).decode()
            writer.close()
            for line in text.splitlines():
                if line.startswith("chatsvc_event_loop_lag_seconds"):
                    samples.append(float(line.split()[-1]) * 1000)
        except OSError:
            pass
        await asyncio.sleep(0.25)


async def offer(port: int, count: int, ramp: float) -> tuple[list[dict], list[float]]:
    results: list[dict] = []
    lags: list[float] = []
    stop = asyncio.Event()
    sampler = asyncio.create_task(sample_lag(port, lags, stop))
    tasks = []
    for number in range(count):
        tasks.append(asyncio.create_task(one_stream(port, number, results)))
        await asyncio.sleep(ramp / count)
    await asyncio.gather(*tasks)
    stop.set()
    await sampler
    return results, lags


def pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def report(count: int, label: str, results: list[dict], lags: list[float]) -> str:
    admitted = [r for r in results if r["status"] == 200]
    refused = [r for r in results if r["status"] == 503]
    gaps = [b - a for r in admitted for a, b in zip(r["deltas"], r["deltas"][1:], strict=False)]
    ttfd = [r["deltas"][0] for r in admitted if r["deltas"]]
    took = [r["deltas"][-1] for r in admitted if r["deltas"]]
    failed = len(results) - len(admitted) - len(refused)
    refusal_ms = [r["first_byte"] * 1000 for r in refused]
    return (
        f"| {count} | {label} | {len(admitted)} | {len(refused)} | {failed} | "
        f"{pct(gaps, 0.5) * 1000:.0f} / {pct(gaps, 0.99) * 1000:.0f} | "
        f"{pct(ttfd, 0.99) * 1000:.0f} | {pct(took, 0.99):.1f} | "
        f"{pct(refusal_ms, 0.99):.0f} | "
        f"{statistics.mean(lags) if lags else 0:.1f} / {max(lags, default=0):.1f} |"
    )


def start_chatsvc(port: int, llm_port: int, tmp: Path, **extra: str) -> subprocess.Popen:
    env = {
        **os.environ, "CHATSVC_ENV": "production", "AUTH_MODE": "optional",
        "DATABASE_URL": f"sqlite:///{tmp / 'bench.db'}", "AGENT_PROVIDER": "openai",
        "OPENAI_BASE_URL": f"http://127.0.0.1:{llm_port}/v1", "OPENAI_API_KEY": "bench",
        "OPENAI_MODEL": "bench", "AGENT_TIMEOUT_SECONDS": "60", "RATELIMIT_ENABLED": "false",
        "WEB_CONCURRENCY": "1", "PORT": str(port), "LOG_LEVEL": "WARNING",
        "PROMETHEUS_MULTIPROC_DIR": tempfile.mkdtemp(dir=tmp), "TURN_EVENTS_STORE": "memory",
        **extra,
    }  # fmt: skip
    subprocess.run([str(harness.BIN / "flask"), "--app", "chatsvc", "db", "upgrade"],
                   cwd=harness.REPO, env=env, check=True, capture_output=True)  # fmt: skip
    process = subprocess.Popen(
        [str(harness.BIN / "gunicorn"), "--config", "gunicorn.conf.py", "wsgi:app"],
        cwd=harness.REPO, env=env, stderr=subprocess.DEVNULL, start_new_session=True,
    )  # fmt: skip
    harness.wait_until_up(f"http://127.0.0.1:{port}/health/live", process)
    return process


def stop(process: subprocess.Popen) -> None:
    process.terminate()
    try:
        process.wait(timeout=15)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--streams", type=int, nargs="+", default=[100, 200, 300, 400])
    parser.add_argument("--port", type=int, default=23100, help="the fake's; chatsvc's is +1")
    parser.add_argument("--limit", default="500", help="MAX_STREAMS_PER_WORKER when on")
    parser.add_argument("--lag-ms", default="40", help="OVERLOAD_LAG_MS when on")
    parser.add_argument("--ramp", type=float, default=1.0, help="seconds to offer them over")
    parser.add_argument("--only", choices=["off", "on"], default=None)
    parser.add_argument("--fake", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.fake:
        fake_main(args.port)
        return
    fake = subprocess.Popen([sys.executable, "-m", "bench.overload", "--fake", "--port",
                             str(args.port)], cwd=harness.REPO, start_new_session=True)  # fmt: skip
    print("| offered | admission | admitted | refused | failed | gap p50 / p99 ms | "
          "TTFD p99 ms | answer p99 s | refusal p99 ms | lag mean / max ms |")  # fmt: skip
    print("|---|---|---|---|---|---|---|---|---|---|")
    settings = {
        "off": {"MAX_STREAMS_PER_WORKER": "0", "OVERLOAD_LAG_MS": "0"},
        "on": {"MAX_STREAMS_PER_WORKER": args.limit, "OVERLOAD_LAG_MS": args.lag_ms},
    }
    try:
        with tempfile.TemporaryDirectory() as tmp:
            for count in args.streams:
                for label, extra in settings.items():
                    if args.only and label != args.only:
                        continue
                    # The watch's gauge is read in both runs: on, with a threshold no lag reaches.
                    if label == "off":
                        extra = {**extra, "OVERLOAD_LAG_MS": "100000"}
                    server = start_chatsvc(args.port + 1, args.port, Path(tmp), **extra)
                    try:
                        results, lags = asyncio.run(offer(args.port + 1, count, args.ramp))
                    finally:
                        stop(server)
                    name = label if label == "off" else f"{args.limit} / {args.lag_ms} ms"
                    print(report(count, name, results, lags), flush=True)
    finally:
        stop(fake)


if __name__ == "__main__":
    main()
