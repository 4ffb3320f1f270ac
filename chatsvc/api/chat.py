"""Chat turns: the Todo assistant (user-scoped) and knowledge sessions."""

from __future__ import annotations

from typing import Any

from flask import current_app
from flask_smorest import Blueprint

from .. import auth, db
from ..agent import current_agent, toolbox
from ..observability import record_timings
from ..schemas import SessionChatSchema, TurnSchema, UserChatSchema
from ..services import turns
from ..services.conversations import SESSION, USER, Access
from . import problems, streaming

bp = Blueprint("chat", __name__, url_prefix="/api", description="Chat turns.")

TURN_ERRORS = (400, 401, 403, 404, 409, 413, 415, 422, 429, 500, 502, 503, 504)
STREAM_DOC = {"text/event-stream": {"schema": {"type": "string"}}}


@bp.post("/<user_id>/chat")
@bp.arguments(UserChatSchema)
@bp.response(200, TurnSchema)
@problems(bp, *TURN_ERRORS)
def chat_as_user(body: dict[str, Any], user_id: str) -> Any:
    """Send a message to the Todo assistant, in a new or an existing conversation."""
    access = auth.user_access(user_id)
    return _turn(access, USER, body["message"], body["conversation_id"])


@bp.post("/chat")
@bp.arguments(SessionChatSchema)
@bp.response(200, TurnSchema)
@problems(bp, *TURN_ERRORS)
def start_session(body: dict[str, Any]) -> Any:
    """Start a knowledge session with its first message."""
    return _turn(auth.session_access(), SESSION, body["message"])


@bp.post("/chat/<session_id>")
@bp.arguments(SessionChatSchema)
@bp.response(200, TurnSchema)
@problems(bp, *TURN_ERRORS, 410)
def continue_session(body: dict[str, Any], session_id: str) -> Any:
    """Send the next message of a knowledge session."""
    return _turn(auth.session_access(), SESSION, body["message"], session_id)


def _turn(access: Access, kind: str, message: str, conversation_id: str | None = None) -> Any:
    pending = turns.begin(
        db.session(), current_app.config, access=access, kind=kind,
        message=message, conversation_id=conversation_id,
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
