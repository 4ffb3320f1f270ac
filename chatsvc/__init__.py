"""chatsvc: a chat API backed by an LLM agent."""

from __future__ import annotations

import os
from typing import Any

from flask import Flask
from flask_smorest import Api

from . import api as rest
from . import cli, db, errors, extensions, observability, schemas, speedups, tracing
from . import config as settings
from .agent import build_agent
from .agent.base import Agent
from .api import docs, sse, websocket
from .extensions import migrate
from .services import embeddings
from .services.admission import Admission, Metrics
from .services.events import EventLog
from .services.turns import TurnEngine

__version__ = "0.1.0"

# Beside the package in a checkout (or an editable install); else the working directory's
# (the container's /app), since a wheel does not carry them.
_CHECKOUT = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "migrations")
MIGRATIONS = _CHECKOUT if os.path.isdir(_CHECKOUT) else os.path.join(os.getcwd(), "migrations")


def create_app(config: dict[str, Any] | None = None, *, agent: Agent | None = None) -> Flask:
    """The only wiring point. `config` overrides the environment's settings (tests use it)."""
    app = speedups.App(__name__, instance_relative_config=True)
    app.config.update(settings.load())
    app.config.update(config or {})
    app.config.update(_openapi_settings())
    settings.PROFILES[app.config["CHATSVC_ENV"]].validate(app.config)
    if app.config["CHATSVC_ENV"] == "development" and not app.config["JWT_SECRET"]:
        app.config["JWT_SECRET"] = settings.development_secret(app.instance_path)

    observability.init_app(app)
    extensions.init_app(app)  # proxies, rate limits, CORS: after request ids, before the views
    db.init_app(app)
    observability.watch_pool(db.database(app).engine)
    # OpenTelemetry, when OTEL_* asks for it (TRACER_PROVIDER: a provider handed in by tests)
    tracing.init_app(app, app.config.get("TRACER_PROVIDER"))
    migrate.init_app(app, db.database(app), directory=MIGRATIONS)
    turn_settings = settings.TurnSettings.of(app.config)
    app.extensions["chatsvc.turns"] = TurnEngine(
        db.database(app),
        agent or build_agent(app.config),
        turn_settings,
        observe=observability.record_turn,
        events=EventLog.open(turn_settings, db.database(app)),
        render=sse.named_event,
        admission=Admission(
            turn_settings.max_streams_per_worker, turn_settings.overload_lag_ms,
            turn_settings.overload_retry_after_seconds,
            Metrics(
                refused=observability.record_refusal,
                in_flight=observability.TURNS_IN_FLIGHT.inc,
                lag=observability.EVENT_LOOP_LAG.set,
                window=observability.ADMISSION_WINDOW.set,
            ),
            retry_after_max=turn_settings.overload_retry_after_max_seconds,
        ),
    )  # fmt: skip
    _open_vectors(app)
    rest.init_app(app)
    api = Api(app)  # flask-smorest keeps one spec per Api: one Api per app
    schemas.document_running_limits(api, app.config)
    _register_blueprints(api)
    websocket.init_app(app, api)
    app.register_blueprint(docs.bp)
    errors.register(app)
    cli.init_app(app)
    return app


def close_app(app: Flask, *, drain_seconds: float = 0.0) -> None:
    """Release what the app holds: a worker exits. The turns still running here (background
    ones, streams whose reader has gone) get `drain_seconds` to finish, then are stored
    `failed` (interrupted); then the agent's clients and sockets, the event log's batch and the
    pool are closed."""
    engine = app.extensions["chatsvc.turns"]
    engine.drain(drain_seconds)
    engine.agent.close()
    engine.events.close()  # stores the events still waiting for their batch
    embeddings.close(db.database(app))
    db.database(app).engine.dispose()


def _open_vectors(app: Flask) -> None:
    """Hybrid retrieval when an embeddings endpoint is configured (services/embeddings.py)."""
    config = app.config
    if not config["EMBEDDINGS_BASE_URL"]:
        return
    from .agent.embeddings import OpenAIEmbeddings

    embeddings.open_index(
        db.database(app),
        OpenAIEmbeddings.from_config(config),
        embeddings.VectorSettings(
            query_timeout=float(config["EMBEDDINGS_TIMEOUT_SECONDS"]),
            batch_timeout=float(config["EMBEDDINGS_BATCH_TIMEOUT_SECONDS"]),
            batch_size=int(config["EMBEDDINGS_BATCH"]),
        ),
        observability.record_embeddings_failure,
    )


def _register_blueprints(api: Api) -> None:
    from .api import chat, conversations, demo, documents, meta, sessions, tasks, usage, v1

    for module in (meta, chat, sessions, conversations, tasks, usage, documents, demo, v1):
        api.register_blueprint(module.bp)


def _openapi_settings() -> dict[str, Any]:
    return {
        "API_TITLE": "chatsvc",
        "API_VERSION": __version__,
        "OPENAPI_VERSION": "3.0.3",
        "OPENAPI_URL_PREFIX": "/",
        "OPENAPI_JSON_PATH": "openapi.json",
    }
