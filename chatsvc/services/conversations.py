"""Conversations and sessions: lookup with ownership and expiry, history pages, reset, cleanup."""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import and_, column, delete, or_, select, text, update
from sqlalchemy.orm import Session

from ..db import utcnow
from ..errors import NotFound, SessionExpired, TurnInProgress
from ..models import Conversation, Message
from . import pages, quotas
from .knowledge import STOPWORDS
from .words import words

USER, SESSION = "user", "session"
ID_LENGTH = 36


@dataclass(frozen=True)
class Access:
    """Who may see a conversation: its owner, or anyone holding an anonymous session's id."""

    user_id: str | None
    kind: str | None = None  # session routes serve sessions only
    # The lifetimes that apply (SESSION_TTL_SECONDS, CONVERSATION_TTL_SECONDS,
    # TURN_STALE_SECONDS), handed in by the transport: services read no app config.
    rules: Mapping[str, Any] | None = None


def ttl_seconds(kind: str, config: Mapping[str, Any]) -> int:
    return config["SESSION_TTL_SECONDS"] if kind == SESSION else config["CONVERSATION_TTL_SECONDS"]


def expires_at(conversation: Conversation, config: Mapping[str, Any]) -> datetime | None:
    ttl = ttl_seconds(conversation.kind, config)
    return conversation.last_activity + timedelta(seconds=ttl) if ttl else None


def find(
    session: Session,
    conversation_id: str,
    access: Access,
    *,
    lock: bool = False,
    config: Mapping[str, Any] | None = None,
) -> Conversation:
    """The conversation if `access` may see it (else 404) and it has not expired (else 410)."""
    if not _well_formed(conversation_id):
        raise NotFound("The conversation does not exist.")
    query = select(Conversation).where(Conversation.id == conversation_id)
    conversation = session.scalars(query.with_for_update() if lock else query).first()
    if conversation is None or not _visible(conversation, access):
        session.rollback()
        raise NotFound("The conversation does not exist.")
    deadline = expires_at(conversation, config or access.rules or {})
    if deadline is not None and deadline <= utcnow():
        session.rollback()
        raise SessionExpired(
            "The session has expired." if conversation.kind == SESSION
            else "The conversation has expired."
        )  # fmt: skip
    return conversation


def _well_formed(conversation_id: str) -> bool:
    """Ids we could have made; others (PostgreSQL refuses NUL bytes outright) are simply unknown."""
    return len(conversation_id) <= ID_LENGTH and conversation_id.isprintable()


def _visible(conversation: Conversation, access: Access) -> bool:
    if access.kind is not None and conversation.kind != access.kind:
        return False
    if conversation.kind == SESSION and access.kind == SESSION:
        return conversation.user_id is None or conversation.user_id == access.user_id
    return access.user_id is not None and conversation.user_id == access.user_id


def get(session: Session, conversation_id: str, access: Access) -> Conversation:
    conversation = find(session, conversation_id, access)
    session.commit()
    return conversation


def list_for_user(
    session: Session, user_id: str, limit: int, cursor: str | None
) -> tuple[list[Conversation], str | None]:
    """A user's conversations (both kinds), newest activity first."""
    query = select(Conversation).where(Conversation.user_id == user_id)
    return pages.newest_first(
        session, query, Conversation.last_activity, Conversation.id, limit, cursor
    )


MATCH_CHARS = 200


def search_for_user(
    session: Session, user_id: str, query: str, limit: int, cursor: str | None
) -> tuple[list[tuple[Conversation, str]], str | None]:
    """A user's conversations whose title or messages have every word of `query` (the
    database's full-text search; only letters and digits reach it), newest activity first,
    each with a short snippet of its best-ranked match."""
    terms = [w for w in words(query) if w not in STOPWORDS]
    if not terms:
        session.commit()
        return [], None
    backend = _SEARCH[session.get_bind().dialect.name]
    matching = backend.matching(user_id, terms).columns(column("id"))
    found = select(Conversation).where(
        Conversation.user_id == user_id, Conversation.id.in_(matching)
    )
    items, next_cursor = pages.newest_first(
        session, found, Conversation.last_activity, Conversation.id, limit, cursor
    )
    snippets = backend.snippets(session, terms, [c.id for c in items]) if items else {}
    session.commit()
    matches = [(c, _cap(snippets.get(c.id) or c.title)) for c in items]
    return matches, next_cursor


def _cap(snippet: str) -> str:
    snippet = " ".join(snippet.split())
    return snippet if len(snippet) <= MATCH_CHARS else snippet[: MATCH_CHARS - 1] + "…"


