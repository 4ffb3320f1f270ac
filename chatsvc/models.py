"""Tables. Services read and write them; nothing here commits."""

from __future__ import annotations

import uuid
from datetime import date, datetime
from enum import StrEnum
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    Date,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.orm import Mapped, mapped_column, relationship

from .db import Base, UTCDateTime, utcnow


def new_id() -> str:
    return str(uuid.uuid4())


class MessageStatus(StrEnum):
    """A message's life: a reply is `pending` while its turn runs, then one of the others."""

    PENDING = "pending"
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLED = "cancelled"


class Role(StrEnum):
    USER = "user"
    ASSISTANT = "assistant"


class Conversation(Base):
    """A user's conversation (kind "user") or a knowledge session (kind "session")."""

    __tablename__ = "conversations"
    __table_args__ = (
        Index("ix_conversations_user_activity", "user_id", "last_activity"),
        Index("ix_conversations_kind_activity", "kind", "last_activity"),
    )

    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_id)
    kind: Mapped[str] = mapped_column(String(16))
    user_id: Mapped[str | None] = mapped_column(String(128))
    title: Mapped[str] = mapped_column(String(200), default="")
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    last_activity: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    message_count: Mapped[int] = mapped_column(Integer, default=0)
    # The sequence number of the newest message ever stored; never reused, even after a reset.
    last_seq: Mapped[int] = mapped_column(Integer, default=0)
    # The one in-flight turn (its assistant message id), claimed atomically across workers.
    active_turn_id: Mapped[str | None] = mapped_column(String(36))
    turn_started_at: Mapped[datetime | None] = mapped_column(UTCDateTime)

    messages: Mapped[list[Message]] = relationship(
        back_populates="conversation", passive_deletes=True, order_by="Message.seq"
    )


class Message(Base):
    __tablename__ = "messages"
    __table_args__ = (UniqueConstraint("conversation_id", "seq"),)

    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_id)
    conversation_id: Mapped[str] = mapped_column(ForeignKey("conversations.id", ondelete="CASCADE"))
    seq: Mapped[int] = mapped_column(Integer)
    role: Mapped[str] = mapped_column(String(16))
    content: Mapped[str] = mapped_column(Text, default="")
    status: Mapped[str] = mapped_column(String(16))
    error_code: Mapped[str | None] = mapped_column(String(32))
    tool_calls: Mapped[list[dict[str, Any]]] = mapped_column(JSON, default=list)
    sources: Mapped[list[dict[str, Any]]] = mapped_column(JSON, default=list)
    prompt_tokens: Mapped[int] = mapped_column(Integer, default=0)
    completion_tokens: Mapped[int] = mapped_column(Integer, default=0)
    total_tokens: Mapped[int] = mapped_column(Integer, default=0)
    model: Mapped[str | None] = mapped_column(String(100))
    latency_ms: Mapped[int | None] = mapped_column(Integer)
    # A reply's context: how many history messages its turn sent, and whether some were left out.
    context_messages: Mapped[int | None] = mapped_column(Integer)
    context_truncated: Mapped[bool | None] = mapped_column(Boolean)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    completed_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    # Set by a cancel (from any worker or host) while the reply is pending; the worker running
    # the turn sees it and stops the turn (services/cancels.py).
    cancel_requested_at: Mapped[datetime | None] = mapped_column(UTCDateTime)

    conversation: Mapped[Conversation] = relationship(back_populates="messages")

    @property
    def usage(self) -> dict[str, int]:
        return {
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "total_tokens": self.total_tokens,
        }


class Task(Base):
    """A user's task, numbered per user from 1 (`task_id` is never reused for that user)."""

    __tablename__ = "tasks"
    __table_args__ = (Index("ix_tasks_user_due", "user_id", "due_date"),)

    user_id: Mapped[str] = mapped_column(String(128), primary_key=True)
    task_id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    title: Mapped[str] = mapped_column(String(200))
    description: Mapped[str] = mapped_column(Text, default="")
    completed: Mapped[bool] = mapped_column(Boolean, default=False)
    due_date: Mapped[date | None] = mapped_column(Date)
    priority: Mapped[str] = mapped_column(String(8), default="normal", server_default="normal")
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    completed_at: Mapped[datetime | None] = mapped_column(UTCDateTime)


