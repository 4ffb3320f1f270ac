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


def on_starting(server):
    """Samples left by a previous run of this instance would be added to this one's."""
    for stale in glob.glob(os.path.join(os.environ["PROMETHEUS_MULTIPROC_DIR"], "*.db")):
        os.remove(stale)


def child_exit(server, worker):
    from prometheus_client import multiprocess

    multiprocess.mark_process_dead(worker.pid)
