"""Request ids, the JSON access log, Server-Timing, security headers and Prometheus metrics."""

from __future__ import annotations

import json
import logging
import os
import re
import sys
import time
import uuid
from typing import Any

from flask import Flask, Response, g, request
from prometheus_client import (
    REGISTRY,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
    multiprocess,
)
from sqlalchemy import event
from sqlalchemy.engine import Engine

REQUEST_ID = re.compile(r"^[A-Za-z0-9._-]{1,128}$")
access_log = logging.getLogger("chatsvc.access")
# Loggers whose lines go out as JSON: ours, and the rate limiter's (storage down, breaches).
LOGGERS = ("chatsvc", "flask-limiter")

# Process-wide metrics. Under gunicorn, PROMETHEUS_MULTIPROC_DIR (set per instance by
# gunicorn.conf.py) makes /metrics add up every worker's counts.
REQUESTS = Counter(
    "chatsvc_http_requests_total", "HTTP requests by route template and status.",
    ["method", "route", "status"],
)  # fmt: skip
REQUEST_SECONDS = Histogram(
    "chatsvc_http_request_duration_seconds", "Time to the response's headers, by route.",
    ["method", "route"],
)  # fmt: skip
AGENT_SECONDS = Histogram(
    "chatsvc_agent_duration_seconds", "Agent (LLM and tools) time per turn.", ["model", "status"],
    buckets=(0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 20, 30, 60, 120),
)  # fmt: skip
TOKENS = Counter("chatsvc_llm_tokens_total", "Tokens used, by model and kind.", ["model", "kind"])
TOOL_CALLS = Counter("chatsvc_tool_calls_total", "Tool calls the agent made, by tool.", ["tool"])
RATE_LIMITED = Counter(
    "chatsvc_rate_limited_total", "Requests refused by the rate limiter (429).", ["scope"]
)
DB_POOL_IN_USE = Gauge(
    "chatsvc_db_pool_checked_out", "Database connections checked out now.",
    multiprocess_mode="livesum",
)  # fmt: skip
DB_POOL_MAX = Gauge(
    "chatsvc_db_pool_checked_out_max", "Most connections one worker had checked out at once.",
    multiprocess_mode="max",
)  # fmt: skip
RATE_LIMIT_STORAGE_ERRORS = Counter(
    "chatsvc_rate_limit_storage_errors_total",
    "Rate-limit storage failures; the limiter then counts in memory (fails open).",
)


class _CountStorageErrors(logging.Filter):
    """flask-limiter reports a storage failure only in its log: each one is counted."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno >= logging.WARNING:
            RATE_LIMIT_STORAGE_ERRORS.inc()
        return True


class JsonFormatter(logging.Formatter):
    """One JSON object a line; access lines carry their fields, others a message."""

    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "ts": self.formatTime(record, "%Y-%m-%dT%H:%M:%S") + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
        }
        fields = getattr(record, "fields", None)
        if fields:
            entry.update(fields)
        else:
            entry["message"] = record.getMessage()
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        return json.dumps(entry, ensure_ascii=False)


def init_app(app: Flask) -> None:
    _configure_logging(app.config["LOG_LEVEL"])
    app.before_request(_start)
    app.after_request(_finish)


def _configure_logging(level: str) -> None:
    for name in LOGGERS:
        root = logging.getLogger(name)
        root.setLevel(level)
        if not any(getattr(h, "_chatsvc", False) for h in root.handlers):
            handler = logging.StreamHandler(sys.stderr)
            handler.setFormatter(JsonFormatter())
            handler._chatsvc = True  # type: ignore[attr-defined]
            root.addHandler(handler)
            root.propagate = False
    limiter_log = logging.getLogger("flask-limiter")
    if not any(isinstance(f, _CountStorageErrors) for f in limiter_log.filters):
        limiter_log.addFilter(_CountStorageErrors())


def _start() -> None:
    g.started = time.perf_counter()
    incoming = request.headers.get("X-Request-ID", "")
    g.request_id = incoming if REQUEST_ID.match(incoming) else uuid.uuid4().hex


def record_timings(timings: dict[str, float]) -> None:
    """What a chat view measured (db, agent), sent back as Server-Timing."""
    g.timings = timings


def server_timing(timings: dict[str, float]) -> dict[str, float]:
    total = (time.perf_counter() - g.get("started", time.perf_counter())) * 1000
    return {"db": timings.get("db", 0.0), "agent": timings.get("agent", 0.0), "total": total}


def _finish(response: Response) -> Response:
    response.headers["X-Request-ID"] = g.get("request_id") or uuid.uuid4().hex
    response.headers.setdefault("X-Content-Type-Options", "nosniff")
    if response.status_code not in (429, 503):
        # flask-limiter sends Retry-After on every response; it means something only here.
        response.headers.pop("Retry-After", None)
    if response.mimetype == "text/html":
        response.headers.setdefault(
            "Content-Security-Policy",
            "default-src 'self'; img-src 'self' data:; style-src 'self' 'unsafe-inline'; "
            "frame-ancestors 'none'; base-uri 'self'; form-action 'self'",
        )
    timings = g.get("timings")
    if timings is not None and not response.is_streamed:
        response.headers["Server-Timing"] = ", ".join(
            f"{name};dur={value:.1f}" for name, value in server_timing(timings).items()
        )
    _log_access(response)
    return response


def _log_access(response: Response) -> None:
    """Route template, never the raw path (ids) or the body (message text) or headers (tokens)."""
    started = g.get("started")
    duration = (time.perf_counter() - started) * 1000 if started else 0.0
    rule = request.url_rule.rule if request.url_rule is not None else "<unmatched>"
    REQUESTS.labels(request.method, rule, str(response.status_code)).inc()
    REQUEST_SECONDS.labels(request.method, rule).observe(duration / 1000)
    access_log.info(
        "access",
        extra={
            "fields": {
                "method": request.method,
                "path": rule,
                "status": response.status_code,
                "duration_ms": round(duration, 2),
                "request_id": g.get("request_id"),
                "user_id": g.get("user_id"),
            }
        },
    )


def record_turn(result: Any, tools: list[str]) -> None:
    """A settled turn (services.turns.TurnResult): its agent time, tokens and tool calls."""
    model, usage = result.model or "unknown", result.usage
    AGENT_SECONDS.labels(model, result.status).observe(result.timings.get("agent", 0.0) / 1000)
    TOKENS.labels(model, "prompt").inc(usage.get("prompt_tokens", 0))
    TOKENS.labels(model, "completion").inc(usage.get("completion_tokens", 0))
    for tool in tools:
        TOOL_CALLS.labels(tool).inc()


def watch_pool(engine: Engine) -> None:
    """Count the connections checked out of the engine's pool, and their high-water mark."""
    in_use = 0
    high_water = 0

    def checkout(*_: Any) -> None:
        nonlocal in_use, high_water
        in_use += 1
        DB_POOL_IN_USE.inc()
        if in_use > high_water:
            high_water = in_use
            DB_POOL_MAX.set(high_water)

    def checkin(*_: Any) -> None:
        nonlocal in_use
        in_use -= 1
        DB_POOL_IN_USE.dec()

    event.listen(engine, "checkout", checkout)
    event.listen(engine, "checkin", checkin)


def metrics_text() -> bytes:
    """The Prometheus exposition of this instance: every worker's counts when multiprocess."""
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)
        return generate_latest(registry)
    return generate_latest(REGISTRY)
