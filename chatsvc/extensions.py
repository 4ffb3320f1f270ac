"""Extensions: unbound singletons `create_app` binds to each app, and the rate limiter."""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Iterable
from typing import Any

from flask import Flask, current_app, request
from flask_cors import CORS
from flask_limiter import Limit, Limiter, RequestLimit
from flask_migrate import Migrate
from werkzeug.exceptions import RequestTimeout
from werkzeug.middleware.proxy_fix import ProxyFix

from . import auth, observability

migrate = Migrate(render_as_batch=True, compare_type=True)
cors = CORS()

# Never rate limited: probes, metrics scrapes and documentation.
EXEMPT_PATHS = ("/health", "/metrics", "/docs", "/openapi.json")
EXPOSED_HEADERS = [
    "X-Request-ID",
    "X-RateLimit-Limit",
    "X-RateLimit-Remaining",
    "X-RateLimit-Reset",
    "Retry-After",
    "Idempotent-Replayed",
    "Server-Timing",
    "ETag",
    "X-Quota-Remaining",
]


def _is_chat() -> bool:
    # The OpenAI-compatible API's turns (blueprint "openai") share the chat budget.
    return request.method == "POST" and request.blueprint in ("chat", "openai")


def _limit() -> str:
    return current_app.config["RATELIMIT_CHAT" if _is_chat() else "RATELIMIT_DEFAULT"]


def _scope(endpoint: str) -> str:
    """All chat POSTs share one bucket per caller; every other route has its own."""
    return "chat" if _is_chat() else endpoint


def _exempt() -> bool:
    # A preflight carries no credentials and precedes the real request, which counts.
    return request.method == "OPTIONS" or request.path.startswith(EXEMPT_PATHS)


def _on_breach(limit: RequestLimit) -> None:
    observability.RATE_LIMITED.labels("chat" if _is_chat() else "default").inc()


def make_limiter() -> Limiter:
    """One limiter per app: flask-limiter keeps its storage, fallback state and defaults on the
    instance, and a test process builds many apps with different settings."""
    return Limiter(
        key_func=auth.limit_key,
        default_limits=[
            Limit(limit_provider=_limit, scope=_scope, shared=True, exempt_when=_exempt)
        ],
        headers_enabled=True,
        on_breach=_on_breach,
        # Fail open on purpose: with the shared storage (Redis) unreachable the service keeps
        # answering, counting per process in memory until the storage answers again; the
        # limiter logs the switch ("Rate limit storage unreachable") on its logger.
        in_memory_fallback_enabled=True,
        swallow_errors=True,
        storage_options={"socket_connect_timeout": 1, "socket_timeout": 1},
    )


class _TimedInput:
    """A request body that must arrive by a deadline. Under gunicorn's gevent workers a read
    is cut off at the deadline by a gevent.Timeout: gunicorn's own read loops until it has
    what it asked for, so a client trickling a byte at a time would defeat a per-recv socket
    timeout. Under other workers the client's socket waits at most until the deadline on each
    receive; without a socket (the development server) the deadline is checked between reads."""

    def __init__(self, stream: Any, deadline: float, sock: Any) -> None:
        self._stream, self._deadline, self._sock = stream, deadline, sock

    def _bounded(self, read: Callable[..., bytes], *args: Any) -> bytes:
        remaining = self._deadline - time.monotonic()
        if remaining <= 0:
            raise RequestTimeout()
        if _cooperative():
            import gevent

            with gevent.Timeout(remaining, RequestTimeout()):
                return read(*args)
        if self._sock is None:
            return read(*args)
        previous = self._sock.gettimeout()
        self._sock.settimeout(remaining)
        try:
            return read(*args)
        except TimeoutError:
            raise RequestTimeout() from None
        finally:
            self._sock.settimeout(previous)

    def read(self, size: int | None = -1) -> bytes:
        return self._bounded(self._stream.read, size)

    def readline(self, size: int | None = -1) -> bytes:
        return self._bounded(self._stream.readline, size)

    def readlines(self, hint: int | None = -1) -> list[bytes]:
        return list(iter(self.readline, b""))

    def __iter__(self) -> Iterable[bytes]:
        return iter(self.readline, b"")


def _cooperative() -> bool:
    """gevent has patched the socket module (gunicorn.conf.py does, for its gevent workers)."""
    monkey = sys.modules.get("gevent.monkey")
    return monkey is not None and monkey.is_module_patched("socket")


class BodyDeadline:
    """WSGI middleware: a request's body must arrive within `seconds` of its headers, so slow
    clients cannot hold connections (`BODY_TIMEOUT_SECONDS`, 408 `request_timeout`)."""

    def __init__(self, app: Callable[..., Any], seconds: float) -> None:
        self.app, self.seconds = app, seconds

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Any:
        if environ.get("CONTENT_LENGTH") or environ.get("HTTP_TRANSFER_ENCODING"):
            environ["wsgi.input"] = _TimedInput(
                environ["wsgi.input"],
                time.monotonic() + self.seconds,
                environ.get("gunicorn.socket"),
            )
        return self.app(environ, start_response)


def init_app(app: Flask) -> None:
    """Proxy trust, rate limits and CORS, in the order their request hooks must run."""
    # `/api//alice/tasks` is not found: merging the slashes answered with a redirect built
    # from the client's Host header.
    app.url_map.merge_slashes = False
    app.wsgi_app = BodyDeadline(app.wsgi_app, app.config["BODY_TIMEOUT_SECONDS"])  # type: ignore[method-assign]
    hops = app.config["PROXY_FIX_X_FOR"]
    if hops:
        app.wsgi_app = ProxyFix(app.wsgi_app, x_for=hops)  # type: ignore[method-assign]
    make_limiter().init_app(app)
    origins = [o.strip() for o in app.config["CORS_ORIGINS"].split(",") if o.strip()]
    cors.init_app(
        app,
        resources={r"/api/*": {"origins": origins}, r"/v1/*": {"origins": origins}},
        supports_credentials=True,
        expose_headers=EXPOSED_HEADERS,
        max_age=600,
    )
