"""Processes a benchmark starts (gunicorn, the fake LLM), the load client, and measurements."""

from __future__ import annotations

import json
import os
import resource
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
LOGS = REPO / "bench" / "out"
# A provider request as large as chatsvc's (its system prompt and tools' schemas: about 2.9 kB).
PROVIDER_REQUEST = {
    "model": "bench",
    "messages": [{"role": "system", "content": "x" * 2800}, {"role": "user", "content": "hi"}],
}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_until_up(url: str, process: subprocess.Popen, deadline_s: float = 30.0) -> None:
    deadline = time.monotonic() + deadline_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"{process.args!r} exited with {process.returncode}")
        try:
            with urllib.request.urlopen(url, timeout=1):
                return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"{url} did not come up in {deadline_s}s")


@dataclass
class Service:
    """A started process (its whole process group is stopped on exit)."""

    name: str
    process: subprocess.Popen
    port: int
    log: Path

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def stop(self) -> None:
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()

    def worker_pids(self) -> list[int]:
        """gunicorn's workers: the master's children."""
        children = []
        for status in Path("/proc").glob("[0-9]*/status"):
            try:
                fields = dict(
                    line.split(":", 1) for line in status.read_text().splitlines() if ":" in line
                )
            except OSError:
                continue
            if int(fields.get("PPid", "0").strip()) == self.process.pid:
                children.append(int(status.parent.name))
        return sorted(children)

    def cpu_seconds(self) -> float:
        """CPU time (user + system) used so far by the process and its workers."""
        total = 0
        for pid in [self.process.pid, *self.worker_pids()]:
            try:
                fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            total += int(fields[11]) + int(fields[12])  # utime, stime (fields 14 and 15)
        return total / os.sysconf("SC_CLK_TCK")

    def rss_mb(self) -> dict[int, tuple[float, float]]:
        """Per worker: (current RSS, peak RSS) in MB."""
        found = {}
        for pid in self.worker_pids():
            try:
                text = Path(f"/proc/{pid}/status").read_text()
            except OSError:
                continue
            values = {
                line.split(":")[0]: int(line.split()[1]) / 1024
                for line in text.splitlines()
                if line.startswith(("VmRSS", "VmHWM"))
            }
            found[pid] = (values.get("VmRSS", 0.0), values.get("VmHWM", 0.0))
        return found


