"""A chat turn: two short units of work around the agent run, which holds no connection.

begin  (unit of work 1) claim the conversation, load the context, store the user message
       and a pending assistant message, commit
agent  no transaction open; tools run their own short units of work
finish (unit of work 2) store the assistant message's outcome, free the conversation, commit
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import bindparam, insert, or_, select, update
from sqlalchemy.orm import Session

from ..agent.base import (
    Agent,
    AgentError,
    HistoryMessage,
    Reply,
    ReplyDone,
    SourcesFound,
    TextDelta,
    ToolCall,
    ToolCallDone,
    Turn,
    estimate_tokens,
)
from ..agent.tools import ToolBox
from ..db import utcnow
from ..errors import TurnInProgress
from ..models import Conversation, Message, new_id
from ..observability import record_failure, record_turn
from . import conversations, idempotency
from .conversations import Access

TITLE_CHARS = 80


@dataclass(frozen=True)
class Context:
    messages: int
    truncated: bool


@dataclass
class PendingTurn:
    conversation_id: str
    kind: str
    user_message_id: str
    assistant_message_id: str
    turn: Turn
    context: Context
    timings: dict[str, float] = field(default_factory=lambda: {"db": 0.0, "agent": 0.0})
    idempotent: bool = False  # sent with an Idempotency-Key: settle its record in finish


@dataclass(frozen=True)
class TurnResult:
    pending: PendingTurn
    reply: Reply
    status: str
    error_code: str | None
    created_at: datetime

    def body(self) -> dict[str, Any]:
        """The chat response of the contract (§2), for TurnSchema."""
        body: dict[str, Any] = {
            "conversation_id": self.pending.conversation_id,
            "message_id": self.pending.assistant_message_id,
            "response": self.reply.text,
            "tool_calls": [call.as_dict() for call in self.reply.tool_calls],
            "sources": self.reply.sources,
            "usage": self.reply.usage.as_dict(),
            "model": self.reply.model,
            "status": self.status,
            "created_at": self.created_at,
            "context": {
                "messages": self.pending.context.messages,
                "truncated": self.pending.context.truncated,
            },
        }
        if self.pending.kind == conversations.SESSION:
            body["session_id"] = self.pending.conversation_id
        return body


# The turn's own statements, built once. Building SQLAlchemy statements (ORM ones above all)
# cost more CPU than running them; these are plain table statements whose SET clauses come
# from the parameters they are executed with.
_CONVERSATIONS = Conversation.__table__
_MESSAGES = Message.__table__
_INSERT_CONVERSATION = insert(_CONVERSATIONS)
_INSERT_MESSAGES = insert(_MESSAGES)
_CLAIM = (
    update(_CONVERSATIONS)
    .where(_CONVERSATIONS.c.id == bindparam("b_id"), _CONVERSATIONS.c.active_turn_id.is_(None))
    .values(
        last_seq=_CONVERSATIONS.c.last_seq + bindparam("b_slots"),
        message_count=_CONVERSATIONS.c.message_count + bindparam("b_slots"),
    )
    .returning(_CONVERSATIONS.c.last_seq)
)
# The context: the newest messages a model may see (a pending or failed reply is not one);
# b_skip is a retried turn's own user message ("" matches no id).
_NEWEST_MESSAGES = (
    select(_MESSAGES.c.role, _MESSAGES.c.content, _MESSAGES.c.tool_calls)
    .where(
        _MESSAGES.c.conversation_id == bindparam("b_conversation"),
        or_(_MESSAGES.c.role == "user", _MESSAGES.c.status.in_(("completed", "cancelled"))),
        _MESSAGES.c.id != bindparam("b_skip"),
    )
    .order_by(_MESSAGES.c.seq.desc())
    .limit(bindparam("b_limit"))
)
_STORE_REPLY = update(_MESSAGES).where(
    _MESSAGES.c.id == bindparam("b_id"), _MESSAGES.c.status == "pending"
)
_RELEASE = update(_CONVERSATIONS).where(
    _CONVERSATIONS.c.id == bindparam("b_id"), _CONVERSATIONS.c.active_turn_id == bindparam("b_turn")
)


def begin(
    session: Session,
    config: dict[str, Any],
    *,
    access: Access,
    kind: str,
    message: str,
    conversation_id: str | None = None,
    attempt: idempotency.Attempt | None = None,
) -> PendingTurn:
    """Unit of work 1: claim the conversation for one turn and store the user's message.
    With an idempotent `attempt` that failed before, the stored user message is reused."""
    started = time.perf_counter()
    now = utcnow()
    assistant_id = new_id()
    retry = attempt.retry if attempt else None
    if retry is not None:
        conversation_id = retry.conversation_id
    if conversation_id is None:
        conversation_id = _create(session, access, kind, message, assistant_id, now)
        user_id = access.user_id
        history: tuple[HistoryMessage, ...] = ()
        context = Context(0, False)
        seq = 1
    else:
        conversation = conversations.find(session, conversation_id, access)
        if conversation.active_turn_id is not None:
            conversations.fail_stale_turns(session, config, now, conversation.id)
        skip = retry.user_message_id if retry else None
        history, context = _context(session, conversation, config, message, skip)
        kind, user_id = conversation.kind, conversation.user_id
        seq = _claim(session, conversation_id, assistant_id, now, 1 if retry else 2)
    rows = []
    if retry is None:
        user_message_id = new_id()
        rows.append(_message_row(user_message_id, conversation_id, seq, "user", message, now))
        seq += 1
    else:
        user_message_id = retry.user_message_id
    rows.append(_message_row(assistant_id, conversation_id, seq, "assistant", "", now))
    session.execute(_INSERT_MESSAGES, rows)
    if attempt is not None:
        idempotency.claim(
            session, attempt, conversation_id=conversation_id,
            user_message_id=user_message_id, assistant_message_id=assistant_id, now=now,
        )  # fmt: skip
    session.commit()
    turn = Turn(user_id, conversation_id, message, history)
    pending = PendingTurn(
        conversation_id, kind, user_message_id, assistant_id, turn, context,
        idempotent=attempt is not None,
    )  # fmt: skip
    pending.timings["db"] += _ms_since(started)
    return pending


def _create(
    session: Session, access: Access, kind: str, message: str, assistant_id: str, now: datetime
) -> str:
    """A new conversation, created already claimed by this turn with its two messages'
    sequence numbers (1 and 2) reserved."""
    conversation_id = new_id()
    session.execute(
        _INSERT_CONVERSATION,
        {
            "id": conversation_id, "kind": kind, "user_id": access.user_id,
            "title": _title(message), "created_at": now, "last_activity": now,
            "message_count": 2, "last_seq": 2, "active_turn_id": assistant_id,
            "turn_started_at": now,
        },
    )  # fmt: skip
    return conversation_id


def _message_row(
    message_id: str, conversation_id: str, seq: int, role: str, content: str, now: datetime
) -> dict[str, Any]:
    """A new message: the user's is complete when stored; the assistant's waits for the agent."""
    done = role == "user"
    return {
        "id": message_id, "conversation_id": conversation_id, "seq": seq, "role": role,
        "content": content, "status": "completed" if done else "pending",
        "created_at": now, "completed_at": now if done else None,
    }  # fmt: skip


def _claim(
    session: Session, conversation_id: str, assistant_id: str, now: datetime, slots: int = 2
) -> int:
    """Take the conversation's one in-flight slot atomically (across workers) and reserve
    `slots` sequence numbers (the first is returned); 409 when another turn holds it."""
    claimed = session.execute(
        _CLAIM,
        {
            "b_id": conversation_id, "b_slots": slots, "active_turn_id": assistant_id,
            "turn_started_at": now, "last_activity": now,
        },
    ).scalar_one_or_none()  # fmt: skip
    if claimed is None:
        session.rollback()
        raise TurnInProgress()
    return claimed - slots + 1


def _context(
    session: Session,
    conversation: Conversation,
    config: dict[str, Any],
    message: str,
    skip: str | None = None,
) -> tuple[tuple[HistoryMessage, ...], Context]:
    """The newest HISTORY_LIMIT messages (oldest first), trimmed from the oldest end so they
    and the new message fit HISTORY_MAX_TOKENS. An assistant message carries its tool calls
    and their results, so it is kept or dropped whole: a call never loses its result. The
    history starts with a user message, as strict chat templates demand."""
    limit = config["HISTORY_LIMIT"]
    newest = session.execute(
        _NEWEST_MESSAGES,
        {"b_conversation": conversation.id, "b_skip": skip or "", "b_limit": limit + 1},
    ).all()
    truncated = len(newest) > limit
    budget = config["HISTORY_MAX_TOKENS"] - estimate_tokens(message)
    kept: list[HistoryMessage] = []
    for row in newest[:limit]:
        if row.role == "assistant" and not row.content and not row.tool_calls:
            continue
        item = HistoryMessage(
            row.role, row.content, tuple(ToolCall(**call) for call in row.tool_calls or ())
        )
        budget -= message_tokens(item)
        if budget < 0:
            truncated = True
            break
        kept.append(item)
    while kept and kept[-1].role != "user":
        kept.pop()
        truncated = True
    kept.reverse()
    return tuple(kept), Context(len(kept), truncated)


def message_tokens(item: HistoryMessage) -> int:
    """A history message's estimated size, its tool calls and results included."""
    return estimate_tokens(item.content) + sum(
        estimate_tokens(json.dumps(call.parameters) + json.dumps(call.result))
        for call in item.tool_calls
    )


