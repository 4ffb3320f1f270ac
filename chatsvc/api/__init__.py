"""One blueprint per resource. Views are thin: load, call a service, return."""

from __future__ import annotations

from collections.abc import Callable
from functools import cache, wraps
from http import HTTPStatus
from typing import Any

import flask_smorest
from flask import Flask, Response, current_app, request
from marshmallow import Schema
from webargs.flaskparser import FlaskParser

from .. import auth
from ..errors import PROBLEM_JSON, ApiError, NotFound, Overloaded, ValidationFailed, problem
from ..schemas import ProblemSchema, StrictJSONProvider


class _Parser(FlaskParser):
    """webargs builds a schema given as a class anew for every request: a chat turn's two
    (body, headers) cost about 0.5 ms of CPU a turn that way (profiled). Schemas keep no state
    between loads, so each class is built once per process."""

    def _get_schema(self, argmap: Any, req: Any) -> Schema:
        if isinstance(argmap, type) and issubclass(argmap, Schema):
            return _schema(argmap)
        return super()._get_schema(argmap, req)


@cache
def _schema(cls: type[Schema]) -> Schema:
    return cls()


class Blueprint(flask_smorest.Blueprint):
    """flask-smorest's blueprint, parsing with schemas built once (_Parser)."""

    ARGUMENTS_PARSER = _Parser()

    def alt_response(self, status_code: Any, response: Any = None, **kwargs: Any) -> Any:
        """Documents the response as flask-smorest does, on the view itself: flask-smorest
        wraps the view in a function that only calls it, one call layer per documented
        status (14 on a chat turn's way). Views here are plain functions, each decorated
        once."""
        document = super().alt_response(status_code, response, **kwargs)

        def decorate(view: Any) -> Any:
            view._apidoc = document(view)._apidoc
            return view

        return decorate


# What a turn route's 503 means (contract §1), and the header a client retries by.
TURN_UNAVAILABLE = {
    "description": "Service Unavailable: `overloaded` (this server takes no new turn now, so "
    "that the answers it streams keep their pace: retry after `Retry-After` seconds), "
    "`upstream_busy` (the model provider is busy) or `unavailable` (the database is).",
    "headers": {
        "Retry-After": {
            "description": "Seconds to wait before sending the request again.",
            "schema": {"type": "integer", "minimum": 0},
        }
    },
}
TURN_DOCS = {503: TURN_UNAVAILABLE}


def problems(
    bp: Blueprint, *statuses: int, docs: dict[int, dict[str, Any]] | None = None
) -> Callable[[Any], Any]:
    """Document the problem responses an operation can return (`docs`: a status's own
    description and headers, where its phrase says too little)."""

    def decorate(view: Any) -> Any:
        for status in statuses:
            own = {"description": HTTPStatus(status).phrase, **(docs or {}).get(status, {})}
            view = bp.alt_response(status, schema=ProblemSchema, content_type=PROBLEM_JSON, **own)(
                view
            )
        return view

    return decorate


class UnsupportedMediaType(ApiError):
    status, code, detail = 415, "unsupported_media_type", "Send the body as application/json."


class MalformedJson(ApiError):
    status, code, detail = 400, "bad_request", "The request body is not valid JSON."


def _query_names(schema: type[Schema] | Schema) -> set[str]:
    instance = schema() if isinstance(schema, type) else schema
    return {field.data_key or name for name, field in instance.fields.items()}


@cache
def _documented_query(view: Any) -> frozenset[str] | None:
    """The query parameters a view declares (its `@bp.arguments(..., location="query")`
    schemas), or None for views outside the API document (assets)."""
    doc = getattr(view, "_apidoc", None)
    if doc is None:
        return None
    names: set[str] = set()
    for parameter in doc.get("arguments", {}).get("parameters", []):
        if parameter["in"] == "query":
            names |= _query_names(parameter["schema"])
    return frozenset(names)


