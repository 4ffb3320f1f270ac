"""Every error the service answers with is an RFC 9457 problem body built here."""

from __future__ import annotations

import logging
import traceback
from http import HTTPStatus
from typing import Any

from flask import Flask, Response, g, json
from sqlalchemy.exc import DBAPIError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeout
from werkzeug.exceptions import HTTPException

from .observability import keep_retry_after

log = logging.getLogger(__name__)

PROBLEM_JSON = "application/problem+json"

# Werkzeug's status codes → the contract's stable codes.
CODES = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    408: "request_timeout",
    409: "conflict",
    410: "gone",
    413: "payload_too_large",
    414: "uri_too_long",
    415: "unsupported_media_type",
    422: "validation_error",
    429: "rate_limited",
    431: "headers_too_large",
    500: "internal_error",
    502: "upstream_error",
    503: "unavailable",
    504: "upstream_timeout",
}


class ApiError(Exception):
    """A domain error with its status, stable code and a message safe to show."""

    status = 500
    code = "internal_error"
    detail = "The server failed to answer this request."

    def __init__(
        self,
        detail: str | None = None,
        *,
        headers: dict[str, str] | None = None,
        **extra: Any,
    ) -> None:
        super().__init__(detail or self.detail)
        self.detail = detail or self.detail
        self.headers = headers or {}
        self.extra = extra


class NotFound(ApiError):
    status, code, detail = 404, "not_found", "The resource does not exist."


class SessionExpired(ApiError):
    status, code, detail = 410, "session_expired", "The session has expired."


class TurnInProgress(ApiError):
    status, code = 409, "turn_in_progress"
    detail = "A turn is already running on this conversation; retry when it has finished."


class TurnFinished(ApiError):
    status, code, detail = 409, "turn_finished", "This turn has already finished."


class ValidationFailed(ApiError):
    status, code, detail = 422, "validation_error", "The request is not valid."


class IdempotencyMismatch(ApiError):
    status, code = 422, "idempotency_mismatch"
    detail = "This Idempotency-Key was used with a different request body."


class Unauthorized(ApiError):
    status, code, detail = 401, "unauthorized", "A valid bearer token is required."


class Forbidden(ApiError):
    status, code, detail = 403, "forbidden", "The token does not allow this."


class Unavailable(ApiError):
    status, code, detail = 503, "unavailable", "A dependency is unavailable; retry later."


# When to retry a request that met a lost database: soon (a blip, a failover), not after
# some other window (the rate limiter's).
DATABASE_RETRY_AFTER = "2"


def database_unavailable(error: BaseException) -> Unavailable | None:
    """The contract's 503 for an error that means the database went away (a refused or broken
    connection, an exhausted pool), wherever it happened — a view, a stream, a worker; None for
    any other error."""
    lost = isinstance(error, OperationalError | PoolTimeout) or (
        isinstance(error, DBAPIError) and error.connection_invalidated
    )
    if not lost:
        return None
    return Unavailable(
        "The database is unavailable; retry later.", headers={"Retry-After": DATABASE_RETRY_AFTER}
    )


class UpstreamFailure(ApiError):
    """The language model failed to answer: 502 `upstream_error`, 503 `upstream_busy` (with the
    provider's Retry-After, when it sent one) or 504 `upstream_timeout`."""

    STATUSES = {"upstream_error": 502, "upstream_busy": 503, "upstream_timeout": 504}

    def __init__(self, code: str, detail: str, *, retry_after: int | None = None) -> None:
        headers = {"Retry-After": str(retry_after)} if retry_after else None
        super().__init__(detail, headers=headers)
        self.code = code if code in self.STATUSES else "upstream_error"
        self.status = self.STATUSES[self.code]


class Overloaded(ApiError):
    """A new turn refused so that the turns this worker already streams keep their cadence."""

    status, code = 503, "overloaded"
    DETAILS = {
        "streams": "This server is streaming as many answers as it takes at once",
        "lag": "This server is too busy to take another answer without slowing the others",
        "window": "This server is taking new answers gradually to keep the ones it streams on time",
    }

    def __init__(self, reason: str, retry_after: int) -> None:
        super().__init__(
            f"{self.DETAILS[reason]}; retry after Retry-After seconds.",
            headers={"Retry-After": str(retry_after)},
        )


class TurnInterrupted(ApiError):
    status, code = 503, "interrupted"
    detail = (
        "The turn was interrupted: the worker running it stopped. Send the message again "
        "(with the same Idempotency-Key) to retry it."
    )