class TaskCounter(Base):
    """The last task number handed out per user, bumped atomically so numbers are never reused."""

    __tablename__ = "task_counters"

    user_id: Mapped[str] = mapped_column(String(128), primary_key=True)
    last_task_id: Mapped[int] = mapped_column(Integer, default=0)


class Document(Base):
    """A knowledge-base document; its text is searched through its chunks."""

    __tablename__ = "documents"
    __table_args__ = (
        Index("ix_documents_created", "created_at", "id"),
        Index("ix_documents_collection", "collection", "created_at", "id"),
    )

    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_id)
    title: Mapped[str] = mapped_column(String(200))
    url: Mapped[str | None] = mapped_column(String(2048))
    meta: Mapped[dict[str, Any]] = mapped_column("metadata", JSON, default=dict)
    # Which part of the knowledge base it belongs to: searches may be limited to some.
    collection: Mapped[str] = mapped_column(String(64), default="default", server_default="default")
    # sha256 of the normalised text: the same text ingested twice is one document.
    content_hash: Mapped[str] = mapped_column(String(64), unique=True)
    # The normalised text while it is indexed in the background (a job taken over starts from
    # it); "" once its passages hold it (each document's text is stored once).
    text: Mapped[str] = mapped_column(Text)
    chunk_count: Mapped[int] = mapped_column(Integer, default=0)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    # `ready`, or `indexing` while a large document is split in the background (its lease:
    # until when the worker doing it is presumed alive), or `failed` when splitting raised.
    status: Mapped[str] = mapped_column(String(16), default="ready", server_default="ready")
    lease_until: Mapped[datetime | None] = mapped_column(UTCDateTime)

    sections: Mapped[list[Section]] = relationship(
        back_populates="document", passive_deletes=True, order_by="Section.ordinal"
    )
    chunks: Mapped[list[Chunk]] = relationship(
        back_populates="document", passive_deletes=True, order_by="Chunk.ordinal"
    )


