"""The demo chat page: a frontend of the public API, served as static files."""

from __future__ import annotations

from flask import Response, current_app
from flask_smorest import Blueprint

bp = Blueprint("demo", __name__, description="The demo chat page.")

PAGE = {"type": "string", "description": "The demo page (HTML)."}


@bp.get("/demo")
@bp.response(200, PAGE, content_type="text/html")
def page() -> Response:
    """The demo chat page: pick a user or a session, chat, watch tool calls and citations."""
    response = current_app.send_static_file("demo/index.html")
    response.cache_control.no_cache = True
    return response
