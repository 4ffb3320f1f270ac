"""Ingest rate (issue 21: ≥ 3,000 passages/s on both backends, CLI and HTTP), on the knowledge
benchmark's real text (bench/corpus.py), into a fresh database of each backend:

- `cli`: `flask --app chatsvc kb ingest DIR` over the documents written out as files (many
  documents per transaction); its process start (imports, app: `kb list`'s time) is left out
  of its wall-clock rate, not of its CPU.
- `http inline`: `POST /api/documents` of every document up to INGEST_INLINE_BYTES (a
  transaction each), by `--clients` concurrent clients with keep-alive, to gunicorn
  (`--workers`, gevent).
- `http background`: one large document (the corpus's documents joined, `--big-mib` MiB):
  from its POST (202) until it reads `ready`.

    python -m bench.ingest_rate [--backends sqlite,postgresql] [--passages 20000]

Passages are counted as the service stores them (each document's `chunk_count`). Each line
also gives the CPU the ingest took (the CLI's process or gunicorn's, plus on PostgreSQL the
server processes of its connections, sampled every 50 ms) and the rate that CPU allows: on a
shared machine the wall-clock rate says as much about the others' load as about chatsvc. Not a
test: read several runs."""

from __future__ import annotations

import argparse
import http.client
import json
import os
import queue
import resource
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from urllib.parse import urlsplit

from sqlalchemy import create_engine, text

from . import corpus, harness
from .knowledge import POSTGRES, prefix

DATABASE = os.environ.get("BENCH_INGEST_DATABASE", "test_ingest_rate_bench")
INLINE_BYTES = 64 * 1024  # the default INGEST_INLINE_BYTES


def fresh_url(backend: str, tmp: Path, name: str) -> str:
    if backend == "sqlite":
        return f"sqlite:///{tmp / (name + '.db')}"
    admin = create_engine(f"{POSTGRES}/postgres", isolation_level="AUTOCOMMIT")
    with admin.connect() as connection:
        connection.execute(text(f'DROP DATABASE IF EXISTS "{DATABASE}_{name}"'))
        connection.execute(text(f'CREATE DATABASE "{DATABASE}_{name}"'))
    admin.dispose()
    return f"{POSTGRES}/{DATABASE}_{name}"


def _cpu(pid: int) -> float | None:
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class ServerCPU:
    """The CPU used by the PostgreSQL server processes of one database's connections, sampled
    until stopped (a connection's process ends with it, so each is read while it lives)."""

    def __init__(self, url: str) -> None:
        self.url, self.seen = url, {}
        self.done = threading.Event()
        self.thread = threading.Thread(target=self.sample, daemon=True)

    def __enter__(self) -> ServerCPU:
        if self.url.startswith("postgresql"):
            self.thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self.done.set()
        if self.thread.is_alive():
            self.thread.join()

    def sample(self) -> None:
        engine = create_engine(self.url, pool_size=1)
        query = text(
            "SELECT pid FROM pg_stat_activity WHERE datname = current_database()"
            " AND pid <> pg_backend_pid()"
        )
        with engine.connect() as connection:
            while True:
                for pid in connection.scalars(query):
                    used = _cpu(pid)
                    if used is not None:
                        self.seen.setdefault(pid, [used, used])[1] = used
                connection.rollback()
                if self.done.wait(0.05):
                    break
        engine.dispose()

    @property
    def seconds(self) -> float:
        # A process first seen during the run may have used a little before: counted from 0
        # when it started after the sampler (the sampler's first look is at the start).
        return sum(last - first for first, last in self.seen.values())


def cpu_line(passages: int, cpu: float, server: float) -> str:
    total = cpu + server
    return (
        f"; CPU {cpu:.2f} s + server {server:.2f} s: {passages / total:,.0f} passages/s of CPU"
        if total
        else ""
    )


def stored_passages(url: str) -> int:
    engine = create_engine(url)
    with engine.connect() as connection:
        count = connection.scalar(text("SELECT count(*) FROM chunks")) or 0
    engine.dispose()
    return count


def environment(url: str, tmp: Path, workers: int) -> dict[str, str]:
    metrics = tmp / f"metrics-{abs(hash(url))}"
    metrics.mkdir(exist_ok=True)
    return {
        "CHATSVC_ENV": "production",
        "AUTH_MODE": "optional",
        "DATABASE_URL": url,
        "AGENT_PROVIDER": "local",
        "RATELIMIT_ENABLED": "false",
        "WEB_CONCURRENCY": str(workers),
        "PROMETHEUS_MULTIPROC_DIR": str(metrics),
        "LOG_LEVEL": "WARNING",
        "MAX_DOCUMENT_BYTES": str(4 * 1024 * 1024),
    }


def cli(backend: str, documents: list[dict], tmp: Path) -> str:
    url = fresh_url(backend, tmp, "cli")
    env = {**os.environ, **environment(url, tmp, 1)}
    harness.migrate(env)
    folder = tmp / "files"
    folder.mkdir(exist_ok=True)
    for n, doc in enumerate(documents):  # the CLI titles a file by its first "# " line
        (folder / f"{n:05d}.md").write_text(f"# {doc['title']}\n\n{doc['text']}")
    flask = [sys.executable, "-m", "flask", "--app", "chatsvc", "kb"]
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    subprocess.run([*flask, "list"], env=env, check=True, capture_output=True)
    startup = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    startup_cpu = after.ru_utime + after.ru_stime - children.ru_utime - children.ru_stime
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    start_cpu = children.ru_utime + children.ru_stime
    started = time.perf_counter()
    with ServerCPU(url) as server:
        subprocess.run([*flask, "ingest", str(folder)], env=env, check=True, capture_output=True)
    elapsed = time.perf_counter() - started - startup
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = children.ru_utime + children.ru_stime - start_cpu  # its start included
    passages = stored_passages(url)
    return (
        f"cli: {passages} passages in {elapsed:.2f} s (+{startup:.2f} s start, CPU"
        f" {startup_cpu:.2f} s): {passages / elapsed:,.0f} passages/s"
        + cpu_line(passages, cpu, server.seconds)
    )