class Section(Base):
    """A heading path of a document (capped, see services/chunking.py), stored once for all
    the passages under it."""

    __tablename__ = "sections"
    __table_args__ = (UniqueConstraint("document_id", "ordinal"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    document_id: Mapped[str] = mapped_column(ForeignKey("documents.id", ondelete="CASCADE"))
    ordinal: Mapped[int] = mapped_column(Integer)
    path: Mapped[str] = mapped_column(Text)

    document: Mapped[Document] = relationship(back_populates="sections")
    chunks: Mapped[list[Chunk]] = relationship(back_populates="section", passive_deletes=True)


class Chunk(Base):
    """A passage of a document. The full-text index over its section's path and its `text` is
    not mapped here: an FTS5 table on SQLite, a tsvector column filled by a trigger on
    PostgreSQL (see migrations)."""

    __tablename__ = "chunks"
    __table_args__ = (UniqueConstraint("document_id", "ordinal"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    document_id: Mapped[str] = mapped_column(ForeignKey("documents.id", ondelete="CASCADE"))
    section_id: Mapped[int] = mapped_column(
        ForeignKey("sections.id", ondelete="CASCADE"), index=True
    )
    ordinal: Mapped[int] = mapped_column(Integer)
    text: Mapped[str] = mapped_column(Text)

    document: Mapped[Document] = relationship(back_populates="chunks")
    section: Mapped[Section] = relationship(back_populates="chunks")


class EmbeddingModel(Base):
    """An embeddings model as the vectors were made by it: its name and dimension. A search
    compares only vectors of the configured model, so a change of model re-embeds (`kb embed`)
    rather than mixing two models' vectors."""

    __tablename__ = "embedding_models"
    __table_args__ = (UniqueConstraint("name", "dimension"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(200))
    dimension: Mapped[int] = mapped_column(Integer)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class ChunkVector(Base):
    """A passage's embedding (float32, unit length) by one model; gone with its passage. The
    vector search reads it with sqlite-vec's distance functions (services/embeddings.py): first
    its sign bits (`bits`, one bit a dimension) in a covering index, then the vector itself for
    the few hundred passages nearest by those."""

    __tablename__ = "chunk_vectors"
    __table_args__ = (Index("ix_chunk_vectors_model_bits", "model_id", "bits"),)

    chunk_id: Mapped[int] = mapped_column(
        ForeignKey("chunks.id", ondelete="CASCADE"), primary_key=True, autoincrement=False
    )
    model_id: Mapped[int] = mapped_column(ForeignKey("embedding_models.id", ondelete="CASCADE"))
    vector: Mapped[bytes] = mapped_column(LargeBinary)
    bits: Mapped[bytes] = mapped_column(LargeBinary)


class ToolExecution(Base):
    """A tool call that changed something, committed in the same transaction as its effect and
    keyed to the turn (its user message): a retry of that turn finds every effect of the
    attempts before it and reuses the result instead of executing the call again."""

    __tablename__ = "tool_executions"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    turn_key: Mapped[str] = mapped_column(ForeignKey("messages.id", ondelete="CASCADE"), index=True)
    tool: Mapped[str] = mapped_column(String(64))
    arguments_hash: Mapped[str] = mapped_column(String(64))
    result: Mapped[dict[str, Any]] = mapped_column(JSON)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class IdempotencyRecord(Base):
    """A chat POST sent with an Idempotency-Key: claimed with the turn's first unit of work,
    settled with its second; a completed one is replayed from its stored reply."""

    __tablename__ = "idempotency_records"
    __table_args__ = (
        UniqueConstraint("caller", "route", "key"),
        Index("ix_idempotency_records_expires_at", "expires_at"),
    )

    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_id)
    caller: Mapped[str] = mapped_column(String(200))
    route: Mapped[str] = mapped_column(String(300))
    key: Mapped[str] = mapped_column(String(255))
    fingerprint: Mapped[str] = mapped_column(String(64))
    status: Mapped[str] = mapped_column(String(16))  # running | completed | failed
    conversation_id: Mapped[str] = mapped_column(ForeignKey("conversations.id", ondelete="CASCADE"))
    user_message_id: Mapped[str] = mapped_column(String(36))
    assistant_message_id: Mapped[str] = mapped_column(String(36), index=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime)


class QuotaUsage(Base):
    """Tokens a quota subject ("user:<id>", or "address:<ip>" for anonymous callers) used on a
    UTC day. A counter, bumped atomically as turns finish: deleting conversations does not
    give tokens back."""

    __tablename__ = "quota_usage"

    subject: Mapped[str] = mapped_column(String(200), primary_key=True)
    day: Mapped[date] = mapped_column(Date, primary_key=True)
    tokens: Mapped[int] = mapped_column(BigInteger, default=0)


class UserQuota(Base):
    """An admin's cap for one user, in place of QUOTA_TOKENS_PER_DAY (0: no cap)."""

    __tablename__ = "user_quotas"

    user_id: Mapped[str] = mapped_column(String(128), primary_key=True)
    tokens_per_day: Mapped[int] = mapped_column(BigInteger)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class LoggedEvent(Base):
    """A run of a turn's logged events stored together (services/events.py, database backend):
    `data` holds them one a line (`id<TAB>name<TAB>JSON body`), `seq` and `name` are the run's
    last event's id and name. No foreign key: a batch stored after its conversation was deleted
    must not fail; logs expire after TURN_EVENTS_TTL_SECONDS, whole turns at a time (the age of
    a turn's `done` or `error` decides)."""

    __tablename__ = "turn_events"
    __table_args__ = (Index("ix_turn_events_created_at", "created_at"),)

    message_id: Mapped[str] = mapped_column(String(36), primary_key=True)
    seq: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    name: Mapped[str] = mapped_column(String(16))
    data: Mapped[str] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
