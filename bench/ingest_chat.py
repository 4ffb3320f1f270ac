"""A chat turn's latency while a 2 MiB document is ingested (issue 21: "ingest never blocks
chat"), on one gunicorn worker (the worst case: the ingest and the turns share it), with the
offline agent, on SQLite and PostgreSQL.

    python -m bench.ingest_chat [--backends sqlite,postgresql] [--turns 40]

For each backend it runs two modes: `background` (the default INGEST_INLINE_BYTES: the POST
answers 202 and a job in the worker indexes the document) and `inline` (INGEST_INLINE_BYTES =
the whole limit: the POST indexes it, as before issue 21). Each prints the turns' p50/p95/max
on their own, then while the document is ingested (from the POST until it reads `ready`), and
how long the ingest took. Not a test: the machine is shared, so read the spread, not one
figure."""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

from sqlalchemy import create_engine, text

from . import harness

POSTGRES = "postgresql+psycopg://postgres@127.0.0.1:5432/test_ingest_chat_bench"
DOCUMENT_BYTES = 2 * 1024 * 1024 - 128 * 1024  # room for JSON escapes within the body limit
README = Path(__file__).resolve().parents[1] / "README.md"


def document_text() -> str:
    """About 2 MiB of real prose: the README's paragraphs under numbered headings."""
    paragraphs = [p for p in README.read_text().split("\n\n") if p.strip()]
    parts, size, n = [], 0, 0
    while size < DOCUMENT_BYTES:
        paragraph = f"## Part {n}\n\n{paragraphs[n % len(paragraphs)]} (copy {n})"
        parts.append(paragraph)
        size += len(paragraph.encode()) + 2
        n += 1
    return "\n\n".join(parts)[:DOCUMENT_BYTES]


def call(url: str, body: dict | None = None, timeout: float = 120) -> tuple[int, dict]:
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=timeout) as response:
        return response.status, json.loads(response.read())


def turn(url: str, n: int) -> float:
    started = time.monotonic()
    status, _ = call(url + "/api/chat", {"message": f"How does the event log resume a turn? ({n})"})
    assert status == 200, status
    return (time.monotonic() - started) * 1000


def summary(values: list[float]) -> str:
    if not values:
        return "no turns"
    ordered = sorted(values)
    p95 = ordered[min(len(ordered) - 1, int(len(ordered) * 0.95))]
    return (
        f"{len(values)} turns, p50 {statistics.median(values):.1f} ms, p95 {p95:.1f} ms, "
        f"max {ordered[-1]:.1f} ms"
    )


def run(database_url: str, inline: bool, turns: int, body: str) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        metrics = Path(tmp) / "metrics"
        metrics.mkdir()
        env = {
            "CHATSVC_ENV": "production",
            "AUTH_MODE": "optional",
            "DATABASE_URL": database_url,
            "AGENT_PROVIDER": "local",
            "RATELIMIT_ENABLED": "false",
            "WEB_CONCURRENCY": "1",
            "PROMETHEUS_MULTIPROC_DIR": str(metrics),
            "LOG_LEVEL": "WARNING",
            "MAX_DOCUMENT_BYTES": str(2 * 1024 * 1024),
        }
        if inline:
            env["INGEST_INLINE_BYTES"] = env["MAX_DOCUMENT_BYTES"]
        harness.migrate(env)
        service = harness.start_chatsvc(env, name="ingest-chat")
        try:
            call(service.url + "/api/documents", {"title": "Seed", "text": README.read_text()})
            alone = [turn(service.url, n) for n in range(turns)]
            during: list[float] = []
            outcome: dict[str, float | str] = {}

            def ingest() -> None:
                started = time.monotonic()
                status, document = call(
                    service.url + "/api/documents", {"title": "Big", "text": body}
                )
                outcome["post_ms"] = (time.monotonic() - started) * 1000
                outcome["status"] = status
                while document["status"] == "indexing":
                    time.sleep(0.02)
                    _, document = call(f"{service.url}/api/documents/{document['id']}")
                outcome["ready_ms"] = (time.monotonic() - started) * 1000
                outcome["passages"] = document["chunk_count"]

            worker = threading.Thread(target=ingest)
            worker.start()
            n = 0
            while worker.is_alive():
                during.append(turn(service.url, turns + n))
                n += 1
            worker.join()
        finally:
            service.stop()
    mode = "inline" if inline else "background"
    print(f"  {mode}: alone: {summary(alone)}")
    print(f"  {mode}: during the ingest: {summary(during)}")
    print(
        f"  {mode}: POST answered {outcome.get('status')} in {outcome.get('post_ms', 0):.0f} ms; "
        f"{outcome.get('passages')} passages ready after {outcome.get('ready_ms', 0):.0f} ms"
    )


def fresh_postgres() -> str:
    engine = create_engine(POSTGRES.rsplit("/", 1)[0] + "/postgres", isolation_level="AUTOCOMMIT")
    name = POSTGRES.rsplit("/", 1)[1]
    with engine.connect() as connection:
        connection.execute(text(f'DROP DATABASE IF EXISTS "{name}"'))
        connection.execute(text(f'CREATE DATABASE "{name}"'))
    engine.dispose()
    return POSTGRES


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backends", default="sqlite,postgresql")
    parser.add_argument("--turns", type=int, default=40, help="turns measured alone")
    args = parser.parse_args()
    body = document_text()
    for backend in args.backends.split(","):
        print(f"{backend}: a {len(body.encode()) / 1024 / 1024:.1f} MiB document, one worker")
        for inline in (False, True):
            if backend == "sqlite":
                url = "sqlite:///" + tempfile.mktemp(suffix=".db", prefix="ingest-chat-")
            else:
                url = fresh_postgres()
            run(url, inline, args.turns, body)


if __name__ == "__main__":
    main()
