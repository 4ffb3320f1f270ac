"""What one chat turn costs the server, in process: CPU (and user-space instructions where the
kernel lets a process count its own) per JSON turn and per streamed turn.

    python -m bench.turncost [--turns 400] [--mode json,stream] [--words 8,108]
                             [--database URL] [--profile] [--repeat 3] [--callgrind]

The real app (production profile, the `openai` agent) runs under gevent as a gunicorn worker
does (monkey-patched, `speedups.tune_worker` applied) against bench's fake model (0 ms) on a
real socket. Each turn is P1's request (`POST /api/bench-<n>/chat`, a new conversation of a
user of its own), handed to the WSGI app as gunicorn would (a ready environ: gunicorn's own
parsing and writing are not counted, here or in the difference between two versions). The
fake runs in its own process: only chatsvc's CPU is counted.

- `json`: `Accept: application/json`, the body read to its end.
- `stream`: `Accept: text/event-stream`, every frame read; the event log is on (the database
  store, as in production) and its flusher's work is counted (the run waits for it).
- `refused`: the `stream` request to a worker that admits no turn (its admission held full:
  `MAX_STREAMS_PER_WORKER` 1 with one turn counted in flight): what one 503 `overloaded`
  costs, as P7's clients get them beyond capacity (issue 22). `--idempotent` sends each
  request with an `Idempotency-Key` of its own (a key's look-up: a retry that may be a
  replay); `--env NAME=VALUE` overrides a setting (`RATELIMIT_ENABLED=true`: the limiter's
  counting, in memory).
  With `--words A,B` the fake answers in A and then B chunks: the difference gives the CPU per
  delta, the A run the per-turn cost.

CPU is `time.process_time()` of the whole process (every thread) over the measured turns,
after warm-up turns; each figure is the median of `--repeat` runs. Instructions come from
`perf_event_open` (user space only, this process and the threads it starts) where the
kernel allows it (not in this VM). `--callgrind` runs the measurement again under valgrind,
instrumented only while the measured turns run (callgrind's client requests, from a tiny C
library built with `cc` and valgrind's header): instructions per turn that do not move with
the machine's load the way CPU time does (about a minute; one mode, one chunk count; same
code, two runs: within 0.5 %). `--profile` prints cProfile's function calls per turn and the
costliest functions on CPU time (a profile slows the turn: read its proportions).
"""

from __future__ import annotations

from gevent import monkey

monkey.patch_all()

import argparse  # noqa: E402  (after the monkey-patch, as in gunicorn.conf.py)
import contextlib  # noqa: E402
import ctypes  # noqa: E402
import io  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import statistics  # noqa: E402
import struct  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from collections.abc import Iterator  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

from bench import harness  # noqa: E402

BODY = json.dumps({"message": "hello there"}).encode()


class Instructions:
    """User-space instructions retired by this process (threads it starts included), from the
    kernel's counter; `available` False where perf events are not allowed."""

    PERF_TYPE_HARDWARE, PERF_COUNT_HW_INSTRUCTIONS = 0, 1
    SYS_PERF_EVENT_OPEN = 298  # x86-64

    def __init__(self) -> None:
        self.fd = -1
        try:
            libc = ctypes.CDLL(None, use_errno=True)
            # struct perf_event_attr (PERF_ATTR_SIZE_VER5 = 112 bytes): type, size, config, ...
            attr = bytearray(112)
            struct.pack_into("IIQ", attr, 0, self.PERF_TYPE_HARDWARE, 112,
                             self.PERF_COUNT_HW_INSTRUCTIONS)  # fmt: skip
            # flags at offset 40: disabled=0, inherit=1 (bit 1), exclude_kernel (5), exclude_hv (6)
            struct.pack_into("Q", attr, 40, (1 << 1) | (1 << 5) | (1 << 6))
            buffer = (ctypes.c_char * len(attr)).from_buffer(attr)
            fd = libc.syscall(self.SYS_PERF_EVENT_OPEN, buffer, 0, -1, -1, 0)
            self.fd = fd if fd >= 0 else -1
        except (OSError, AttributeError):
            self.fd = -1

    @property
    def available(self) -> bool:
        return self.fd >= 0

    def read(self) -> int:
        if not self.available:
            return 0
        return struct.unpack("Q", os.read(self.fd, 8))[0]