def stored_failure(code: str | None) -> ApiError:
    """The problem a failed turn's stored error code stands for: the `error` event a resumed
    stream ends with when the turn's own was never logged."""
    if code == TurnInterrupted.code:
        return TurnInterrupted()
    if code in UpstreamFailure.STATUSES:
        return UpstreamFailure(code, "The language model failed to answer.")
    if code == Unavailable.code:
        return Unavailable("The database is unavailable; retry later.")
    return ApiError()


def problem(
    status: int,
    code: str,
    detail: str,
    *,
    headers: dict[str, str] | None = None,
    **extra: Any,
) -> Response:
    """The one problem response builder. A Retry-After given here is the response's own: the
    rate limiter's header injection does not replace it, nor add one where none is given."""
    body = problem_body(status, code, detail, **extra)
    response = Response(json.dumps(body), status=status, mimetype=PROBLEM_JSON)
    response.headers.update(headers or {})
    keep_retry_after(response.headers.get("Retry-After"))
    return response


def problem_body(status: int, code: str, detail: str, **extra: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "type": "about:blank",
        "title": HTTPStatus(status).phrase,
        "status": status,
        "code": code,
        "detail": detail,
        "request_id": g.get("request_id"),
    }
    body.update(extra)
    return body


def register(app: Flask) -> None:
    """Register after flask-smorest so these handlers replace its own."""
    app.register_error_handler(ApiError, _api_error)
    app.register_error_handler(HTTPException, _http_exception)
    app.register_error_handler(OperationalError, _database_unavailable)
    app.register_error_handler(PoolTimeout, _database_unavailable)
    app.register_error_handler(DBAPIError, _database_error)
    app.register_error_handler(Exception, _unexpected)


def _api_error(error: ApiError) -> Response:
    return problem(error.status, error.code, error.detail, headers=error.headers, **error.extra)


def _http_exception(error: HTTPException) -> Response:
    status = error.code or 500
    headers: dict[str, str] = {}
    extra: dict[str, Any] = {}
    detail = error.description or HTTPStatus(status).description
    messages = getattr(error, "data", {}).get("messages")
    if status == 422 and messages:
        extra["errors"] = messages
        detail = _summarise(messages)
    if status == 400 and messages:
        detail = "The request body is not valid JSON."
    if status == 405 and getattr(error, "valid_methods", None):
        headers["Allow"] = ", ".join(sorted(error.valid_methods))
    if status == 413:
        detail = "The request body is larger than this endpoint accepts."
    if status == 408:
        detail = "The request body did not arrive in time."
    if status == 429:
        # flask-limiter adds Retry-After and the X-RateLimit-* headers after this handler.
        detail = f"Too many requests (limit: {error.description}); retry after Retry-After seconds."
    return problem(status, CODES.get(status, "error"), detail, headers=headers, **extra)


def _database_unavailable(error: Exception) -> Response:
    log.error("database unavailable: %s", type(error).__name__)
    return problem(
        503, "unavailable", "The database is unavailable; retry later.",
        headers={"Retry-After": DATABASE_RETRY_AFTER},
    )  # fmt: skip


def _database_error(error: DBAPIError) -> Response:
    if error.connection_invalidated:
        return _database_unavailable(error)
    return _unexpected(error)


def _unexpected(error: Exception) -> Response:
    log_failure("unhandled error", error)
    return problem(500, "internal_error", ApiError.detail)


def log_failure(message: str, error: BaseException) -> None:
    """Log an unexpected error with its traceback. A database error's text quotes the values of
    its statement (and PostgreSQL's DETAIL the row): user text, so only where it failed goes."""
    if not isinstance(error, DBAPIError):
        log.error(message, exc_info=error)
        return
    origin = error.orig
    log.error(
        "%s: %s (SQLSTATE %s)\n%s", message, type(origin).__name__,
        getattr(origin, "sqlstate", None) or "-", "".join(traceback.format_tb(error.__traceback__)),
    )  # fmt: skip


def _summarise(messages: dict[str, Any]) -> str:
    """'field: first message' for each invalid field, e.g. for a log line or a toast."""
    parts: list[str] = []
    for fields in messages.values():
        if not isinstance(fields, dict):
            continue
        for field, errors in fields.items():
            first = errors[0] if isinstance(errors, list) and errors else errors
            parts.append(f"{field}: {first}" if isinstance(first, str) else f"{field}: invalid")
    return " ".join(parts) or "The request is not valid."
