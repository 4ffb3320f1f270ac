"""Configuration profiles. Every setting is an environment variable (see README)."""

from __future__ import annotations

import contextlib
import os
import secrets
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from limits import parse_many


class ConfigError(RuntimeError):
    """The configuration is unsafe or incomplete; the service refuses to start."""


class Config:
    """Development defaults: embedded SQLite, offline agent, trusted path user ids."""

    CHATSVC_ENV = "development"
    LOG_LEVEL = "INFO"
    LOG_FORMAT = "text"  # `json` (one object a line, for collectors) or `text` (for people)

    # Storage. An empty DATABASE_URL means a SQLite file in the instance folder.
    DATABASE_URL = ""
    DB_POOL_SIZE = 10
    DB_MAX_OVERFLOW = 0
    DB_POOL_TIMEOUT = 10.0
    DB_CONNECT_TIMEOUT = 5
    SQLITE_BUSY_TIMEOUT_MS = 10000

    # Limits.
    MAX_CONTENT_LENGTH = 64 * 1024
    MAX_DOCUMENT_BYTES = 2 * 1024 * 1024
    # A document's text up to this many bytes is split and indexed inside its POST (201);
    # a larger one is stored at once and indexed in the background (202, status `indexing`).
    INGEST_INLINE_BYTES = 64 * 1024
    # A background indexing renews its lease every batch; one not renewed for this long (its
    # worker died) is taken over by the next request that reads or posts the document.
    INGEST_LEASE_SECONDS = 60
    MAX_MESSAGE_CHARS = 4000

    # Conversations.
    HISTORY_LIMIT = 20
    HISTORY_MAX_TOKENS = 6000
    SESSION_TTL_SECONDS = 3600
    SESSION_RETENTION_SECONDS = 86400
    CONVERSATION_TTL_SECONDS = 0  # 0: user conversations never expire
    TURN_STALE_SECONDS = 300  # a turn still pending after this is failed by cleanup
    # A running turn renews its claim every third of this; a claim not renewed for this long
    # (its worker died) is failed by the next request on the conversation, or by cleanup.
    TURN_LEASE_SECONDS = 15.0
    SSE_PING_SECONDS = 15.0
    # The turn's event log (contract §5): what a stream resumes from.
    TURN_ON_DISCONNECT = "continue"  # or "cancel": a streaming client that leaves stops its turn
    TURN_EVENTS_TTL_SECONDS = 3600  # how long a turn's events stay readable
    # set: the log lives in Redis Streams (else in TURN_EVENTS_STORE), and cancels travel over
    # its pub/sub at once
    EVENTS_REDIS_URL = ""
    TURN_EVENTS_STORE = "database"  # or "memory": this process only (one worker; benchmarks)
    TURN_EVENTS_FLUSH_MS = 10.0  # events are stored in batches gathered over this long
    TURN_EVENTS_POLL_SECONDS = 0.2  # database log: how often a reader on another worker looks
    # A turn is settled once the store holds its events: for at most this long while the store
    # is down or slow (a Redis restart, a database cut), the ending waits for it. 0: never.
    TURN_EVENTS_STORE_WAIT_SECONDS = 10.0
    # Cancels (POST …/messages/{id}/cancel) reach the worker running the turn: at once over
    # Redis when EVENTS_REDIS_URL is set, else through a database flag each worker checks this
    # often while it runs turns (one query per worker, not per turn).
    TURN_CANCEL_POLL_SECONDS = 0.5
    WS_IDLE_SECONDS = 300.0  # a WebSocket with no frame from its client for this long is closed
    # Admission (contract §1, `overloaded`): a worker refuses a new turn (503 with Retry-After)
    # rather than slow the turns it already streams: when it runs this many turns already
    # (0: no limit; 500 = half of WORKER_CONNECTIONS, the P7 goal of 1,000 streams on two
    # workers), or while it streams and its event loop wakes later than OVERLOAD_LAG_MS
    # (smoothed; 0: off). Off in development: a laptop lags for reasons of its own (a build, a
    # debugger). bench/RESULTS.md, "Admission", has the measurements behind 25 ms.
    MAX_STREAMS_PER_WORKER = 500
    OVERLOAD_LAG_MS = 0.0
    # A refusal's Retry-After: this at first, doubled each time refusals have lasted a whole
    # Retry-After, up to the max; back to this after a quiet one (services/admission.py).
    OVERLOAD_RETRY_AFTER_SECONDS = 1
    OVERLOAD_RETRY_AFTER_MAX_SECONDS = 30

    # Auth.
    AUTH_MODE = "optional"
    JWT_SECRET = ""
    JWT_SECRETS = ""  # more accepted HS256 keys, comma-separated: the old one during a rollover
    JWT_ISSUER = ""
    JWT_AUDIENCE = ""
    ALLOW_ANONYMOUS_SESSIONS = True
    JWT_MAX_LIFETIME_SECONDS = 0  # 0: any lifetime; else tokens whose exp - iat is longer -> 401

    # The edge: rate limits, idempotency, CORS, proxies.
    RATELIMIT_ENABLED = True
    RATELIMIT_CHAT = "10 per minute"
    RATELIMIT_DEFAULT = "120 per minute"
    RATELIMIT_STORAGE_URI = "memory://"
    IDEMPOTENCY_TTL_SECONDS = 86400
    CORS_ORIGINS = "http://localhost:3000,http://localhost:5173"
    PROXY_FIX_X_FOR = 0  # how many proxies in front set X-Forwarded-For (0: trust none)
    BODY_TIMEOUT_SECONDS = 10.0  # a request body must arrive within this, else 408
    HSTS_SECONDS = 0  # > 0: Strict-Transport-Security: max-age=HSTS_SECONDS on every response
    METRICS_TOKEN = ""  # set: GET /metrics needs "Authorization: Bearer <METRICS_TOKEN>"

    # Agent.
    AGENT_PROVIDER = "local"
    AGENT_TIMEOUT_SECONDS = 60.0
    AGENT_MAX_RETRIES = 2
    AGENT_MAX_TOOL_ROUNDS = 5
    AGENT_SYSTEM_PROMPT = ""  # empty: the built-in prompt for the assistant's tools
    OPENAI_BASE_URL = ""
    OPENAI_MODEL = "gpt-4o-mini"
    OPENAI_API_KEY = ""
    OPENAI_STREAM = True  # false for servers that cannot stream tool calls
    OPENAI_MAX_TOKENS = 0  # 0: the provider's default; else sent as max_tokens per call

    # Hybrid retrieval (services/embeddings.py): off unless EMBEDDINGS_BASE_URL is set. Any
    # OpenAI-compatible /v1/embeddings; vectors are searched on SQLite (sqlite-vec), while
    # PostgreSQL searches by text only (no pgvector path yet; said at start-up).
    EMBEDDINGS_BASE_URL = ""
    EMBEDDINGS_MODEL = ""
    EMBEDDINGS_API_KEY = ""
    EMBEDDINGS_DIMENSIONS = 0  # 0: the first response's, then held; else checked on each
    EMBEDDINGS_TIMEOUT_SECONDS = 2.0  # a search's query; past it, the search is text only
    EMBEDDINGS_BATCH_TIMEOUT_SECONDS = 30.0  # a batch of passages at ingest
    EMBEDDINGS_BATCH = 64  # passages per request

    # Quotas (contract §10): tokens per user (anonymous callers: per client address) per UTC
    # day; 0: no quota. An admin can set one user's own cap.
    QUOTA_TOKENS_PER_DAY = 0

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> dict[str, Any]:
        """This profile's defaults, each overridden by an environment variable of its name."""
        environ = os.environ if environ is None else environ
        settings: dict[str, Any] = {}
        for name in dir(cls):
            if not name.isupper():
                continue
            default = getattr(cls, name)
            raw = environ.get(name)
            settings[name] = default if raw is None else _parse(name, raw, default)
        return settings

    @classmethod
    def validate(cls, settings: Mapping[str, Any]) -> None:
        """Fail fast on settings that make no sense in any profile."""
        if settings["AUTH_MODE"] not in {"optional", "required"}:
            raise ConfigError("AUTH_MODE must be 'optional' or 'required'")
        if settings["AGENT_PROVIDER"] not in {"local", "openai"}:
            raise ConfigError("AGENT_PROVIDER must be 'local' or 'openai'")
        for name in (
            "HISTORY_LIMIT", "MAX_MESSAGE_CHARS", "MAX_CONTENT_LENGTH", "IDEMPOTENCY_TTL_SECONDS"
        ):  # fmt: skip
            if settings[name] < 1:
                raise ConfigError(f"{name} must be positive")
        if settings["AUTH_MODE"] == "required" and len(settings["JWT_SECRET"].encode()) < 32:
            raise ConfigError("AUTH_MODE=required needs a JWT_SECRET of at least 32 bytes")
        for name in ("JWT_MAX_LIFETIME_SECONDS", "HSTS_SECONDS"):
            if settings[name] < 0:
                raise ConfigError(f"{name} must be 0 or more")
        if settings["BODY_TIMEOUT_SECONDS"] <= 0:
            raise ConfigError("BODY_TIMEOUT_SECONDS must be positive")
        if not 0 < settings["TURN_CANCEL_POLL_SECONDS"] <= 1:
            raise ConfigError("TURN_CANCEL_POLL_SECONDS must be in (0, 1]: a cancel takes effect "
                              "within a second")  # fmt: skip
        if settings["EVENTS_REDIS_URL"] and not settings["EVENTS_REDIS_URL"].startswith(
            ("redis://", "rediss://", "unix://")
        ):
            raise ConfigError("EVENTS_REDIS_URL must be a redis://, rediss:// or unix:// URL")
        if settings["PROXY_FIX_X_FOR"] < 0:
            raise ConfigError("PROXY_FIX_X_FOR must be 0 or more")
        for name in ("RATELIMIT_CHAT", "RATELIMIT_DEFAULT"):
            try:
                parse_many(settings[name])
            except ValueError as exc:
                raise ConfigError(f"{name}: {exc}") from None
        if settings["TURN_ON_DISCONNECT"] not in {"continue", "cancel"}:
            raise ConfigError("TURN_ON_DISCONNECT must be 'continue' or 'cancel'")
        if settings["TURN_EVENTS_STORE"] not in {"database", "memory"}:
            raise ConfigError("TURN_EVENTS_STORE must be 'database' or 'memory'")
        if settings["TURN_EVENTS_TTL_SECONDS"] < 1:
            raise ConfigError("TURN_EVENTS_TTL_SECONDS must be positive")
        if settings["TURN_EVENTS_FLUSH_MS"] < 0 or settings["TURN_EVENTS_POLL_SECONDS"] <= 0:
            raise ConfigError(
                "TURN_EVENTS_FLUSH_MS must be 0 or more, TURN_EVENTS_POLL_SECONDS positive"
            )
        if not 0 <= settings["TURN_EVENTS_STORE_WAIT_SECONDS"] <= 300:
            raise ConfigError("TURN_EVENTS_STORE_WAIT_SECONDS must be 0 to 300")
        if settings["MAX_STREAMS_PER_WORKER"] < 0 or settings["OVERLOAD_LAG_MS"] < 0:
            raise ConfigError("MAX_STREAMS_PER_WORKER and OVERLOAD_LAG_MS must be 0 (off) or more")
        if not 1 <= settings["OVERLOAD_RETRY_AFTER_SECONDS"] <= 600:
            raise ConfigError("OVERLOAD_RETRY_AFTER_SECONDS must be between 1 and 600")
        if not (
            settings["OVERLOAD_RETRY_AFTER_SECONDS"]
            <= settings["OVERLOAD_RETRY_AFTER_MAX_SECONDS"]
            <= 600
        ):
            raise ConfigError(
                "OVERLOAD_RETRY_AFTER_MAX_SECONDS must be between OVERLOAD_RETRY_AFTER_SECONDS "
                "and 600"
            )
        if bool(settings["EMBEDDINGS_BASE_URL"]) != bool(settings["EMBEDDINGS_MODEL"]):
            raise ConfigError("EMBEDDINGS_BASE_URL and EMBEDDINGS_MODEL go together: both or "
                              "neither")  # fmt: skip
        if settings["EMBEDDINGS_BASE_URL"] and not settings["EMBEDDINGS_BASE_URL"].startswith(
            ("http://", "https://")
        ):
            raise ConfigError("EMBEDDINGS_BASE_URL must be an http:// or https:// URL")
        if not 0 <= settings["EMBEDDINGS_DIMENSIONS"] <= 8192:
            raise ConfigError("EMBEDDINGS_DIMENSIONS must be between 0 (discovered) and 8192")
        if settings["EMBEDDINGS_TIMEOUT_SECONDS"] <= 0 or (
            settings["EMBEDDINGS_BATCH_TIMEOUT_SECONDS"] <= 0
        ):
            raise ConfigError("EMBEDDINGS_TIMEOUT_SECONDS and EMBEDDINGS_BATCH_TIMEOUT_SECONDS "
                              "must be positive")  # fmt: skip
        if not 1 <= settings["EMBEDDINGS_BATCH"] <= 2048:
            raise ConfigError("EMBEDDINGS_BATCH must be between 1 and 2048")
        if settings["LOG_FORMAT"] not in {"json", "text"}:
            raise ConfigError("LOG_FORMAT must be 'json' or 'text'")
        rollover = [key.strip() for key in settings["JWT_SECRETS"].split(",") if key.strip()]
        if any(len(key.encode()) < 32 for key in rollover):
            raise ConfigError("every key in JWT_SECRETS must be at least 32 bytes")