def finish(
    session: Session,
    pending: PendingTurn,
    reply: Reply,
    *,
    status: str = "completed",
    error_code: str | None = None,
) -> TurnResult:
    """Unit of work 2: store the assistant message's outcome and free the conversation."""
    started = time.perf_counter()
    now = utcnow()
    session.execute(
        _STORE_REPLY,
        {
            "b_id": pending.assistant_message_id,
            "content": reply.text,
            "status": status,
            "error_code": error_code,
            "tool_calls": [call.as_dict() for call in reply.tool_calls],
            "sources": reply.sources,
            "model": reply.model,
            "latency_ms": int(pending.timings["agent"]),
            "created_at": now,  # the reply's time, as the response says: history shows the same
            "completed_at": now,
            **reply.usage.as_dict(),
        },
    )
    session.execute(
        _RELEASE,
        {
            "b_id": pending.conversation_id, "b_turn": pending.assistant_message_id,
            "active_turn_id": None, "turn_started_at": None, "last_activity": now,
        },
    )  # fmt: skip
    result = TurnResult(pending, reply, status, error_code, now)
    if pending.idempotent:
        done = result.body() if status == "completed" else None
        idempotency.settle(session, pending.assistant_message_id, done)
    session.commit()
    pending.timings["db"] += _ms_since(started)
    record_turn(
        reply.model, status, pending.timings["agent"], reply.usage.as_dict(),
        [call.tool for call in reply.tool_calls],
    )  # fmt: skip
    if status == "failed" and error_code:
        record_failure(error_code)
    return result


