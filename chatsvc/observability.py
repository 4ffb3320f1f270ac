"""Request ids, the JSON access log, Server-Timing, security headers and Prometheus metrics."""

from __future__ import annotations

import contextvars
import json
import logging
import os
import re
import sys
import time
import uuid
from functools import cache
from http import HTTPStatus
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from flask import Flask, Response, current_app, g, has_app_context, request
from prometheus_client import (
    REGISTRY,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
    multiprocess,
)
from sqlalchemy import event, func, select
from sqlalchemy.engine import Engine
from sqlalchemy.exc import SQLAlchemyError

REQUEST_ID = re.compile(r"^[A-Za-z0-9._-]{1,128}\Z")  # \Z: "id\n" is not well formed
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

# What deploy/prometheus/alerts.yml and deploy/grafana/chatsvc.json need beyond the above.
AGENT_FAILURES = Counter(
    "chatsvc_agent_failures_total",
    "Turns the agent failed, by error code (upstream_timeout, upstream_error, ...).",
    ["code"],
)
DB_POOL_CAPACITY = Gauge(
    "chatsvc_db_pool_capacity", "Connections the pools may hold (size plus overflow).",
    multiprocess_mode="livesum",
)  # fmt: skip
STREAMS_IN_FLIGHT = Gauge(
    "chatsvc_streams_in_flight", "SSE responses being streamed now.", multiprocess_mode="livesum"
)
TURNS_PENDING = Gauge(
    "chatsvc_turns_pending", "Turns pending in the database (read at each scrape).",
    multiprocess_mode="livemax",
)  # fmt: skip
TURNS_STUCK = Gauge(
    "chatsvc_turns_stuck",
    "Turns pending for longer than TURN_STALE_SECONDS (a crashed worker; read at each scrape).",
    multiprocess_mode="livemax",
)
# Admission (services/admission.py): turns refused, by reason, and what the refusals read.
TURNS_REFUSED = Counter(
    "chatsvc_turns_refused_total",
    "New turns refused with 503 overloaded, by reason: streams (MAX_STREAMS_PER_WORKER in "
    "flight), lag (the event loop later than OVERLOAD_LAG_MS) or window (as many turns in "
    "flight as the adaptive window admits).",
    ["reason"],
)
TURNS_IN_FLIGHT = Gauge(
    "chatsvc_turns_in_flight", "Turns running now (admitted, not yet stored).",
    multiprocess_mode="livesum",
)  # fmt: skip
EVENT_LOOP_LAG = Gauge(
    "chatsvc_event_loop_lag_seconds",
    "How late a worker's event loop wakes (smoothed; the most lagging worker) while it runs turns.",
    multiprocess_mode="livemax",
)
ADMISSION_WINDOW = Gauge(
    "chatsvc_admission_window",
    "Turns the workers admit at most while they stream: the sum of their adaptive windows "
    "(services/admission.py; set while the lag watch runs).",
    multiprocess_mode="livesum",
)
for _reason in ("streams", "lag", "window"):
    TURNS_REFUSED.labels(_reason)  # every series exists from the start, at 0
# Hybrid retrieval (services/embeddings.py): calls to the embeddings endpoint that failed. A
# `query` failure is a search that fell back to text only; a `passages` one left passages
# without vectors until `kb embed`.
EMBEDDINGS_FAILURES = Counter(
    "chatsvc_embeddings_failures_total",
    "Embeddings requests that failed, by stage (query: the search fell back to text only; "
    "passages: vectors left for `kb embed`) and reason (timeout, unavailable, invalid).",
    ["stage", "reason"],
)
EMBEDDINGS_STAGES = ("query", "passages")
EMBEDDINGS_REASONS = ("timeout", "unavailable", "invalid")
for _stage in EMBEDDINGS_STAGES:
    for _reason in EMBEDDINGS_REASONS:
        EMBEDDINGS_FAILURES.labels(_stage, _reason)  # every series from the start, at 0


# Metric labels come from fixed sets; anything else is "other" (a label per random method name
# or model name would be a new time series each: /metrics grew to 5.7 MB in 3,000 requests).
OTHER = "other"
METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
STATUSES = frozenset(str(status.value) for status in HTTPStatus)
UNMATCHED = "<unmatched>"


def method_label(method: str) -> str:
    return method if method in METHODS else OTHER


def status_label(status: int) -> str:
    text = str(status)
    return text if text in STATUSES else OTHER


@cache
def tool_names() -> frozenset[str]:
    """Every tool an agent can be offered: the only tool labels."""
    from .services.toolbox import knowledge_tools, task_tools  # they import this module

    return frozenset(tool.name for tool in [*knowledge_tools(), *task_tools("-")])


def tool_label(tool: str) -> str:
    return tool if tool in tool_names() else OTHER