def acceptable(doc: dict) -> bool:
    """Whether the API takes the text: a few man pages hold control characters (422)."""
    return not any(ord(c) < 32 and c not in "\t\r\n" for c in doc["text"])


def post(connection: http.client.HTTPConnection, path: str, body: dict | None = None) -> dict:
    data = None if body is None else json.dumps(body)
    method = "GET" if body is None else "POST"
    connection.request(method, path, data, {"Content-Type": "application/json"})
    response = connection.getresponse()
    payload = json.loads(response.read())
    assert response.status in (200, 201, 202), (response.status, payload)
    return payload


def http_inline(backend: str, documents: list[dict], tmp: Path, clients: int, workers: int) -> str:
    url = fresh_url(backend, tmp, "inline")
    env = environment(url, tmp, workers)
    harness.migrate(env)
    service = harness.start_chatsvc(env, name="ingest-rate")
    small = [d for d in documents if len(d["text"].encode()) <= INLINE_BYTES and acceptable(d)]
    work: queue.Queue[dict] = queue.Queue()
    for doc in small:
        work.put(doc)
    counted: list[int] = []
    address = urlsplit(service.url)

    def client() -> None:
        connection = http.client.HTTPConnection(address.hostname, address.port, timeout=120)
        while True:
            try:
                doc = work.get_nowait()
            except queue.Empty:
                break
            stored = post(
                connection, "/api/documents", {"title": doc["title"], "text": doc["text"]}
            )
            counted.append(stored["chunk_count"])
        connection.close()

    try:
        threads = [threading.Thread(target=client) for _ in range(clients)]
        cpu = service.cpu_seconds()
        started = time.perf_counter()
        with ServerCPU(url) as server:
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join()
        elapsed = time.perf_counter() - started
        cpu = service.cpu_seconds() - cpu
    finally:
        service.stop()
    passages = sum(counted)
    return (
        f"http inline ({clients} clients, {workers} workers): {len(small)} documents,"
        f" {passages} passages in {elapsed:.2f} s: {passages / elapsed:,.0f} passages/s"
        + cpu_line(passages, cpu, server.seconds)
    )


def http_background(backend: str, documents: list[dict], tmp: Path, mib: float) -> str:
    url = fresh_url(backend, tmp, "background")
    env = environment(url, tmp, 1)
    harness.migrate(env)
    parts, size = [], 0
    for doc in filter(acceptable, documents):
        if size >= mib * 1024 * 1024:
            break
        parts.append(f"## {doc['title']}\n\n{doc['text']}")
        size += len(parts[-1].encode())
    body = "\n\n".join(parts)[: int(mib * 1024 * 1024)]
    service = harness.start_chatsvc(env, name="ingest-rate")
    address = urlsplit(service.url)
    try:
        connection = http.client.HTTPConnection(address.hostname, address.port, timeout=120)
        cpu = service.cpu_seconds()
        started = time.perf_counter()
        with ServerCPU(url) as server:
            document = post(connection, "/api/documents", {"title": "Big", "text": body})
            while document["status"] == "indexing":
                time.sleep(0.01)
                document = post(connection, f"/api/documents/{document['id']}")
        elapsed = time.perf_counter() - started
        cpu = service.cpu_seconds() - cpu
        connection.close()
    finally:
        service.stop()
    passages = document["chunk_count"]
    return (
        f"http background: a {len(body.encode()) / 1024 / 1024:.1f} MiB document,"
        f" {passages} passages ready in {elapsed:.2f} s: {passages / elapsed:,.0f} passages/s"
        + cpu_line(passages, cpu, server.seconds)
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backends", default="sqlite,postgresql")
    parser.add_argument("--passages", type=int, default=20_000)
    parser.add_argument(
        "--offset",
        type=int,
        default=0,
        help="start after this many passages of the corpus (30000: man pages, smaller documents)",
    )
    parser.add_argument("--modes", default="cli,inline,background")
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--big-mib", type=float, default=2.0)
    args = parser.parse_args()
    everything = corpus.load(args.offset + args.passages)
    skipped = len(prefix(everything, args.offset)) if args.offset else 0
    documents = prefix(everything[skipped:], args.passages)
    modes = args.modes.split(",")
    for backend in args.backends.split(","):
        with tempfile.TemporaryDirectory(prefix="ingest-rate-") as folder:
            tmp = Path(folder)
            if "cli" in modes:
                print(f"{backend} {cli(backend, documents, tmp)}", flush=True)
            if "inline" in modes:
                line = http_inline(backend, documents, tmp, args.clients, args.workers)
                print(f"{backend} {line}", flush=True)
            if "background" in modes:
                line = http_background(backend, documents, tmp, args.big_mib)
                print(f"{backend} {line}", flush=True)


if __name__ == "__main__":
    main()