def run(session: Session, agent: Agent, tools: ToolBox, pending: PendingTurn) -> TurnResult:
    """The whole turn after `begin`, for a JSON response."""
    for event in stream(session, agent, tools, pending, live=False):
        if isinstance(event, TurnResult):
            return event
    raise AssertionError("stream() always ends with a TurnResult or an error")


def stream(
    session: Session, agent: Agent, tools: ToolBox, pending: PendingTurn, *, live: bool = True
) -> Iterator[TextDelta | ToolCallDone | Any]:
    """The agent's events as they happen, then the stored TurnResult. An agent failure stores a
    `failed` turn and re-raises; a consumer that stops early (client gone) stores `cancelled`."""
    text: list[str] = []
    calls: list[ToolCall] = []
    started = time.perf_counter()
    settled = False

    def settle(status: str, code: str | None) -> None:
        nonlocal settled
        settled = True
        pending.timings["agent"] = _ms_since(started)
        partial = Reply("".join(text), agent.name, list(calls))
        finish(session, pending, partial, status=status, error_code=code)

    events = agent.events(pending.turn, tools, live=live)
    try:
        for event in events:
            if isinstance(event, ReplyDone):
                pending.timings["agent"] = _ms_since(started)
                settled = True
                if not event.reply.sources:  # citations come from what the tools returned
                    event.reply.sources = tools.sources(event.reply.text)
                    if event.reply.sources:
                        yield SourcesFound(event.reply.sources)
                yield finish(session, pending, event.reply)
                return
            if isinstance(event, TextDelta):
                text.append(event.text)
            elif isinstance(event, ToolCallDone):
                calls.append(event.call)
            yield event
        settle("failed", "upstream_error")
        raise AgentError("The agent ended without an answer.")
    except GeneratorExit:
        if not settled:
            settle("cancelled", None)
        raise
    except AgentError as error:
        if not settled:
            settle("failed", error.code)
        raise
    except Exception:
        if not settled:
            session.rollback()
            settle("failed", "internal_error")
        raise
    finally:
        if hasattr(events, "close"):
            events.close()  # stops the provider's stream when the client has gone


def _title(message: str) -> str:
    line = " ".join(message.split())
    if len(line) <= TITLE_CHARS:
        return line
    cut = line[: TITLE_CHARS - 1].rsplit(" ", 1)[0] or line[: TITLE_CHARS - 1]
    return cut + "…"


def _ms_since(started: float) -> float:
    return (time.perf_counter() - started) * 1000