def model_label(model: str) -> str:
    """The local agent's name or the configured provider model; a provider's own name for it
    (dated snapshots, or anything a server sends) is "other"."""
    known = {"local"}
    if has_app_context():
        known.add(current_app.config["OPENAI_MODEL"])
    return model if model in known else OTHER


class _CountStorageErrors(logging.Filter):
    """flask-limiter reports a storage failure only in its log: each one is counted."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno >= logging.WARNING:
            RATE_LIMIT_STORAGE_ERRORS.inc()
        return True


# Tracing (issue 19, later) sets this to a function of no arguments returning the current
# span's trace id (or None); every log line of a request then carries `trace_id` too.
trace_id_hook: Any = None


# The request's id for code that runs outside its app context but in a copy of its context
# (a streamed turn's own greenlet): contextvars travel where Flask's `g` does not.
REQUEST_ID_VAR: contextvars.ContextVar[str | None] = contextvars.ContextVar(
    "chatsvc_request_id", default=None
)


def log_context() -> dict[str, str]:
    """The ids that tie a log line to its request: `request_id`, and `trace_id` when traced."""
    context: dict[str, str] = {}
    if has_app_context() and g.get("request_id"):  # set by each request's before_request
        context["request_id"] = g.request_id
    elif (carried := REQUEST_ID_VAR.get()) is not None:
        context["request_id"] = carried
    if trace_id_hook is not None:
        trace_id = trace_id_hook()
        if trace_id:
            context["trace_id"] = trace_id
    return context


class JsonFormatter(logging.Formatter):
    """One JSON object a line; access lines carry their fields, others a message."""

    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "ts": self.formatTime(record, "%Y-%m-%dT%H:%M:%S") + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
        }
        entry.update(log_context())  # formatted in the thread that logged
        fields = getattr(record, "fields", None)
        if fields:
            entry.update(fields)
        else:
            entry["message"] = record.getMessage()
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        return json.dumps(entry, ensure_ascii=False)


class TextFormatter(logging.Formatter):
    """For people at a terminal (LOG_FORMAT=text): time, level, logger, message, key=value."""

    def format(self, record: logging.LogRecord) -> str:
        fields = {**log_context(), **(getattr(record, "fields", None) or {})}
        message = "" if getattr(record, "fields", None) else record.getMessage()
        line = " ".join(
            part
            for part in (
                self.formatTime(record, "%H:%M:%S") + f".{int(record.msecs):03d}",
                f"{record.levelname:<7}",
                record.name,
                message,
                " ".join(f"{key}={value}" for key, value in fields.items() if value is not None),
            )
            if part
        )
        if record.exc_info:
            line += "\n" + self.formatException(record.exc_info)
        return line


FORMATTERS: dict[str, type[logging.Formatter]] = {"json": JsonFormatter, "text": TextFormatter}


def init_app(app: Flask) -> None:
    _configure_logging(app.config["LOG_LEVEL"], app.config.get("LOG_FORMAT", "json"))
    app.before_request(_start)
    app.after_request(_finish)


def _configure_logging(level: str, log_format: str = "json") -> None:
    for name in LOGGERS:
        root = logging.getLogger(name)
        root.setLevel(level)
        ours = [h for h in root.handlers if getattr(h, "_chatsvc", False)]
        if not ours:
            handler = logging.StreamHandler(sys.stderr)
            handler._chatsvc = True  # type: ignore[attr-defined]
            root.addHandler(handler)
            root.propagate = False
            ours = [handler]
        for handler in ours:
            handler.setFormatter(FORMATTERS[log_format]())
    limiter_log = logging.getLogger("flask-limiter")
    if not any(isinstance(f, _CountStorageErrors) for f in limiter_log.filters):
        limiter_log.addFilter(_CountStorageErrors())


def _start() -> None:
    store = g._get_current_object()  # the proxy, looked through once (speedups.py)
    store.started = time.perf_counter()
    incoming = request.headers.get("X-Request-ID", "")
    store.request_id = incoming if REQUEST_ID.match(incoming) else uuid.uuid4().hex
    REQUEST_ID_VAR.set(store.request_id)


def record_timings(timings: dict[str, float]) -> None:
    """What a chat view measured (db, agent), sent back as Server-Timing."""
    g.timings = timings


def server_timing(timings: dict[str, float]) -> dict[str, float]:
    total = (time.perf_counter() - g.get("started", time.perf_counter())) * 1000
    return {"db": timings.get("db", 0.0), "agent": timings.get("agent", 0.0), "total": total}


def _finish(response: Response) -> Response:
    response.headers["X-Request-ID"] = g.get("request_id") or uuid.uuid4().hex
    response.headers.setdefault("X-Content-Type-Options", "nosniff")
    response.headers.setdefault("Referrer-Policy", "no-referrer")
    hsts = current_app.config["HSTS_SECONDS"]
    if hsts:
        response.headers.setdefault("Strict-Transport-Security", f"max-age={int(hsts)}")
    _own_retry_after(response)
    _relative_location(response)
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
    if response.mimetype == "text/event-stream" and response.is_streamed:
        STREAMS_IN_FLIGHT.inc()
        response.call_on_close(STREAMS_IN_FLIGHT.dec)
    _log_access(response)
    return response


def keep_retry_after(value: str | None) -> None:
    """The application's own Retry-After for this response (a provider's, on a 503), or None
    for none: flask-limiter's header injection writes its window's reset over every response's
    Retry-After, and adds one where there was none."""
    g.retry_after = value


def _own_retry_after(response: Response) -> None:
    if response.status_code == 429:
        return  # the limiter's own refusal: its Retry-After is the one that counts
    own = g.get("retry_after")
    if own:
        response.headers["Retry-After"] = own
    else:
        response.headers.pop("Retry-After", None)


def _relative_location(response: Response) -> None:
    """A redirect names a path on this service, never the Host header a client sent."""
    location = response.headers.get("Location")
    if location:
        parts = urlsplit(location)
        if parts.scheme or parts.netloc:
            path = parts.path if parts.path.startswith("/") else "/" + parts.path
            response.headers["Location"] = urlunsplit(("", "", path, parts.query, parts.fragment))


def _log_access(response: Response) -> None:
    """Route template, never the raw path (ids) or the body (message text) or headers (tokens)."""
    store, req = g._get_current_object(), request._get_current_object()  # (speedups.py)
    started = store.get("started")
    duration = (time.perf_counter() - started) * 1000 if started else 0.0
    rule = req.url_rule.rule if req.url_rule is not None else UNMATCHED
    method = method_label(req.method)
    REQUESTS.labels(method, rule, status_label(response.status_code)).inc()
    REQUEST_SECONDS.labels(method, rule).observe(duration / 1000)
    access_log.info(
        "access",
        extra={
            "fields": {
                "method": method,
                "path": rule,
                "status": response.status_code,
                "duration_ms": round(duration, 2),
                "request_id": store.get("request_id"),
                "user_id": store.get("user_id"),
            }
        },
    )


def record_turn(result: Any, tools: list[str]) -> None:
    """A settled turn (services.turns.TurnResult): its agent time, tokens and tool calls."""
    model, usage = model_label(result.model or OTHER), result.usage
    AGENT_SECONDS.labels(model, result.status).observe(result.timings.get("agent", 0.0) / 1000)
    TOKENS.labels(model, "prompt").inc(usage.get("prompt_tokens", 0))
    TOKENS.labels(model, "completion").inc(usage.get("completion_tokens", 0))
    for tool in tools:
        TOOL_CALLS.labels(tool_label(tool)).inc()
    if result.status == "failed" and result.error_code:
        record_failure(result.error_code)


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
    size = getattr(engine.pool, "size", None)
    if callable(size):  # QueuePool: its size plus the overflow it may open (one app a process)
        DB_POOL_CAPACITY.set(size() + max(getattr(engine.pool, "_max_overflow", 0), 0))


def metrics_text() -> bytes:
    """The Prometheus exposition of this instance: every worker's counts when multiprocess."""
    _read_turn_gauges()
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)
        return generate_latest(registry)
    return generate_latest(REGISTRY)