class _SqliteSearch:
    # Every word quoted: FTS5 reads it as a string, never as an operator or a column filter;
    # words side by side must all match.
    @staticmethod
    def _match(terms: list[str]) -> str:
        return " ".join(f'"{term}"' for term in terms)

    @classmethod
    def matching(cls, user_id: str, terms: list[str]) -> Any:
        return text(
            "SELECT m.conversation_id AS id FROM messages_fts JOIN messages m"
            " ON m.rowid = messages_fts.rowid JOIN conversations c ON c.id = m.conversation_id"
            " WHERE messages_fts MATCH :match AND c.user_id = :user"
            " UNION SELECT c.id FROM conversations_fts JOIN conversations c"
            " ON c.rowid = conversations_fts.rowid"
            " WHERE conversations_fts MATCH :match AND c.user_id = :user"
        ).bindparams(match=cls._match(terms), user=user_id)

    @classmethod
    def snippets(cls, session: Session, terms: list[str], ids: list[str]) -> dict[str, str]:
        best: dict[str, str] = {}
        rows = session.execute(
            text(
                "SELECT m.conversation_id, snippet(messages_fts, 0, '', '', '…', 24)"
                " FROM messages_fts JOIN messages m ON m.rowid = messages_fts.rowid"
                " WHERE messages_fts MATCH :match AND m.conversation_id IN"
                " (SELECT value FROM json_each(:ids)) ORDER BY bm25(messages_fts), m.seq"
            ),
            {"match": cls._match(terms), "ids": json.dumps(ids)},
        )
        for conversation_id, snippet in rows:
            best.setdefault(conversation_id, snippet)
        return best


class _PostgresSearch:
    # plainto_tsquery ANDs the words and never raises on syntax; the words are letters and
    # digits. The expressions repeat those of the GIN indexes so that the indexes are used.
    @staticmethod
    def matching(user_id: str, terms: list[str]) -> Any:
        return text(
            "SELECT m.conversation_id AS id FROM messages m"
            " JOIN conversations c ON c.id = m.conversation_id"
            " WHERE to_tsvector('english'::regconfig, m.content)"
            " @@ plainto_tsquery('english', :query) AND c.user_id = :user"
            " UNION SELECT c.id FROM conversations c"
            " WHERE to_tsvector('english'::regconfig, c.title)"
            " @@ plainto_tsquery('english', :query) AND c.user_id = :user"
        ).bindparams(query=" ".join(terms), user=user_id)

    @staticmethod
    def snippets(session: Session, terms: list[str], ids: list[str]) -> dict[str, str]:
        rows = session.execute(
            text(
                "SELECT DISTINCT ON (m.conversation_id) m.conversation_id,"
                ' ts_headline(\'english\', m.content, q, \'StartSel="", StopSel="",'
                " MaxWords=24, MinWords=8')"
                " FROM messages m, plainto_tsquery('english', :query) q"
                " WHERE m.conversation_id = ANY(:ids)"
                " AND to_tsvector('english'::regconfig, m.content) @@ q"
                " ORDER BY m.conversation_id,"
                " ts_rank_cd(to_tsvector('english'::regconfig, m.content), q) DESC, m.seq"
            ),
            {"query": " ".join(terms), "ids": ids},
        )
        return {conversation_id: snippet for conversation_id, snippet in rows}


_SEARCH: dict[str, Any] = {"sqlite": _SqliteSearch, "postgresql": _PostgresSearch}


def rename(session: Session, conversation_id: str, access: Access, title: str) -> Conversation:
    conversation = find(session, conversation_id, access, lock=True)
    conversation.title = title
    session.commit()
    return conversation


def message(session: Session, conversation_id: str, message_id: str, access: Access) -> Message:
    """One message of a conversation `access` may see (404 for any other id)."""
    conversation = find(session, conversation_id, access)
    found = (
        session.scalars(
            select(Message).where(
                Message.id == message_id, Message.conversation_id == conversation.id
            )
        ).first()
        if _well_formed(message_id)
        else None
    )
    session.commit()
    if found is None:
        raise NotFound("The message does not exist.")
    return found


def export(
    session: Session, conversation_id: str, access: Access
) -> tuple[Conversation, list[Message]]:
    """A conversation and every one of its messages, oldest first."""
    conversation = find(session, conversation_id, access)
    query = select(Message).where(Message.conversation_id == conversation.id)
    messages = list(session.scalars(query.order_by(Message.seq)))
    session.commit()
    return conversation, messages


def messages_page(
    session: Session, conversation: Conversation, limit: int, cursor: str | None = None
) -> tuple[list[Message], str | None]:
    """The newest `limit` messages before the cursor, oldest first, and the cursor to older ones."""
    query = select(Message).where(Message.conversation_id == conversation.id)
    position = pages.decode(cursor, int, maximum=pages.INT32_MAX)
    if position:
        query = query.where(Message.seq < position[0])
    rows = list(session.scalars(query.order_by(Message.seq.desc()).limit(limit + 1)))
    session.commit()
    newest = rows[:limit]
    next_cursor = pages.encode(newest[-1].seq) if len(rows) > limit else None
    return list(reversed(newest)), next_cursor