class TestConfig(Config):
    """What the test suite starts from; tests override single keys."""

    CHATSVC_ENV = "testing"
    TESTING = True
    LOG_LEVEL = "WARNING"
    LOG_FORMAT = "json"
    # Most tests send many requests; the rate-limit tests enable limits explicitly.
    RATELIMIT_ENABLED = False
    # Most tests read a document right after posting it; the background-indexing tests
    # (test_ingest_background, test_linear_time's gunicorn) set the production threshold.
    INGEST_INLINE_BYTES = Config.MAX_DOCUMENT_BYTES


class ProductionConfig(Config):
    """Safe production defaults: everything that must be decided is refused when missing."""

    CHATSVC_ENV = "production"
    LOG_FORMAT = "json"
    AUTH_MODE = "required"
    ALLOW_ANONYMOUS_SESSIONS = False
    CORS_ORIGINS = ""  # a deployment names its frontends
    OVERLOAD_LAG_MS = 25.0  # half a 20-tokens-a-second stream's 50 ms cadence

    @classmethod
    def validate(cls, settings: Mapping[str, Any]) -> None:
        super().validate(settings)
        if not settings["DATABASE_URL"]:
            raise ConfigError("DATABASE_URL is required in production")


PROFILES: dict[str, type[Config]] = {
    "development": Config,
    "testing": TestConfig,
    "production": ProductionConfig,
}