MARKS_C = r"""
#include <valgrind/callgrind.h>
void marks_start(void) { CALLGRIND_START_INSTRUMENTATION; CALLGRIND_TOGGLE_COLLECT; }
void marks_stop(void) { CALLGRIND_TOGGLE_COLLECT; CALLGRIND_STOP_INSTRUMENTATION; }
"""


class Marks:
    """Callgrind's client requests around the measured turns (`--under-callgrind`): a tiny C
    library built once with the system's compiler and valgrind's header."""

    def __init__(self, enabled: bool) -> None:
        self.lib: Any = None
        if not enabled:
            return
        out = harness.LOGS
        out.mkdir(parents=True, exist_ok=True)
        source, library = out / "marks.c", out / "marks.so"
        if not library.exists():
            source.write_text(MARKS_C)
            import subprocess

            subprocess.run(["cc", "-O1", "-shared", "-fPIC", "-o", str(library), str(source)],
                           check=True)  # fmt: skip
        self.lib = ctypes.CDLL(str(library))

    def start(self) -> None:
        if self.lib is not None:
            self.lib.marks_start()

    def stop(self) -> None:
        if self.lib is not None:
            self.lib.marks_stop()


def environ(path: str, accept: str, key: str | None = None) -> dict[str, Any]:
    """The WSGI environ gunicorn hands a worker for P1's request."""
    more = {"HTTP_IDEMPOTENCY_KEY": key} if key else {}
    return more | {
        "REQUEST_METHOD": "POST", "SCRIPT_NAME": "", "PATH_INFO": path, "QUERY_STRING": "",
        "RAW_URI": path, "SERVER_PROTOCOL": "HTTP/1.1", "SERVER_NAME": "127.0.0.1",
        "SERVER_PORT": "8000", "REMOTE_ADDR": "127.0.0.1", "REMOTE_PORT": "40000",
        "CONTENT_TYPE": "application/json", "CONTENT_LENGTH": str(len(BODY)),
        "HTTP_HOST": "127.0.0.1:8000", "HTTP_ACCEPT": accept,
        "wsgi.input": io.BytesIO(BODY), "wsgi.errors": sys.stderr, "wsgi.version": (1, 0),
        "wsgi.url_scheme": "http", "wsgi.multithread": True, "wsgi.multiprocess": True,
        "wsgi.run_once": False,
    }  # fmt: skip


class Driver:
    def __init__(self, app: Any, idempotent: bool = False) -> None:
        self.app = app
        self.idempotent = idempotent
        self.count = 0
        self.statuses: dict[str, int] = {}

    def turn(self, accept: str) -> int:
        """One turn; returns the bytes of its response body."""
        self.count += 1
        status_seen: list[str] = []

        def start_response(status: str, headers: Any, exc_info: Any = None) -> Any:
            status_seen.append(status)
            return lambda data: None

        key = f"key-{self.count}" if self.idempotent else None
        path = f"/api/bench-{os.getpid()}-{self.count}/chat"
        body = self.app(environ(path, accept, key), start_response)
        size = 0
        try:
            for piece in body:
                size += len(piece)
        finally:
            close = getattr(body, "close", None)
            if close is not None:
                close()
        code = status_seen[0].split()[0] if status_seen else "?"
        self.statuses[code] = self.statuses.get(code, 0) + 1
        return size


def measure(
    driver: Driver, accept: str, turns: int, counter: Instructions, settle: Any, marks: Marks
) -> dict:
    settle()
    marks.start()
    cpu, instructions = time.process_time(), counter.read()
    wall = time.perf_counter()
    for _ in range(turns):
        driver.turn(accept)
    settle()  # background work the turns left (the event log's flusher) is theirs
    marks.stop()
    return {
        "cpu_us": (time.process_time() - cpu) / turns * 1e6,
        "instructions": (counter.read() - instructions) / turns,
        "wall_us": (time.perf_counter() - wall) / turns * 1e6,
    }


