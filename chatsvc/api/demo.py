"""The demo chat page: a frontend of the public API, served as static files."""

from __future__ import annotations

from typing import Any

from flask import Response, current_app
from marshmallow import Schema, fields

from . import Blueprint, problems

bp = Blueprint("demo", __name__, description="The demo chat page.")

PAGE = {"type": "string", "description": "The demo page (HTML)."}


class DemoArgsSchema(Schema):
    api = fields.String(
        metadata={"description": "The API's origin when it is not the page's (read by the page)."}
    )


@bp.get("/demo")
@bp.arguments(DemoArgsSchema, location="query")
@bp.response(200, PAGE, content_type="text/html")
@problems(bp, 422)
def page(args: dict[str, Any]) -> Response:
    """The demo chat page: pick a user or a session, chat, watch tool calls and citations."""
    response = current_app.send_static_file("demo/index.html")
    response.cache_control.no_cache = True
    return response