def load(environ: Mapping[str, str] | None = None) -> dict[str, Any]:
    """Settings of the profile named by CHATSVC_ENV, read from the environment."""
    environ = os.environ if environ is None else environ
    name = environ.get("CHATSVC_ENV", "development")
    if name not in PROFILES:
        raise ConfigError(f"CHATSVC_ENV must be one of {', '.join(PROFILES)}")
    profile = PROFILES[name]
    settings = profile.from_env(environ)
    profile.validate(settings)
    return settings


def accepted_secrets(settings: Mapping[str, Any]) -> list[str]:
    """The HS256 keys a token may be signed with: JWT_SECRET (which signs new tokens) first,
    then JWT_SECRETS (the previous key while tokens signed with it are still in use)."""
    keys = [settings["JWT_SECRET"], *settings.get("JWT_SECRETS", "").split(",")]
    return list(dict.fromkeys(key.strip() for key in keys if key.strip()))


def _parse(name: str, raw: str, default: Any) -> Any:
    try:
        if isinstance(default, bool):
            if raw.strip().lower() not in {"1", "0", "true", "false", "yes", "no", "on", "off"}:
                raise ValueError(raw)
            return raw.strip().lower() in {"1", "true", "yes", "on"}
        if isinstance(default, int):
            return int(raw)
        if isinstance(default, float):
            return float(raw)
    except ValueError as exc:
        raise ConfigError(f"{name}: cannot read {raw!r} as {type(default).__name__}") from exc
    return raw