def _read_turn_gauges() -> None:
    """Pending and stuck turns, from the database at scrape time (every worker sees the same)."""
    from datetime import timedelta

    from .db import database, utcnow
    from .models import Message

    if not has_app_context():
        return
    stale = utcnow() - timedelta(seconds=current_app.config["TURN_STALE_SECONDS"])
    pending = Message.status == "pending"
    query = select(
        func.count().filter(pending), func.count().filter(pending, Message.created_at < stale)
    ).select_from(Message)
    try:
        with database(current_app).engine.connect() as connection:
            total, stuck = connection.execute(query).one()
    except SQLAlchemyError:  # /metrics answers with the database down; the gauges keep their value
        logging.getLogger("chatsvc").warning("metrics: cannot count pending turns")
        return
    TURNS_PENDING.set(total)
    TURNS_STUCK.set(stuck)


def record_refusal(reason: str) -> None:
    """A new turn refused (503 overloaded): `streams`, `lag` or `window`
    (services/admission.py)."""
    TURNS_REFUSED.labels(reason).inc()


def record_failure(code: str) -> None:
    """A failed turn's error code (upstream_timeout, upstream_error, ...), for the alerts."""
    AGENT_FAILURES.labels(code).inc()


def record_embeddings_failure(stage: str, reason: str) -> None:
    """An embeddings request that failed (services/embeddings.py); labels from fixed sets."""
    EMBEDDINGS_FAILURES.labels(
        stage if stage in EMBEDDINGS_STAGES else OTHER,
        reason if reason in EMBEDDINGS_REASONS else OTHER,
    ).inc()
