"""gunicorn settings, all from the environment (see README).

gevent workers hold many slow LLM calls each. The monkey-patch must run before psycopg or the
openai client is imported, or database waits block the whole worker; so it happens here,
before gunicorn loads the app (and the app is not preloaded).
"""

import glob
import json
import logging
import os
import tempfile
import uuid

from gevent import monkey

monkey.patch_all()

import gunicorn.util  # noqa: E402  (after the monkey-patch, like everything else)

# Prometheus multiprocess mode: each worker writes its samples under this directory and
# /metrics adds them up. One directory per instance (several may run on one machine), made
# here in the master before any worker imports prometheus_client.
if not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = tempfile.mkdtemp(prefix="chatsvc-metrics-")

bind = f"{os.environ.get('HOST', '127.0.0.1')}:{os.environ.get('PORT', '8000')}"
worker_class = "gevent"
# One worker by default: `make run`'s in-memory rate limits are then exact. Production sets
# WEB_CONCURRENCY (one per core) together with RATELIMIT_STORAGE_URI pointing at Redis.
workers = int(os.environ.get("WEB_CONCURRENCY", "1"))
# Several workers listen on a socket each (SO_REUSEPORT): the kernel spreads new connections
# evenly. On one shared socket a burst went to whichever worker woke first (25/75 to 37/63 of
# 100 connections), and kept-alive connections stay where they landed, so one worker queued
# while the other idled: P2's p99 3.6-3.7 s, against 2.9-3.3 s with a socket each. The price:
# a second instance started on the same port by the same user shares it instead of failing,
# and a worker that exits drops the connections still waiting in its own accept queue.
reuse_port = workers > 1
worker_connections = int(os.environ.get("WORKER_CONNECTIONS", "1000"))
timeout = int(os.environ.get("GUNICORN_TIMEOUT", "120"))
graceful_timeout = int(os.environ.get("GUNICORN_GRACEFUL_TIMEOUT", "30"))
keepalive = 5
preload_app = False
# No control socket: several instances run side by side from one checkout.
control_socket_disable = True
accesslog = None  # the app writes one JSON access line per request
errorlog = "-"
loglevel = os.environ.get("LOG_LEVEL", "info").lower()
# Forwarding headers (X-Forwarded-*, and SCRIPT_NAME, which becomes part of every URL the app
# builds) are trusted only from the proxies the operator names; none by default (gunicorn's
# own default trusts 127.0.0.1, i.e. any local client).
forwarded_allow_ips = os.environ.get("FORWARDED_ALLOW_IPS", "")


# What gunicorn refuses before the app runs (request line over limit_request_line: 414,
# headers over their limits: 431, malformed HTTP: 400) is answered with the contract's
# problem body, not gunicorn's HTML page. Its own message (which may quote the request line)
# stays out: a fixed detail per status.
_PROBLEMS = {
    400: ("bad_request", "The request is not valid HTTP."),
    403: ("forbidden", "The request is not allowed."),
    414: ("uri_too_long", "The request line is longer than this service accepts."),
    417: ("expectation_failed", "This service supports no expectation but 100-continue."),
    431: ("headers_too_large", "The request's header fields are larger than this service accepts."),
    500: ("internal_error", "The server failed to answer this request."),
    501: ("not_implemented", "The request uses a transfer coding this service does not support."),
}


def _write_problem(sock, status_int, reason, mesg):
    code, detail = _PROBLEMS.get(status_int, ("bad_request", "The request is not valid HTTP."))
    request_id = uuid.uuid4().hex
    body = json.dumps(
        {"type": "about:blank", "title": reason, "status": status_int, "code": code,
         "detail": detail, "request_id": request_id}
    ).encode()  # fmt: skip
    head = (
        f"HTTP/1.1 {status_int} {reason}\r\nConnection: close\r\n"
        f"Content-Type: application/problem+json\r\nContent-Length: {len(body)}\r\n"
        f"X-Request-ID: {request_id}\r\nX-Content-Type-Options: nosniff\r\n"
        "Referrer-Policy: no-referrer\r\n\r\n"
    )
    gunicorn.util.write_nonblock(sock, head.encode("latin-1") + body)


# The workers answer refused requests through gunicorn.util.write_error (workers/base.py).
gunicorn.util.write_error = _write_problem


class _NoRequestDetails(logging.Filter):
    """gunicorn logs a refused request with what it sent ("Invalid HTTP request line:
    '/api/session/<id> …'") and an application failure with its URI: a session id is a
    capability and stays out of the log. The client's address and the kind of error remain."""

    def filter(self, record):
        message = record.getMessage()
        if message.startswith("Invalid request from ip="):
            record.msg, record.args = message.split(": ", 1)[0] + ": refused (not logged)", ()
        elif message.startswith("Error handling request"):
            record.msg, record.args = "Error handling request (URI not logged)", ()
        return True


logging.getLogger("gunicorn.error").addFilter(_NoRequestDetails())


def post_worker_init(worker):
    """The worker has loaded the app: chatsvc/speedups.py says what this buys, and by how much."""
    from chatsvc import speedups, tracing

    speedups.tune_worker()
    tracing.worker_started()  # tracing's provider and BatchSpanProcessor are this worker's own


def on_starting(server):
    """Samples left by a previous run of this instance would be added to this one's."""
    for stale in glob.glob(os.path.join(os.environ["PROMETHEUS_MULTIPROC_DIR"], "*.db")):
        os.remove(stale)


def child_exit(server, worker):
    from prometheus_client import multiprocess

    multiprocess.mark_process_dead(worker.pid)


def worker_exit(server, worker):
    """The worker is leaving: its background turns get half the graceful timeout to finish
    (the master kills it at the full one), the rest are stored `failed` (interrupted); then
    the agent's clients (their sockets) and the database pool are closed."""
    from chatsvc import close_app

    app = getattr(worker, "wsgi", None)
    if app is not None and hasattr(app, "extensions"):
        close_app(app, drain_seconds=server.cfg.graceful_timeout / 2)
    from chatsvc import tracing

    tracing.shutdown()  # export the spans still in the batch (a no-op when tracing is off)