def delete_conversation(session: Session, conversation_id: str, access: Access) -> None:
    conversation = find(session, conversation_id, access, lock=True)
    _require_idle(session, conversation, access)
    session.execute(delete(Message).where(Message.conversation_id == conversation.id))
    session.delete(conversation)
    session.commit()


def reset(session: Session, conversation_id: str, access: Access) -> Conversation:
    """Clear a session's history and keep its id."""
    conversation = find(session, conversation_id, access, lock=True)
    _require_idle(session, conversation, access)
    session.execute(delete(Message).where(Message.conversation_id == conversation.id))
    conversation.message_count = 0
    conversation.active_turn_id = None
    conversation.turn_started_at = None
    conversation.last_activity = utcnow()
    session.commit()
    return conversation


def _require_idle(session: Session, conversation: Conversation, access: Access) -> None:
    """409 while a turn runs: its reply would land in a cleared (or deleted) conversation, and a
    second turn could start beside it. A turn stale after a crash does not count."""
    if conversation.active_turn_id is None:
        return
    fail_stale_turns(session, access.rules or {}, utcnow(), conversation.id)
    if conversation.active_turn_id is not None:
        session.rollback()
        raise TurnInProgress()


@dataclass(frozen=True)
class CleanupReport:
    sessions_deleted: int
    conversations_deleted: int
    turns_failed: int
    quota_counters_deleted: int = 0
    failed_turns: tuple[str, ...] = ()  # their message ids: their event logs end with `error`


def cleanup(session: Session, config: dict[str, Any], now: datetime | None = None) -> CleanupReport:
    """Delete sessions (and TTL'd conversations) expired for longer than the retention period,
    and fail turns stuck pending after a crash."""
    now = now or utcnow()
    retention = timedelta(seconds=config["SESSION_RETENTION_SECONDS"])
    deleted = {}
    for kind in (SESSION, USER):
        ttl = ttl_seconds(kind, config)
        if not ttl:
            deleted[kind] = 0
            continue
        cutoff = now - timedelta(seconds=ttl) - retention
        doomed = select(Conversation.id).where(
            Conversation.kind == kind, Conversation.last_activity < cutoff
        )
        session.execute(delete(Message).where(Message.conversation_id.in_(doomed)))
        result = session.execute(
            delete(Conversation).where(
                Conversation.kind == kind, Conversation.last_activity < cutoff
            )
        )
        deleted[kind] = result.rowcount
    failed = fail_stale_turns(session, config, now)
    # Quota counters of days before yesterday never count again.
    counters = quotas.forget_before(session, now.date() - timedelta(days=1))
    session.commit()
    return CleanupReport(deleted[SESSION], deleted[USER], len(failed), counters, tuple(failed))


def lease_seconds(config: Mapping[str, Any]) -> float:
    """How long a claimed conversation stays claimed without its turn renewing the claim (the
    running turn renews it every third of this): TURN_LEASE_SECONDS, or TURN_STALE_SECONDS when
    that is shorter."""
    return min(config["TURN_LEASE_SECONDS"], config["TURN_STALE_SECONDS"])


def fail_stale_turns(
    session: Session, config: Mapping[str, Any], now: datetime, conversation_id: str | None = None
) -> list[str]:
    """Fail the turns whose worker is gone and free their conversations: a claim whose lease was
    not renewed (a crashed worker: seconds, not minutes), and any reply pending for longer than
    TURN_STALE_SECONDS that no live claim holds. Part of the caller's unit of work: it does not
    commit. Returns the failed replies' ids (their event logs get their `error` from the
    caller, once this is committed)."""
    expired = now - timedelta(seconds=lease_seconds(config))
    stale = now - timedelta(seconds=config["TURN_STALE_SECONDS"])
    claimed = Conversation.active_turn_id.is_not(None)
    if conversation_id is not None:
        claimed = and_(claimed, Conversation.id == conversation_id)
    lapsed = and_(claimed, Conversation.turn_started_at < expired)
    live = select(Conversation.active_turn_id).where(
        Conversation.active_turn_id.is_not(None), Conversation.turn_started_at >= expired
    )
    pending = and_(
        Message.status == "pending",
        or_(
            Message.id.in_(select(Conversation.active_turn_id).where(lapsed)),
            and_(Message.created_at < stale, Message.id.not_in(live)),
        ),
    )
    if conversation_id is not None:
        pending = and_(pending, Message.conversation_id == conversation_id)
    failed = session.scalars(
        update(Message)
        .where(pending)
        .values(status="failed", error_code="interrupted", completed_at=now)
        .returning(Message.id)
        .execution_options(synchronize_session="fetch")
    ).all()
    session.execute(
        update(Conversation)
        .where(lapsed)
        .values(active_turn_id=None, turn_started_at=None)
        .execution_options(synchronize_session="fetch")
    )
    return list(failed)
