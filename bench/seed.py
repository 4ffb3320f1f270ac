"""Seed a conversation with many stored messages, straight into the database."""

from __future__ import annotations

from datetime import timedelta

from sqlalchemy import insert

from chatsvc import create_app
from chatsvc.db import database, utcnow
from chatsvc.models import Conversation, Message, new_id


def conversation(database_url: str, user_id: str, messages: int) -> tuple[str, str]:
    """A conversation of `user_id` holding `messages` alternating user/assistant messages."""
    app = create_app({"DATABASE_URL": database_url, "CHATSVC_ENV": "development"})
    start = utcnow() - timedelta(hours=1)
    conversation_id = new_id()
    with database(app).sessions() as session:
        session.add(
            Conversation(
                id=conversation_id, kind="user", user_id=user_id, title="seeded",
                created_at=start, last_activity=start, message_count=messages, last_seq=messages,
            )
        )  # fmt: skip
        session.flush()
        rows = [
            {
                "id": new_id(),
                "conversation_id": conversation_id,
                "seq": seq,
                "role": "user" if seq % 2 else "assistant",
                "content": f"seeded message {seq} " + "lorem ipsum " * 8,
                "status": "completed",
                "tool_calls": [],
                "sources": [],
                "prompt_tokens": 0,
                "completion_tokens": 0,
                "total_tokens": 0,
                "created_at": start + timedelta(milliseconds=seq),
            }
            for seq in range(1, messages + 1)
        ]
        for offset in range(0, len(rows), 1000):
            session.execute(insert(Message), rows[offset : offset + 1000])
        session.commit()
    database(app).engine.dispose()
    return user_id, conversation_id