def body_limit(setting: str) -> Callable[[Any], Any]:
    """Let a view accept bodies up to the config value `setting` instead of
    MAX_CONTENT_LENGTH. Put it right under the route decorator."""

    def decorate(view: Any) -> Any:
        view.body_limit = setting
        return view

    return decorate


def admits_turns(view: Any) -> Any:
    """Mark a view that starts turns: while this worker admits no new turn, its request is
    refused before it is read (`_refuse_early`). Put it right under the route decorator."""
    view.admits_turns = True
    return view


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
    app.json = StrictJSONProvider(app)
    app.before_request(auth.check_early)  # the token first, and before the body
    app.before_request(_refuse_early)  # a worker that admits no turn: before the body too
    app.before_request(_known_path_and_query)
    app.before_request(_require_json)


def _refuse_early() -> Response | None:
    """503 `overloaded` for a new turn this worker would not admit (services/admission.py),
    before its query, body and headers are parsed or the database is asked: a refusal beyond
    capacity then costs a fraction of a turn's request (bench/RESULTS.md, "Refusals"). It has
    been counted by the rate limiter and its caller checked (401/403) already; CORS, the
    request id and the access line are added after, as for any response. A request with an
    `Idempotency-Key` goes on: it may be the retry of a stored turn, whose replay it must get
    (the engine looks it up before it asks for a place)."""
    if request.method != "POST" or "Idempotency-Key" in request.headers:
        return None
    if not getattr(current_app.view_functions.get(request.endpoint), "admits_turns", False):
        return None
    try:
        current_app.extensions["chatsvc.turns"].admission.check()
    except Overloaded as refusal:  # answered here: Flask's exception handling costs more
        return problem(refusal.status, refusal.code, refusal.detail, headers=refusal.headers)
    return None


def _known_path_and_query() -> None:
    """A path id no service could have made (a NUL byte, a control character: PostgreSQL
    refuses NUL outright) is unknown: 404. A query parameter the route does not document is
    422, naming it: a filter silently ignored would be a lie."""
    req = request._get_current_object()  # the proxy, looked through once (speedups.py)
    if req.url_rule is None:
        return
    for value in (req.view_args or {}).values():
        if isinstance(value, str) and not value.isprintable() and req.path.startswith("/api/"):
            raise NotFound("The resource does not exist.")
    known = _documented_query(current_app.view_functions.get(req.endpoint))
    if known is None or req.method == "OPTIONS":
        return
    errors = {name: ["Unknown query parameter."] for name in req.args if name not in known}
    if errors:
        raise ValidationFailed(
            " ".join(f"{name}: {problems[0]}" for name, problems in sorted(errors.items())),
            errors={"query": errors},
        )


def _require_json() -> None:
    """A body that is not JSON is refused before any schema sees it (on a route that exists:
    unknown routes stay 404, wrong methods 405)."""
    req = request._get_current_object()  # the proxy, looked through once (speedups.py)
    if not (
        req.method in {"POST", "PUT", "PATCH"}
        and req.url_rule is not None
        and req.path.startswith(("/api/", "/v1/"))
        and (req.content_length or req.headers.get("Transfer-Encoding"))
    ):
        return
    app = current_app._get_current_object()
    setting = getattr(app.view_functions.get(req.endpoint), "body_limit", None)
    if setting is not None:
        req.max_content_length = app.config[setting]
    if not req.is_json:
        raise UnsupportedMediaType()
    # Strict JSON first: NaN, Infinity, numbers out of range and deep nesting are refused
    # here (webargs then parses the cached body again with the standard decoder).
    try:
        app.json.loads(req.get_data(cache=True))
    except UnicodeDecodeError:
        raise MalformedJson("The request body is not valid UTF-8.") from None
    except ValueError as exc:
        raise MalformedJson(f"The request body is not valid JSON: {exc.args[0]}") from None
    except RecursionError:  # nested deeper than the decoder goes: malformed, not a crash
        raise MalformedJson() from None
