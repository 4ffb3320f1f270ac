"""gunicorn settings, all from the environment (see README).

gevent workers hold many slow LLM calls each. The monkey-patch must run before psycopg or the
openai client is imported, or database waits block the whole worker; so it happens here,
before gunicorn loads the app (and the app is not preloaded).
"""

import os

from gevent import monkey

monkey.patch_all()

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