@dataclass(frozen=True)
class TurnSettings:
    """What the turn engine reads of the configuration, typed; services never see Flask."""

    history_limit: int
    history_max_tokens: int
    turn_stale_seconds: int
    turn_lease_seconds: float
    idempotency_ttl_seconds: int
    session_ttl_seconds: int
    conversation_ttl_seconds: int
    quota_tokens_per_day: int = 0  # 0: no quota (an admin's own cap for a user still applies)
    on_disconnect: str = "continue"  # TURN_ON_DISCONNECT
    events_ttl_seconds: int = 3600
    events_redis_url: str = ""
    events_store: str = "database"
    events_flush_ms: float = 10.0
    events_poll_seconds: float = 0.2
    events_store_wait_seconds: float = 10.0
    cancel_poll_seconds: float = 0.5  # how often a worker checks its turns' cancel flags
    max_streams_per_worker: int = 0  # 0: no limit
    overload_lag_ms: float = 0.0  # 0: the lag watch is off
    overload_retry_after_seconds: int = 1
    overload_retry_after_max_seconds: int = 30

    @classmethod
    def of(cls, config: Mapping[str, Any]) -> TurnSettings:
        return cls(
            history_limit=int(config["HISTORY_LIMIT"]),
            history_max_tokens=int(config["HISTORY_MAX_TOKENS"]),
            turn_stale_seconds=int(config["TURN_STALE_SECONDS"]),
            turn_lease_seconds=float(config["TURN_LEASE_SECONDS"]),
            idempotency_ttl_seconds=int(config["IDEMPOTENCY_TTL_SECONDS"]),
            session_ttl_seconds=int(config["SESSION_TTL_SECONDS"]),
            conversation_ttl_seconds=int(config["CONVERSATION_TTL_SECONDS"]),
            quota_tokens_per_day=int(config["QUOTA_TOKENS_PER_DAY"]),
            on_disconnect=str(config["TURN_ON_DISCONNECT"]),
            events_ttl_seconds=int(config["TURN_EVENTS_TTL_SECONDS"]),
            events_redis_url=str(config["EVENTS_REDIS_URL"]),
            events_store=str(config["TURN_EVENTS_STORE"]),
            events_flush_ms=float(config["TURN_EVENTS_FLUSH_MS"]),
            events_poll_seconds=float(config["TURN_EVENTS_POLL_SECONDS"]),
            events_store_wait_seconds=float(config["TURN_EVENTS_STORE_WAIT_SECONDS"]),
            cancel_poll_seconds=float(config["TURN_CANCEL_POLL_SECONDS"]),
            max_streams_per_worker=int(config["MAX_STREAMS_PER_WORKER"]),
            overload_lag_ms=float(config["OVERLOAD_LAG_MS"]),
            overload_retry_after_seconds=int(config["OVERLOAD_RETRY_AFTER_SECONDS"]),
            overload_retry_after_max_seconds=int(config["OVERLOAD_RETRY_AFTER_MAX_SECONDS"]),
        )

    def lifetimes(self) -> dict[str, int]:
        """The settings the conversation rules read (expiry, stuck turns), by their names."""
        return {
            "SESSION_TTL_SECONDS": self.session_ttl_seconds,
            "CONVERSATION_TTL_SECONDS": self.conversation_ttl_seconds,
            "TURN_STALE_SECONDS": self.turn_stale_seconds,
            "TURN_LEASE_SECONDS": self.turn_lease_seconds,
        }


DEV_SECRET_FILE = "jwt-secret.dev"


def development_secret(instance_path: str) -> str:
    """The development profile's JWT secret when none is configured: made once under the
    instance folder (0600) and read back by every later process — workers, `flask token
    create` — so a frontend that always sends a Bearer token works locally. Never used by
    the production profile."""
    path = os.path.join(instance_path, DEV_SECRET_FILE)
    if not os.path.exists(path):
        os.makedirs(instance_path, exist_ok=True)
        draft = f"{path}.{secrets.token_hex(8)}.tmp"
        descriptor = os.open(draft, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(descriptor, "w") as sink:
            sink.write(secrets.token_hex(32))
        try:
            # Atomic: of several processes starting at once, one wins; the others read its secret.
            with contextlib.suppress(FileExistsError):
                os.link(draft, path)
        finally:
            os.unlink(draft)
    with open(path) as source:
        return source.read().strip()
