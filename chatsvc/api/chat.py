"""Chat turns: the Todo assistant (user-scoped) and knowledge sessions."""

from __future__ import annotations

from typing import Any

from flask import current_app, jsonify, request
from flask_smorest import Blueprint

from .. import auth, db
from ..agent import current_agent, toolbox
from ..observability import record_timings
from ..schemas import IdempotencyHeadersSchema, SessionChatSchema, TurnSchema, UserChatSchema
from ..services import idempotency, turns
from ..services.conversations import SESSION, USER, Access
from . import problems, streaming

bp = Blueprint("chat", __name__, url_prefix="/api", description="Chat turns.")

TURN_ERRORS = (400, 401, 403, 404, 409, 413, 415, 422, 429, 500, 502, 503, 504)
REPLAYED = {"Idempotent-Replayed": "true"}


@bp.post("/<user_id>/chat")
@bp.arguments(UserChatSchema)
@bp.arguments(IdempotencyHeadersSchema, location="headers")
@bp.response(200, TurnSchema)
@problems(bp, *TURN_ERRORS)
def chat_as_user(body: dict[str, Any], headers: dict[str, Any], user_id: str) -> Any:
    """Send a message to the Todo assistant, in a new or an existing conversation."""
    access = auth.user_access(user_id)
    return _turn(access, USER, body, headers["idempotency_key"], body["conversation_id"])


@bp.post("/chat")
@bp.arguments(SessionChatSchema)
@bp.arguments(IdempotencyHeadersSchema, location="headers")
@bp.response(200, TurnSchema)
@problems(bp, *TURN_ERRORS)
def start_session(body: dict[str, Any], headers: dict[str, Any]) -> Any:
    """Start a knowledge session with its first message."""
    return _turn(auth.session_access(), SESSION, body, headers["idempotency_key"])


@bp.post("/chat/<session_id>")
@bp.arguments(SessionChatSchema)
@bp.arguments(IdempotencyHeadersSchema, location="headers")
@bp.response(200, TurnSchema)
@problems(bp, *TURN_ERRORS, 410)
def continue_session(body: dict[str, Any], headers: dict[str, Any], session_id: str) -> Any:
    """Send the next message of a knowledge session."""
    return _turn(auth.session_access(), SESSION, body, headers["idempotency_key"], session_id)


def _turn(
    access: Access, kind: str, body: dict[str, Any], key: str | None,
    conversation_id: str | None = None,
) -> Any:  # fmt: skip
    attempt = _attempt(key, body)
    if attempt is not None:
        replay = idempotency.look_up(db.session(), attempt)
        if replay is not None:
            return _replay(replay)
    pending = turns.begin(
        db.session(), current_app.config, access=access, kind=kind,
        message=body["message"], conversation_id=conversation_id, attempt=attempt,
    )  # fmt: skip
    agent = current_agent()
    tools = toolbox(db.database().sessions, pending.turn.user_id)
    if streaming.wants_stream():
        return streaming.respond(
            lambda session: turns.stream(session, agent, tools, pending), pending
        )
    result = turns.run(db.session(), agent, tools, pending)
    record_timings(pending.timings)
    return result.body()


def _attempt(key: str | None, body: dict[str, Any]) -> idempotency.Attempt | None:
    if key is None:
        return None
    config = current_app.config
    return idempotency.Attempt.of(
        auth.caller_key(), request.path, key, body,
        config["IDEMPOTENCY_TTL_SECONDS"], config["TURN_STALE_SECONDS"],
    )  # fmt: skip


def _replay(body: dict[str, Any]) -> Any:
    """The first attempt's response again, in the format asked for this time."""
    if streaming.wants_stream():
        return streaming.replay(body, headers=REPLAYED)
    response = jsonify(body)
    response.headers.update(REPLAYED)
    return response