@contextlib.contextmanager
def _admission_full(engine: Any, full: bool) -> Iterator[None]:
    """While `full`, a worker that admits no turn: its limit 1, one turn counted in flight."""
    admission = getattr(engine, "admission", None)
    if not full or admission is None:
        yield
        return
    limit = admission.limit
    admission.limit, admission.in_flight = 1, admission.in_flight + 1
    try:
        yield
    finally:
        admission.limit, admission.in_flight = limit, admission.in_flight - 1


def build_app(
    llm_url: str, database_url: str, tmp: Path, overrides: dict[str, str] | None = None
) -> Any:
    env = harness.chatsvc_env(harness.Settings(1, database_url), _Url(llm_url), tmp)
    env.update(overrides or {})
    harness.migrate(env)
    os.environ.update(env)
    devnull = open(os.devnull, "w")  # noqa: SIM115  (lives as long as the process)
    from chatsvc import create_app

    app = create_app()
    for name in ("chatsvc", "flask-limiter"):  # the JSON access lines, formatted, to nowhere
        import logging

        for handler in logging.getLogger(name).handlers:
            if isinstance(handler, logging.StreamHandler):
                handler.setStream(devnull)
    try:
        from chatsvc import speedups
    except ImportError:  # a version before speedups.py (comparisons): its post_worker_init
        import gc

        gc.freeze()
        gc.set_threshold(10_000, 10, 10)
    else:
        speedups.tune_worker()
    return app


