"""Service endpoints: index and health probes."""

from __future__ import annotations

from typing import Any

from flask import url_for
from flask_smorest import Blueprint
from marshmallow import Schema, fields
from sqlalchemy.exc import SQLAlchemyError

from .. import __version__, db
from ..errors import Unavailable
from . import problems

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
def index() -> dict[str, Any]:
    """The service's name, version and where its documentation lives."""
    return {
        "name": "chatsvc",
        "version": __version__,
        "links": {
            "openapi": url_for("api-docs.openapi_json"),
            "health": url_for("meta.health"),
        },
    }


@bp.get("/health")
@bp.response(200, HealthSchema)
@problems(bp, 503)
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
def live() -> dict[str, Any]:
    """Live: the process serves requests."""
    return {"status": "ok", "checks": {}}
