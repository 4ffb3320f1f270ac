"""gunicorn settings, all from the environment (see README).

gevent workers hold many slow LLM calls each. The monkey-patch must run before psycopg or the
openai client is imported, or database waits block the whole worker; so it happens here,
before gunicorn loads the app (and the app is not preloaded).
"""

import glob
import os
import tempfile

from gevent import monkey

monkey.patch_all()


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
forwarded_allow_ips = os.environ.get("FORWARDED_ALLOW_IPS", "127.0.0.1")


def post_worker_init(worker):
    """The worker has loaded the app: chatsvc/speedups.py says what this buys, and by how much."""
    from chatsvc import speedups

    speedups.tune_worker()


def on_starting(server):
    """Samples left by a previous run of this instance would be added to this one's."""
    for stale in glob.glob(os.path.join(os.environ["PROMETHEUS_MULTIPROC_DIR"], "*.db")):
        os.remove(stale)


def child_exit(server, worker):
    from prometheus_client import multiprocess

    multiprocess.mark_process_dead(worker.pid)


def worker_exit(server, worker):
    """The worker is leaving: close the agent's clients (their sockets) and the database pool."""
    from chatsvc import close_app

    app = getattr(worker, "wsgi", None)
    if app is not None and hasattr(app, "extensions"):
        close_app(app)
