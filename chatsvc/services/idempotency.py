"""Idempotent chat POSTs (contract §1): one Idempotency-Key, one turn, one response replayed.

look_up    before the turn: the completed attempt's reply to replay, or a failed one to re-run;
           refuse a different body (422) or an attempt still running (409)
claim      inside the turn's unit of work 1: record the attempt as running, for this turn
settle     inside the turn's unit of work 2: completed (replayed from the stored reply) or failed
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import delete, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from ..db import utcnow
from ..errors import IdempotencyMismatch, TurnInProgress
from ..models import Conversation, IdempotencyRecord, Message, MessageStatus

RUNNING, COMPLETED, FAILED = "running", "completed", "failed"


@dataclass(frozen=True)
class Retry:
    """A failed earlier attempt: its turn runs again for the user message already stored."""

    record_id: str
    conversation_id: str
    user_message_id: str
    failed_message_id: str  # the assistant message of the failed run, compared and swapped


@dataclass
class Attempt:
    """A chat POST carrying an Idempotency-Key, scoped to its caller and route."""

    caller: str
    route: str
    key: str
    fingerprint: str
    ttl_seconds: int
    stale_seconds: float  # the turn lease: a first attempt not renewing its claim this long died
    retry: Retry | None = None

    @classmethod
    def of(
        cls, caller: str, route: str, key: str, body: dict[str, Any], ttl: int, stale: int
    ) -> Attempt:
        canonical = json.dumps(body, sort_keys=True, ensure_ascii=False, default=str)
        return cls(caller, route, key, hashlib.sha256(canonical.encode()).hexdigest(), ttl, stale)


def look_up(session: Session, attempt: Attempt) -> str | None:
    """The assistant message to replay, if an earlier attempt completed; sets `attempt.retry`
    if one failed. 422 for the same key with another body, 409 while the first attempt runs.
    Read-only: the caller's session rolls back."""
    record = session.scalars(_same_key(attempt)).first()
    if record is None or record.expires_at <= utcnow():
        return None
    if record.fingerprint != attempt.fingerprint:
        raise IdempotencyMismatch()
    if record.status == RUNNING and _still_running(session, record, attempt.stale_seconds):
        raise TurnInProgress("The first request with this Idempotency-Key is still running.")
    if record.status == COMPLETED:
        return record.assistant_message_id
    attempt.retry = Retry(
        record.id, record.conversation_id, record.user_message_id, record.assistant_message_id
    )
    return None


def claim(
    session: Session,
    attempt: Attempt,
    *,
    conversation_id: str,
    user_message_id: str,
    assistant_message_id: str,
    now: datetime,
) -> None:
    """Unit of work 1 (the caller commits): this attempt now runs this turn. Another request
    that claimed the same key first makes this one 409."""
    if attempt.retry is not None:
        claimed = session.execute(
            update(IdempotencyRecord)
            .where(
                IdempotencyRecord.id == attempt.retry.record_id,
                IdempotencyRecord.assistant_message_id == attempt.retry.failed_message_id,
                # look_up read the record, then its message: the run it saw as done may have
                # completed in between, and must not run again.
                IdempotencyRecord.status != COMPLETED,
            )
            .values(status=RUNNING, assistant_message_id=assistant_message_id)
        )
        if claimed.rowcount != 1:
            raise TurnInProgress()
        return
    session.execute(delete(IdempotencyRecord).where(_key_of(attempt), _expired(now)))
    session.add(
        IdempotencyRecord(
            caller=attempt.caller, route=attempt.route, key=attempt.key,
            fingerprint=attempt.fingerprint, status=RUNNING, conversation_id=conversation_id,
            user_message_id=user_message_id, assistant_message_id=assistant_message_id,
            created_at=now, expires_at=now + timedelta(seconds=attempt.ttl_seconds),
        )
    )  # fmt: skip
    try:
        session.flush()
    except IntegrityError:
        raise TurnInProgress("Another request with this Idempotency-Key is running.") from None


def settle(session: Session, assistant_message_id: str, completed: bool) -> None:
    """Unit of work 2 (the caller commits): a completed attempt is replayed from its stored
    reply; a failed one lets a retry run the agent again."""
    session.execute(
        update(IdempotencyRecord)
        .where(IdempotencyRecord.assistant_message_id == assistant_message_id)
        .values(status=COMPLETED if completed else FAILED)
    )


def purge_expired(session: Session) -> int:
    """Delete records past IDEMPOTENCY_TTL_SECONDS (the cleanup job)."""
    deleted = session.execute(delete(IdempotencyRecord).where(_expired(utcnow())))
    return deleted.rowcount or 0


def _same_key(attempt: Attempt) -> Any:
    return select(IdempotencyRecord).where(_key_of(attempt))


def _key_of(attempt: Attempt) -> Any:
    return (
        (IdempotencyRecord.caller == attempt.caller)
        & (IdempotencyRecord.route == attempt.route)
        & (IdempotencyRecord.key == attempt.key)
    )


def _expired(now: datetime) -> Any:
    return IdempotencyRecord.expires_at <= now


def _still_running(session: Session, record: IdempotencyRecord, lease_seconds: float) -> bool:
    """A running record's turn still holds its conversation, and renewed the claim within the
    lease: its worker is alive. A crashed worker's turn (the lease lapsed) may be retried in
    seconds; the retry's own unit of work fails the stuck turn."""
    found = session.execute(
        select(Message.status, Conversation.turn_started_at)
        .join(Conversation, Conversation.id == Message.conversation_id)
        .where(
            Message.id == record.assistant_message_id,
            Conversation.active_turn_id == record.assistant_message_id,
        )
    ).first()
    if found is None or found.status != MessageStatus.PENDING.value:
        return False
    return found.turn_started_at >= utcnow() - timedelta(seconds=lease_seconds)