def spawn(name: str, argv: list[str], env: dict[str, str], port: int, health: str) -> Service:
    LOGS.mkdir(parents=True, exist_ok=True)
    log = LOGS / f"{name}.log"
    process = subprocess.Popen(
        argv,
        cwd=REPO,
        env={**os.environ, **env},
        stdout=log.open("w"),
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    service = Service(name, process, port, log)
    try:
        wait_until_up(f"http://127.0.0.1:{port}{health}", process)
    except Exception:
        service.stop()
        raise
    return service


def start_fake_llm(
    latency_ms: float, first_token_ms: float | None = None, words: int = 0,
    interval_ms: float = 0.0, lockstep_port: int = 0,
) -> Service:  # fmt: skip
    port = free_port()
    argv = [str(BIN / "python"), "-m", "bench.fakellm", "--port", str(port)]
    argv += ["--latency-ms", str(latency_ms), "--tokens", str(words)]
    argv += ["--interval-ms", str(interval_ms)]
    if lockstep_port:
        argv += ["--lockstep-port", str(lockstep_port)]
    if first_token_ms is not None:
        argv += ["--first-token-ms", str(first_token_ms)]
    process = subprocess.Popen(argv, cwd=REPO, start_new_session=True)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return Service("fakellm", process, port, LOGS / "fakellm.log")
        except OSError:
            time.sleep(0.05)
    raise RuntimeError("the fake LLM did not start")


@dataclass
class Settings:
    workers: int = 2
    database_url: str = ""
    extra: dict[str, str] = field(default_factory=dict)


def chatsvc_env(settings: Settings, llm: Service, tmp: Path) -> dict[str, str]:
    metrics = tmp / "metrics"
    metrics.mkdir(exist_ok=True)
    return {
        "CHATSVC_ENV": "production",
        "AUTH_MODE": "optional",
        "DATABASE_URL": settings.database_url,
        "AGENT_PROVIDER": "openai",
        "OPENAI_BASE_URL": f"{llm.url}/v1",
        "OPENAI_API_KEY": "bench",
        "OPENAI_MODEL": "bench",
        "AGENT_TIMEOUT_SECONDS": "30",
        "RATELIMIT_ENABLED": "false",
        "WEB_CONCURRENCY": str(settings.workers),
        "PROMETHEUS_MULTIPROC_DIR": str(metrics),
        "LOG_LEVEL": "INFO",
        **settings.extra,
    }


def migrate(env: dict[str, str]) -> None:
    subprocess.run(
        [str(BIN / "flask"), "--app", "chatsvc", "db", "upgrade"],
        cwd=REPO,
        env={**os.environ, **env},
        check=True,
        capture_output=True,
    )


def start_chatsvc(env: dict[str, str], name: str = "chatsvc") -> Service:
    port = free_port()
    argv = [str(BIN / "gunicorn"), "--config", "gunicorn.conf.py", "wsgi:app"]
    return spawn(name, argv, {**env, "PORT": str(port)}, port, "/health/live")


def start_floor(workers: int, llm: Service | None = None) -> Service:
    """The bare endpoint; with `llm`, the endpoint that makes one SDK call to it."""
    port = free_port()
    argv = [str(BIN / "gunicorn"), "--config", "gunicorn.conf.py", "bench.floor:app"]
    env = {"PORT": str(port), "WEB_CONCURRENCY": str(workers), "LOG_LEVEL": "WARNING"}
    if llm is not None:
        env["FLOOR_LLM_URL"] = f"{llm.url}/v1"
    return spawn("floor" if llm is None else "sdk-floor", argv, env, port, "/health/live")


def start_peer(workers: int, llm: Service, tmp: Path, jwt_secret: str) -> Service:
    """P7's peer (bench/peer/app.py): FastAPI under uvicorn with `workers` workers, its own
    SQLite file in `tmp`, streaming from `llm` through AsyncOpenAI."""
    port = free_port()
    env = {
        "PEER_DATABASE_URL": f"sqlite+aiosqlite:///{tmp / 'peer.db'}",
        "PEER_OPENAI_BASE_URL": f"{llm.url}/v1",
        "PEER_JWT_SECRET": jwt_secret,
    }
    subprocess.run(
        [str(BIN / "python"), "-m", "bench.peer.app", "--init"], cwd=REPO,
        env={**os.environ, **env}, check=True,
    )  # fmt: skip
    argv = [
        str(BIN / "uvicorn"), "bench.peer.app:app", "--host", "127.0.0.1", "--port", str(port),
        "--workers", str(workers), "--loop", "uvloop", "--http", "httptools",
        "--no-access-log", "--log-level", "warning", "--backlog", "2048",
    ]  # fmt: skip
    return spawn("peer", argv, env, port, "/health/live")


def wrk(
    url: str,
    *,
    connections: int,
    duration_s: float,
    threads: int = 2,
    env: dict[str, str] | None = None,
    timeout_s: float = 10.0,
    watch: tuple[Service, ...] = (),
    stagger_ms: float | None = None,
) -> dict:
    """Drive POST chat turns with wrk; returns the script's JSON summary plus throughput and
    the CPU milliseconds per request of wrk itself and of each `watch`ed service.

    With `stagger_ms` each connection's first request waits its turn within that span, so
    that the connections start evenly spread rather than all in the same instant."""
    threads = min(threads, connections)
    env = dict(env or {})
    if stagger_ms is not None:
        env["STAGGER_MS"] = str(stagger_ms)
        env["CONNECTIONS_PER_THREAD"] = str(-(-connections // threads))
    argv = [
        "wrk", f"-t{threads}", f"-c{connections}",
        f"-d{max(1, round(duration_s))}s", f"--timeout={max(1, round(timeout_s))}s",
        "-s", str(REPO / "bench" / "turn.lua"), url,
    ]  # fmt: skip
    before = {service.name: service.cpu_seconds() for service in watch}
    children = resource.getrusage(resource.RUSAGE_CHILDREN)  # wrk is the only child waited for
    started_at = time.time()
    done = subprocess.run(
        argv, env={**os.environ, **env}, capture_output=True, text=True, check=True
    )
    ended_at = time.time()
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    line = next(x for x in done.stdout.splitlines() if x.startswith("WRK_JSON "))
    result = json.loads(line.removeprefix("WRK_JSON "))
    result["rps"] = result["requests"] / result["duration_s"]
    result["window"] = (started_at, ended_at)
    per_request = 1000 / max(1, result["requests"])
    client_s = after.ru_utime + after.ru_stime - children.ru_utime - children.ru_stime
    result["cpu_ms"] = {"wrk": client_s * per_request}
    for service in watch:
        result["cpu_ms"][service.name] = (
            service.cpu_seconds() - before[service.name]
        ) * per_request
    return result


def steady_rps(result: dict, ramp_s: float) -> tuple[float, int]:
    """Responses per second over the whole wall-clock seconds after `ramp_s` and before the
    run's last second (cut off mid-turn); returns the rate and how many seconds it spans."""
    started_at, ended_at = result["window"]
    first, last = int(started_at + ramp_s) + 1, int(ended_at) - 1
    per_second = {int(second): count for second, count in result["completed_per_second"].items()}
    seconds = range(first, last)
    if not seconds:
        raise ValueError(f"a {ended_at - started_at:.0f} s run has no steady part after {ramp_s} s")
    return sum(per_second.get(second, 0) for second in seconds) / len(seconds), len(seconds)


def temporary_sqlite() -> tuple[str, Path]:
    tmp = Path(tempfile.mkdtemp(prefix="chatsvc-bench-"))
    return f"sqlite:///{tmp / 'bench.db'}", tmp
