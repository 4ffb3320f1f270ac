"""Token usage: what a user's turns cost, per day (UTC) and model."""

from __future__ import annotations

from datetime import date
from typing import Any

from sqlalchemy import Date, cast, func, select
from sqlalchemy.orm import Session

from ..models import Conversation, Message


def per_day(session: Session, user_id: str) -> list[dict[str, Any]]:
    """The user's token use summed per UTC day and model, newest day first."""
    day = _utc_day(session)
    rows = session.execute(
        select(
            day.label("day"),
            Message.model,
            func.sum(Message.prompt_tokens),
            func.sum(Message.completion_tokens),
            func.sum(Message.total_tokens),
            func.count(Message.id),
        )
        .join(Conversation, Conversation.id == Message.conversation_id)
        .where(
            Conversation.user_id == user_id,
            Message.role == "assistant",
            Message.status != "pending",
            Message.model.is_not(None),
        )
        .group_by(day, Message.model)
        .order_by(day.desc(), Message.model)
    ).all()
    session.commit()
    return [
        {
            "day": date.fromisoformat(str(row[0])[:10]),
            "model": row[1],
            "prompt_tokens": int(row[2] or 0),
            "completion_tokens": int(row[3] or 0),
            "total_tokens": int(row[4] or 0),
            "turns": int(row[5]),
        }
        for row in rows
    ]


def _utc_day(session: Session) -> Any:
    # SQLite stores naive UTC; PostgreSQL's timestamptz must be cast in UTC, not the session zone.
    if session.get_bind().dialect.name == "postgresql":
        return cast(func.timezone("UTC", Message.created_at), Date)
    return func.date(Message.created_at)
