"""gunicorn settings, all from the environment (see README).

gevent workers hold many slow LLM calls each. The monkey-patch must run before psycopg or the
openai client is imported, or database waits block the whole worker; so it happens here,
before gunicorn loads the app (and the app is not preloaded).
"""

import gc
import glob
import os
import tempfile

from gevent import monkey

monkey.patch_all()


def _probe_sockets_without_the_hub() -> None:
    """httpcore (under the openai SDK) probes every idle keep-alive connection with a
    zero-timeout `select.poll()` each time its pool changes hands. gevent's cooperative poll
    makes each probe a trip through the hub (about 20 µs against 1.4 µs for the system call);
    with a hundred idle connections per worker that was a quarter of the CPU at 500 turns in
    flight. A zero-timeout poll never blocks, so the original one is safe here."""
    import select
    import types

    import httpcore2._utils

    httpcore2._utils.select = types.SimpleNamespace(
        poll=monkey.get_original("select", "poll"),
        select=monkey.get_original("select", "select"),
        POLLIN=select.POLLIN,
    )


_probe_sockets_without_the_hub()

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


# Allocations between young collections (CPython's default is 700). See post_worker_init.
GC_YOUNG_THRESHOLD = 10_000


def post_worker_init(worker):
    """The worker has loaded the app: what exists now lives as long as the worker, so the
    collector stops walking it (gc.freeze), and young collections run less often. With 250
    turns in flight per worker their live objects survive many young collections, and each
    full one walked the app's 190 000 objects as well: under P2 a worker spent 1.8 s of its
    25 s collecting, in pauses of up to 190 ms. Frozen and at 10 000: 0.5-0.7 s, pauses of
    about 60 ms. (P2's throughput did not move beyond the run-to-run noise.)"""
    gc.freeze()
    gc.set_threshold(GC_YOUNG_THRESHOLD, 10, 10)


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
