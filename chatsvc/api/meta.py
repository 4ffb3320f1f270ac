"""Service endpoints: index and health probes."""

from __future__ import annotations

import hmac
from typing import Any

from flask import Response, current_app, request, url_for
from marshmallow import Schema, fields
from prometheus_client import CONTENT_TYPE_LATEST
from sqlalchemy.exc import SQLAlchemyError

from .. import __version__, db, observability
from ..errors import Unauthorized, Unavailable
from . import Blueprint, docs, problems

bp = Blueprint("meta", __name__, description="Service endpoints.")


class IndexSchema(Schema):
    name = fields.String(required=True)
    version = fields.String(required=True)
    links = fields.Dict(keys=fields.String(), values=fields.String(), required=True)


class HealthSchema(Schema):
    status = fields.String(required=True)
    checks = fields.Dict(keys=fields.String(), values=fields.String(), required=True)


@bp.get("/")
@bp.response(200, IndexSchema)
@problems(bp, 422)
def index() -> dict[str, Any]:
    """The service's name, version and where its documentation lives."""
    return {
        "name": "chatsvc",
        "version": __version__,
        "links": {
            "openapi": url_for("api-docs.openapi_json"),
            "docs": url_for("meta.swagger_ui"),
            "health": url_for("meta.health"),
            "metrics": url_for("meta.metrics"),
        },
    }


@bp.get("/health")
@bp.response(200, HealthSchema)
@problems(bp, 422, 503)
def health() -> dict[str, Any]:
    """Ready: the database answers."""
    try:
        db.database().ping()
    except SQLAlchemyError:
        raise Unavailable(
            "The database is unavailable.", checks={"database": "unavailable"}
        ) from None
    return {"status": "ok", "checks": {"database": "ok"}}


@bp.get("/health/live")
@bp.response(200, HealthSchema)
@problems(bp, 422)
def live() -> dict[str, Any]:
    """Live: the process serves requests."""
    return {"status": "ok", "checks": {}}


def _text(content_type: str, description: str) -> dict[str, Any]:
    return {
        "responses": {
            "200": {"description": description, "content": {content_type: {"schema": {}}}}
        }
    }


@bp.get("/metrics")
@bp.doc(**_text("text/plain", "Prometheus text exposition format."))
@problems(bp, 401, 422)
def metrics() -> Response:
    """Prometheus metrics: requests, latency, agent time, tokens, tool calls, rate limiting."""
    _require_metrics_token()
    return Response(observability.metrics_text(), content_type=CONTENT_TYPE_LATEST)


def _require_metrics_token() -> None:
    """With METRICS_TOKEN set, a scrape must send it as a bearer token (compared in constant
    time); without it /metrics is open, for a scraper on a private network."""
    expected = current_app.config["METRICS_TOKEN"]
    if not expected:
        return
    scheme, _, sent = request.headers.get("Authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not hmac.compare_digest(
        sent.strip().encode(), expected.encode()
    ):
        raise Unauthorized("/metrics needs the METRICS_TOKEN as a bearer token.")


@bp.get("/docs")
@bp.doc(**_text("text/html", "Swagger UI for /openapi.json."))
@problems(bp, 422)
def swagger_ui() -> Response:
    """Interactive API documentation (Swagger UI), served from local assets."""
    return docs.page()
