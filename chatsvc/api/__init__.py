"""One blueprint per resource. Views are thin: load, call a service, return."""

from __future__ import annotations

from collections.abc import Callable
from functools import wraps
from http import HTTPStatus
from typing import Any

from flask import Flask, Response, current_app, request
from flask_smorest import Blueprint

from ..errors import PROBLEM_JSON, ApiError
from ..schemas import ProblemSchema


def problems(bp: Blueprint, *statuses: int) -> Callable[[Any], Any]:
    """Document the problem responses an operation can return."""

    def decorate(view: Any) -> Any:
        for status in statuses:
            view = bp.alt_response(
                status,
                schema=ProblemSchema,
                content_type=PROBLEM_JSON,
                description=HTTPStatus(status).phrase,
            )(view)
        return view

    return decorate


class UnsupportedMediaType(ApiError):
    status, code, detail = 415, "unsupported_media_type", "Send the body as application/json."


class MalformedJson(ApiError):
    status, code, detail = 400, "bad_request", "The request body is not valid JSON."


def body_limit(setting: str) -> Callable[[Any], Any]:
    """Let a view accept bodies up to the config value `setting` instead of
    MAX_CONTENT_LENGTH. Put it right under the route decorator."""

    def decorate(view: Any) -> Any:
        view.body_limit = setting
        return view

    return decorate


def cached(bp: Blueprint) -> Callable[[Any], Any]:
    """An `ETag` (a hash of the body, so it changes exactly when what the response shows
    changes) and `Cache-Control: private, no-cache`; `If-None-Match` with the current tag
    → 304 without a body. Put it above `@bp.response`."""

    def decorate(view: Any) -> Any:
        @wraps(view)
        def conditional(*args: Any, **kwargs: Any) -> Response:
            response = view(*args, **kwargs)
            response.headers["Cache-Control"] = "private, no-cache"
            response.add_etag()
            return response.make_conditional(request)

        return bp.alt_response(
            304, description="Not Modified: the `If-None-Match` tag is current."
        )(conditional)

    return decorate


def init_app(app: Flask) -> None:
    app.before_request(_require_json)


def _require_json() -> None:
    """A body that is not JSON is refused before any schema sees it (on a route that exists:
    unknown routes stay 404, wrong methods 405)."""
    if not (
        request.method in {"POST", "PUT", "PATCH"}
        and request.url_rule is not None
        and request.path.startswith("/api/")
        and (request.content_length or request.headers.get("Transfer-Encoding"))
    ):
        return
    setting = getattr(current_app.view_functions.get(request.endpoint), "body_limit", None)
    if setting is not None:
        request.max_content_length = current_app.config[setting]
    if not request.is_json:
        raise UnsupportedMediaType()
    try:
        request.get_json(silent=True)  # webargs reads the body again, from the cache
    except RecursionError:  # nested deeper than the decoder goes: malformed, not a crash
        raise MalformedJson() from None
