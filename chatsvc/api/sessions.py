"""Knowledge sessions: state and reset."""

from __future__ import annotations

from typing import Any

from flask import Response, current_app

from .. import auth, db
from ..models import Conversation, Message
from ..schemas import (
    EventsArgsSchema,
    EventsHeadersSchema,
    HistoryArgsSchema,
    MessageSchema,
    SessionStateSchema,
)
from ..services import conversations
from . import Blueprint, cached, problems, sse

bp = Blueprint("sessions", __name__, url_prefix="/api/session", description="Knowledge sessions.")


@bp.get("/<session_id>")
@bp.arguments(HistoryArgsSchema, location="query")
@cached(bp)
@bp.response(200, SessionStateSchema)
@problems(bp, 401, 404, 410, 422, 429)
def get_session(args: dict[str, Any], session_id: str) -> dict[str, Any]:
    """A session's state with its newest messages, oldest first."""
    found = conversations.get(db.session(), session_id, auth.session_access())
    return _state(found, args["limit"])


@bp.post("/<session_id>/reset")
@bp.response(200, SessionStateSchema)
@problems(bp, 401, 404, 409, 410, 422, 429)
def reset_session(session_id: str) -> dict[str, Any]:
    """Clear a session's history and keep its id."""
    found = conversations.reset(db.session(), session_id, auth.session_access())
    return _state(found, 50)


@bp.get("/<session_id>/messages/<message_id>")
@bp.response(200, MessageSchema)
@problems(bp, 401, 404, 410, 422, 429)
def get_message(session_id: str, message_id: str) -> Message:
    """One message of the session with its status (`pending` while its turn runs)."""
    return conversations.message(db.session(), session_id, message_id, auth.session_access())


@bp.get("/<session_id>/messages/<message_id>/events")
@bp.arguments(EventsArgsSchema, location="query")
@bp.arguments(EventsHeadersSchema, location="headers")
@bp.response(200, content_type=sse.EVENT_STREAM, description=sse.EVENTS_DOC)
@problems(bp, 401, 404, 410, 422, 429)
def follow_events(
    args: dict[str, Any], headers: dict[str, Any], session_id: str, message_id: str
) -> Response:
    """The turn's events after Last-Event-ID, then the live ones until `done` or `error`."""
    found = conversations.message(db.session(), session_id, message_id, auth.session_access())
    return sse.follow(found, args, headers)


def _state(session: Conversation, limit: int) -> dict[str, Any]:
    messages, _ = conversations.messages_page(db.session(), session, limit)
    return {
        "session_id": session.id,
        "created_at": session.created_at,
        "last_activity": session.last_activity,
        "expires_at": conversations.expires_at(session, current_app.config),
        "message_count": session.message_count,
        "messages": messages,
    }
