"""Swagger UI at /docs, from the assets installed with flask-swagger-ui: no CDN, no inline
script, so it renders under the Content-Security-Policy that allows only this origin."""

from __future__ import annotations

import json
import os

import flask_swagger_ui
from flask import Blueprint, Response, send_from_directory, url_for
from markupsafe import escape

ASSETS = os.path.join(os.path.dirname(flask_swagger_ui.__file__), "dist")

# Assets only; the page itself is documented in /openapi.json by the meta blueprint.
bp = Blueprint("docs", __name__, url_prefix="/docs")

PAGE = """<!doctype html>
<html lang="en">
<head><meta charset="utf-8"><title>chatsvc API</title>
<link rel="stylesheet" href="{css}"></head>
<body><div id="swagger-ui"></div>
<script src="{bundle}"></script>
<script src="{init}"></script>
</body>
</html>
"""

# URLs carry SCRIPT_NAME, which a proxy (or a client gunicorn trusts) sets: escaped for HTML
# in the page, serialised as a JSON string in the script, never pasted in as it came.
INIT = 'window.ui = SwaggerUIBundle({url: %s, dom_id: "#swagger-ui", deepLinking: true});\n'


def _js_string(text: str) -> str:
    """A JavaScript string literal that cannot close a <script> element either."""
    return json.dumps(text).replace("<", "\\u003c").replace(">", "\\u003e")


def page() -> Response:
    html = PAGE.format(
        css=escape(url_for("docs.asset", filename="swagger-ui.css")),
        bundle=escape(url_for("docs.asset", filename="swagger-ui-bundle.js")),
        init=escape(url_for("docs.init_script")),
    )
    return Response(html, mimetype="text/html")


@bp.get("/assets/<path:filename>")
def asset(filename: str) -> Response:
    """A Swagger UI asset."""
    return send_from_directory(ASSETS, filename, max_age=86400)


@bp.get("/init.js")
def init_script() -> Response:
    """Points Swagger UI at this service's OpenAPI document."""
    return Response(INIT % _js_string(url_for("api-docs.openapi_json")), mimetype="text/javascript")
