"""A user's conversation history, for frontends."""

from __future__ import annotations

from typing import Any

from flask_smorest import Blueprint

from .. import auth, db
from ..schemas import ConversationDetailSchema, ConversationPageSchema, PageArgsSchema
from ..services import conversations
from . import cached, problems

bp = Blueprint("conversations", __name__, url_prefix="/api", description="Conversation history.")


@bp.get("/<user_id>/conversations")
@bp.arguments(PageArgsSchema, location="query")
@cached(bp)
@bp.response(200, ConversationPageSchema)
@problems(bp, 401, 403, 404, 422, 429)
def list_conversations(args: dict[str, Any], user_id: str) -> dict[str, Any]:
    """The user's conversations and sessions, newest activity first."""
    user = auth.user_for_path(user_id)
    items, next_cursor = conversations.list_for_user(
        db.session(), user, args["limit"], args["cursor"]
    )
    return {"items": items, "next_cursor": next_cursor}


@bp.get("/<user_id>/conversations/<conversation_id>")
@bp.arguments(PageArgsSchema, location="query")
@cached(bp)
@bp.response(200, ConversationDetailSchema)
@problems(bp, 401, 403, 404, 410, 422, 429)
def get_conversation(args: dict[str, Any], user_id: str, conversation_id: str) -> dict[str, Any]:
    """One conversation with its newest messages (oldest first) and a cursor to older ones."""
    found = conversations.get(db.session(), conversation_id, auth.user_access(user_id))
    messages, next_cursor = conversations.messages_page(
        db.session(), found, args["limit"], args["cursor"]
    )
    return {**_fields(found), "messages": messages, "next_cursor": next_cursor}


@bp.delete("/<user_id>/conversations/<conversation_id>")
@bp.response(204)
@problems(bp, 401, 403, 404, 409, 410, 429)
def delete_conversation(user_id: str, conversation_id: str) -> None:
    """Delete a conversation and its messages."""
    conversations.delete_conversation(db.session(), conversation_id, auth.user_access(user_id))


def _fields(conversation: Any) -> dict[str, Any]:
    return {
        name: getattr(conversation, name)
        for name in ("id", "kind", "title", "created_at", "last_activity", "message_count")
    }
