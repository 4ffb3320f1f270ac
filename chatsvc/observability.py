"""Request ids, the JSON access log, Server-Timing and security headers."""

from __future__ import annotations

import json
import logging
import re
import sys
import time
import uuid

from flask import Flask, Response, g, request

REQUEST_ID = re.compile(r"^[A-Za-z0-9._-]{1,128}$")
access_log = logging.getLogger("chatsvc.access")


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
    root = logging.getLogger("chatsvc")
    root.setLevel(level)
    if not any(getattr(h, "_chatsvc", False) for h in root.handlers):
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(JsonFormatter())
        handler._chatsvc = True  # type: ignore[attr-defined]
        root.addHandler(handler)
        root.propagate = False


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
    started = g.get("started")
    duration = (time.perf_counter() - started) * 1000 if started else 0.0
    rule = request.url_rule.rule if request.url_rule is not None else "<unmatched>"
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