class _Url:
    def __init__(self, url: str) -> None:
        self.url = url


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--turns", type=int, default=400)
    parser.add_argument("--warmup", type=int, default=100)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--mode", default="json,stream")
    parser.add_argument("--words", default="8", help="chunks of a streamed answer (A[,B])")
    parser.add_argument("--database", default="", help="DATABASE_URL (default: a new SQLite)")
    parser.add_argument("--profile", action="store_true")
    parser.add_argument(
        "--callgrind", action="store_true",
        help="count instructions under valgrind (one mode and chunk count, one run)",
    )  # fmt: skip
    parser.add_argument(
        "--idempotent", action="store_true", help="each request with an Idempotency-Key"
    )
    parser.add_argument(
        "--env", action="append", default=[], metavar="NAME=VALUE", help="a setting's value"
    )
    parser.add_argument("--under-callgrind", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.callgrind:
        _callgrind(args)
        return

    database_url, tmp = harness.temporary_sqlite()
    database_url = args.database or database_url
    counts = [int(w) for w in args.words.split(",") if w.strip()]
    llms = {words: harness.start_fake_llm(0, words=words) for words in counts}
    try:
        first = llms[counts[0]]
        overrides = dict(item.split("=", 1) for item in args.env)
        app = build_app(f"{first.url}", database_url, tmp, overrides)
        engine = app.extensions.get("chatsvc.turns")

        def settle() -> None:
            import gevent

            gevent.sleep(0.05)
            if getattr(engine, "events", None) is not None:
                engine.events.flush()

        counter = Instructions()
        marks = Marks(args.under_callgrind)
        driver = Driver(app, args.idempotent)
        results: dict[str, dict] = {}
        for mode in [m.strip() for m in args.mode.split(",") if m.strip()]:
            accept = "application/json" if mode == "json" else "text/event-stream"
            with _admission_full(engine, mode == "refused"):
                for words in counts if mode == "stream" else counts[:1]:
                    if llms[words] is not first:
                        _point_at(engine.agent, llms[words].url)
                    for _ in range(args.warmup):
                        driver.turn(accept)
                    if args.profile:
                        _profile(driver, accept, args.turns, f"{mode}, {words} chunks")
                        continue
                    runs = [measure(driver, accept, args.turns, counter, settle, marks)
                            for _ in range(args.repeat)]  # fmt: skip
                    label = mode if mode != "stream" else f"stream, {words} chunks"
                    results[label] = {
                        key: statistics.median(run[key] for run in runs) for key in runs[0]
                    } | {"cpu_us_runs": [round(run["cpu_us"], 1) for run in runs]}
        if len(counts) == 2 and f"stream, {counts[1]} chunks" in results:
            low, high = (
                results[f"stream, {counts[0]} chunks"],
                results[f"stream, {counts[1]} chunks"],
            )
            span = counts[1] - counts[0]
            results["per delta"] = {
                "cpu_us": (high["cpu_us"] - low["cpu_us"]) / span,
                "instructions": (high["instructions"] - low["instructions"]) / span,
            }
        _print(results, counter.available, driver.statuses, database_url)
    finally:
        for service in llms.values():
            service.stop()


def _callgrind(args: argparse.Namespace) -> None:
    """Run the measurement again under callgrind, instrumented only while the measured turns
    run; print the instructions per turn."""
    import subprocess
    import tempfile

    out = Path(tempfile.mkdtemp(prefix="turncost-")) / "callgrind.out"
    argv = [
        "valgrind", "--tool=callgrind", "--instr-atstart=no", "--collect-atstart=no",
        f"--callgrind-out-file={out}", sys.executable, "-m", "bench.turncost",
        "--under-callgrind", "--repeat", "1", "--turns", str(args.turns),
        "--warmup", str(args.warmup), "--mode", args.mode, "--words", args.words,
    ]  # fmt: skip
    if args.idempotent:
        argv.append("--idempotent")
    argv += [f"--env={item}" for item in args.env]
    if args.database:
        argv += ["--database", args.database]
    env = {**os.environ, "PYTHONHASHSEED": "0"}
    done = subprocess.run(argv, env=env, capture_output=True, text=True)
    if done.returncode != 0:
        print(done.stdout, done.stderr, sep="\n")
        raise SystemExit(done.returncode)
    totals = [
        line for line in out.read_text().splitlines() if line.startswith(("totals:", "summary:"))
    ]
    instructions = int(totals[-1].split()[1])
    modes = len([m for m in args.mode.split(",") if m.strip()])
    print(f"{args.mode}: {instructions / (args.turns * modes) / 1e6:.3f} M instructions per turn "
          f"(callgrind, {args.turns} turns; {out})")  # fmt: skip


def _point_at(agent: Any, url: str) -> None:
    """The agent's clients, at another fake (a streamed answer of another length)."""
    pools = agent._clients
    for client in pools._clients:
        client.base_url = f"{url}/v1"
    if hasattr(pools, "_senders"):  # each sender keeps its client's URL
        pools._senders = [type(sender)(sender.client) for sender in pools._senders]


def _profile(driver: Driver, accept: str, turns: int, label: str) -> None:
    import cProfile
    import pstats

    profile = cProfile.Profile(time.process_time)  # CPU: the waits on the model do not count
    profile.enable()
    for _ in range(turns):
        driver.turn(accept)
    profile.disable()
    stats = pstats.Stats(profile)
    if os.environ.get("TURNCOST_PSTATS"):
        stats.dump_stats(os.environ["TURNCOST_PSTATS"])
    calls = sum(entry[1] for entry in stats.stats.values())  # type: ignore[attr-defined]
    print(f"== {label}: {calls / turns:,.0f} function calls per turn (cProfile)")
    stats.sort_stats("tottime").print_stats(25)
    stats.sort_stats("cumulative").print_stats(40)


def _print(results: dict, counted: bool, statuses: dict, database_url: str) -> None:
    where = database_url.split(":", 1)[0]
    print(f"chatsvc per turn, in process ({where}; statuses {statuses}; load {os.getloadavg()})")
    for label, figures in results.items():
        line = f"  {label:<22} CPU {figures['cpu_us']:8.1f} µs"
        if counted:
            line += f"   instructions {figures['instructions'] / 1e6:7.3f} M"
        if "wall_us" in figures:
            line += f"   wall {figures['wall_us']:8.1f} µs"
        if "cpu_us_runs" in figures:
            line += f"   (CPU runs {figures['cpu_us_runs']})"
        print(line)
    if not counted:
        print("  (instructions: perf events are not allowed here; use callgrind)")


if __name__ == "__main__":
    main()
