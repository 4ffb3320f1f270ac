"""A stored reply by its id (the OpenAI-compatible API's response id is the assistant message's
id): which conversation it belongs to, if the caller may see it."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from ..errors import NotFound
from ..models import Conversation, Message, Role
from . import conversations
from .conversations import Access


def conversation_of(
    session: Session,
    message_id: str,
    user_id: str | None,
    rules: Mapping[str, Any],
    kind: str | None = None,
) -> str:
    """The id of the conversation holding the reply `message_id`, when the caller may see it
    (as through the routes of its kind: a user's conversation by its owner, a session by its
    owner or, anonymous, by anyone holding the id) and it is of `kind` when one is asked for:
    404 for anything else (another user's, a user message, an id never made), 410 expired."""
    if len(message_id) > conversations.ID_LENGTH or not message_id.isprintable():
        raise NotFound("The response does not exist.")
    row = session.execute(
        select(Message.conversation_id, Conversation.kind)
        .join(Conversation, Conversation.id == Message.conversation_id)
        .where(Message.id == message_id, Message.role == Role.ASSISTANT.value)
    ).first()
    if row is None or (kind is not None and row.kind != kind):
        raise NotFound("The response does not exist.")
    try:
        conversations.find(session, row.conversation_id, Access(user_id, row.kind, rules))
    except NotFound:
        raise NotFound("The response does not exist.") from None
    return row.conversation_id
