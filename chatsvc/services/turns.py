"""A chat turn, one use case for every transport (HTTP JSON, SSE, the terminal):

    handle = engine.take(TurnRequest(...))      idempotency look-up; unit of work 1
    handle.result()  or  handle.events(wait)    the agent runs (no connection held); unit of work 2

take     replays a completed idempotent attempt, or admits a new turn (503 `overloaded` when
         this worker cannot take one more: services/admission.py), claims the conversation,
         reads its context and stores the user message with a pending reply (unit of work 1)
run      the agent, with the turn's toolbox (each tool call is its own short unit of work)
finish   stores the reply's outcome with its citations, frees the conversation, settles the
         idempotency key (unit of work 2)

A transport turns its input into a TurnRequest and the handle's events into its wire format.

A streamed turn's events go to its event log (services/events.py) as they happen, numbered
1, 2, 3…: `handle.stream(wait)` is the log's first reader, `engine.follow(message_id, after,
wait)` any later one (a resume, on any worker or host). The transport hands the engine its
`render` (a TurnEvent → the §5 event name and body), so the log holds what the wire shows.
"""

from __future__ import annotations

import contextvars
import json
import logging
import queue
import threading
import time
import weakref
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import bindparam, insert, select, update
from sqlalchemy.orm import Session

from .. import tracing
from ..agent.base import (
    Agent,
    AgentError,
    HistoryMessage,
    Reply,
    ReplyDone,
    TextDelta,
    ToolCall,
    ToolCallDone,
    Turn,
    estimate_tokens,
)
from ..config import TurnSettings
from ..db import Database, utcnow
from ..errors import (
    ApiError,
    NotFound,
    TurnFinished,
    TurnInProgress,
    TurnInterrupted,
    UpstreamFailure,
    database_unavailable,
    log_failure,
    stored_failure,
)
from ..models import Conversation, Message, MessageStatus, Role, new_id
from ..speedups import start_thread
from . import conversations, idempotency, quotas
from .admission import Admission, Slot
from .cancels import Cancels, StopReason, StopSignal, stoppable
from .conversations import Access
from .events import Event, EventLog, TurnWriter
from .knowledge import EVERYWHERE, Scope
from .toolbox import Done, ToolBox, executed, tools_for

log = logging.getLogger(__name__)

TITLE_CHARS = 80
STOP_WAIT = 5.0  # a stopped turn waits this long at most for its running tool call (one UoW)


@dataclass(frozen=True)
class IdempotencyKey:
    """An Idempotency-Key as the transport received it: `scope` says whose (contract §1)."""

    scope: str
    route: str
    key: str
    body: dict[str, Any]


@dataclass(frozen=True)
class TurnRequest:
    """What every transport asks for: who, which conversation (None: a new one), what."""

    access: Access
    kind: str  # conversations.USER or SESSION
    message: str
    conversation_id: str | None = None
    idempotency: IdempotencyKey | None = None
    client_address: str | None = None  # whom an anonymous caller's quota counts against
    timezone: str = "UTC"  # the caller's IANA zone (X-Timezone), for the agent's dates
    # A stateless client (the OpenAI-compatible API) sends the context itself: these messages
    # replace the stored history (trimmed by the same limits). None: the stored history.
    context: tuple[HistoryMessage, ...] | None = None
    instructions: str = ""  # the client's own system message, after the agent's prompt
    sampling: Mapping[str, Any] = field(default_factory=dict)  # passed on to the agent
    knowledge_only: bool = False  # no task tools, even for a turn that has a user
    scope: Scope = EVERYWHERE  # what its knowledge searches may return


@dataclass(frozen=True)
class Context:
    messages: int
    truncated: bool


@dataclass(frozen=True)
class TurnStarted:
    """The turn's ids, known before the agent runs (the `meta` event)."""

    conversation_id: str
    message_id: str
    kind: str


@dataclass(frozen=True)
class SourcesFound:
    sources: list[dict[str, Any]]


@dataclass(frozen=True)
class TurnResult:
    """A settled turn as stored: what a JSON response, a `done` event or a replay shows."""

    conversation_id: str
    message_id: str
    kind: str
    text: str
    tool_calls: list[dict[str, Any]]
    sources: list[dict[str, Any]]
    usage: dict[str, int]
    model: str | None
    status: str
    created_at: datetime
    context: Context
    timings: dict[str, float] = field(default_factory=dict)
    error_code: str | None = None  # why a failed turn failed
    quota_remaining: int | None = None  # tokens left today after this turn, when a quota applies


@dataclass(frozen=True)
class TurnFailed:
    """The turn ended in an error (stored as a failed reply when it got that far)."""

    error: ApiError


TurnEvent = TurnStarted | TextDelta | ToolCallDone | SourcesFound | TurnResult | TurnFailed
# A turn event as the wire names it (§5): (event name, body); None: no wire form.
Render = Callable[[TurnEvent], tuple[str, dict[str, Any]] | None]


@dataclass
class _Pending:
    started: TurnStarted
    user_message_id: str
    turn: Turn
    context: Context
    idempotent: bool
    quota_subject: str
    quota_remaining: int | None  # at admission
    knowledge_only: bool = False
    scope: Scope = EVERYWHERE
    done: list[Done] = field(default_factory=list)  # tool calls earlier attempts executed
    timings: dict[str, float] = field(default_factory=lambda: {"db": 0.0, "agent": 0.0})
    stop: StopSignal = field(default_factory=StopSignal)  # a cancel, from anywhere
    slot: Slot | None = None  # its place among the worker's turns in flight, until it ends
    log: TurnWriter | None = None  # its event log's writer (a streamed or background turn)


class TurnEngine:
    """The one entry point for a turn. Built once per app with its database, agent and
    settings; `observe` (metrics) sees every settled turn."""

    def __init__(
        self,
        database: Database,
        agent: Agent,
        settings: TurnSettings,
        *,
        observe: Callable[[TurnResult, list[str]], None] | None = None,
        events: EventLog | None = None,
        render: Render | None = None,
        admission: Admission | None = None,
    ) -> None:
        self.database = database
        self.agent = agent
        self.settings = settings
        self._observe = observe
        self.leases = Leases(database, conversations.lease_seconds(settings.lifetimes()))
        self.cancels = Cancels(database, settings.cancel_poll_seconds, settings.events_redis_url)
        self.events = events
        self.render = render  # with `events`: streamed turns are logged
        self.admission = admission or Admission(
            settings.max_streams_per_worker, settings.overload_lag_ms,
            settings.overload_retry_after_seconds,
        )  # fmt: skip

    # The event log -------------------------------------------------------------------------

    def follow(self, message_id: str, after: int, wait: float) -> Iterator[list[Event] | None]:
        """A turn's logged events after id `after`, then its live ones until `done` or
        `error`, in runs of the events ready together (None after `wait` s of silence). A turn
        whose worker died is failed here once its lease lapsed, so the reader ends instead of
        waiting for it."""
        assert self.events is not None
        return self.events.runs(message_id, after, wait, lambda: self._outcome(message_id))

    def interrupted(self, message_ids: list[str] | tuple[str, ...]) -> None:
        """End the logs of turns failed as stale (their worker died) with their `error`."""
        if self.events is None or self.render is None or not message_ids:
            return
        named = self.render(TurnFailed(TurnInterrupted()))
        assert named is not None
        for message_id in message_ids:
            try:
                self.events.append(message_id, *named)
            except Exception as error:  # its readers still end, from the stored status
                log.warning("interrupted turn's log not ended: %s", type(error).__name__)

    def _outcome(self, message_id: str) -> tuple[str, dict[str, Any], float] | None:
        """None while the turn runs (a stale one is failed first); else the ending its stored
        message makes, and how many seconds ago it was settled."""
        assert self.render is not None
        with self.database.read() as session:
            row = session.execute(_OUTCOME, {"b_id": message_id}).first()
        if row is None:
            gone = self.render(TurnFailed(NotFound("The message no longer exists.")))
            assert gone is not None
            return (*gone, float("inf"))
        if row.status == MessageStatus.PENDING:
            lease = conversations.lease_seconds(self.settings.lifetimes())
            started = row.turn_started_at
            if started is None or (utcnow() - started).total_seconds() > lease:
                self._fail_stale(row.conversation_id)
            return None
        if row.status == MessageStatus.FAILED:
            named = self.render(TurnFailed(stored_failure(row.error_code)))
        else:
            named = self.render(self.stored(message_id))
        assert named is not None
        age = (utcnow() - row.completed_at).total_seconds() if row.completed_at else float("inf")
        return (*named, age)

    def _fail_stale(self, conversation_id: str) -> None:
        with self.database.transaction() as session:
            failed = conversations.fail_stale_turns(
                session, self.settings.lifetimes(), utcnow(), conversation_id
            )
        self.interrupted(failed)

    def take(self, request: TurnRequest) -> TurnHandle:
        """Replay the turn an idempotent retry asks for, or start a new one: 503 `overloaded`
        when this worker cannot take one more (nothing is stored: a retry with the same key
        starts it later), 409 while another turn holds the conversation, 404/410 for one the
        caller cannot use."""
        attempt = self._attempt(request.idempotency)
        if attempt is not None:
            with self.database.read() as session:
                replay = idempotency.look_up(session, attempt)
            if replay is not None:
                return TurnHandle(self, self.stored(replay), None)
        slot = self.admission.admit()
        try:
            pending = self._begin(request, attempt)
        except BaseException:
            slot.release()
            raise
        pending.slot = slot
        return TurnHandle(self, None, pending)

    def stored(self, message_id: str) -> TurnResult:
        """A settled turn, read back from its stored reply."""
        with self.database.read() as session:
            row = session.execute(
                select(Message, Conversation.kind)
                .join(Conversation, Conversation.id == Message.conversation_id)
                .where(Message.id == message_id)
            ).first()
            if row is None:
                raise NotFound("The conversation does not exist.")
            message, kind = row
            return TurnResult(
                conversation_id=message.conversation_id, message_id=message.id, kind=kind,
                text=message.content, tool_calls=list(message.tool_calls or ()),
                sources=list(message.sources or ()), usage=message.usage, model=message.model,
                status=message.status, created_at=message.created_at,
                context=Context(message.context_messages or 0, bool(message.context_truncated)),
                error_code=message.error_code,
            )  # fmt: skip

    def cancel(self, conversation_id: str, message_id: str, access: Access) -> TurnStarted:
        """Ask the turn whose reply is `message_id` to stop, wherever it runs: the reply is
        flagged (unit of work), then the turn is stopped here if it runs here, else announced
        to the other workers and hosts. 404 for a reply the caller cannot see, 409
        `turn_finished` once it has ended (a turn whose worker died is failed first)."""
        now = utcnow()
        rules = self.settings.lifetimes()
        with self.database.transaction() as session:
            conversation = conversations.find(session, conversation_id, access, config=rules)
            kind = conversation.kind
            if conversation.active_turn_id is not None:
                conversations.fail_stale_turns(session, rules, now, conversation.id)
            flagged = session.execute(
                _REQUEST_CANCEL,
                {"b_id": message_id, "b_conversation": conversation.id, "cancel_requested_at": now},
            ).rowcount
            status = None if flagged else session.execute(
                _REPLY_STATUS, {"b_id": message_id, "b_conversation": conversation.id}
            ).scalar_one_or_none()  # fmt: skip
        if not flagged:
            if status is None:
                raise NotFound("The message does not exist.")
            raise TurnFinished()
        if not self.cancels.stop(message_id):
            self.cancels.announce(message_id)
        return TurnStarted(conversation_id, message_id, kind)

    def drain(self, wait: float) -> int:
        """The worker is leaving: let the turns still running here (background ones, streams
        whose reader has gone) finish for up to `wait` seconds, then stop the rest, which are
        stored `failed` (`interrupted`) so that clients know to retry. The number stopped."""
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline and self.cancels.running:
            time.sleep(0.1)
        stopped = self.cancels.stop_all(StopReason.INTERRUPTED)
        settle_by = time.monotonic() + STOP_WAIT
        while time.monotonic() < settle_by and self.cancels.running:
            time.sleep(0.05)
        return stopped

    def _attempt(self, key: IdempotencyKey | None) -> idempotency.Attempt | None:
        if key is None:
            return None
        return idempotency.Attempt.of(
            key.scope, key.route, key.key, key.body, self.settings.idempotency_ttl_seconds,
            conversations.lease_seconds(self.settings.lifetimes()),
        )  # fmt: skip

    # Unit of work 1 ------------------------------------------------------------------------

    def _begin(self, request: TurnRequest, attempt: idempotency.Attempt | None) -> _Pending:
        """Claim the conversation for one turn, then read its context and store the user's
        message (with an idempotent retry of a failed attempt, the stored one is reused)."""
        started = time.perf_counter()
        now = utcnow()
        assistant_id = new_id()
        retry = attempt.retry if attempt else None
        conversation_id = retry.conversation_id if retry else request.conversation_id
        kind = request.kind
        who = quotas.subject(request.access.user_id, request.client_address)
        failed: list[str] = []
        # A new conversation without a key is Core statements only (most turns of P1): no
        # Session. Loading a conversation and claiming a key use the ORM.
        core = conversation_id is None and attempt is None
        unit = self.database.statements() if core else self.database.transaction()
        with tracing.span("chatsvc.turn.begin"), unit as session:
            # Before any model call, after the idempotency look-up (a replay costs nothing).
            quota = quotas.admit(session, who, self.settings.quota_tokens_per_day)
            if conversation_id is None:
                conversation_id = _create(
                    session, request.access, kind, request.message, assistant_id, now
                )
                user_id = request.access.user_id
                history: tuple[HistoryMessage, ...] = ()
                context = Context(0, False)
                seq = 1
            else:
                rules = self.settings.lifetimes()
                conversation = conversations.find(
                    session, conversation_id, request.access, config=rules
                )
                if conversation.active_turn_id is not None:
                    failed = conversations.fail_stale_turns(session, rules, now, conversation.id)
                kind, user_id = conversation.kind, conversation.user_id
                # Claimed first: the history read next holds every turn that finished before.
                seq = _claim(session, conversation_id, assistant_id, now, 1 if retry else 2)
                # The messages are stamped once the conversation is this turn's: the turn before
                # it may have stamped its reply (and released the conversation) while this
                # request waited for a connection (single-host soak: created_at went back)
                now = utcnow()
                skip = retry.user_message_id if retry else None
                if request.context is None:
                    history, context = _context(
                        session, conversation_id, self.settings, request.message, skip
                    )
            if request.context is not None:
                history, context = _given_context(request.context, self.settings, request.message)
            rows = []
            if retry is None:
                user_message_id = new_id()
                rows.append(
                    _message_row(user_message_id, conversation_id, seq, Role.USER,
                                 request.message, now)
                )  # fmt: skip
                seq += 1
            else:
                user_message_id = retry.user_message_id
            rows.append(_message_row(assistant_id, conversation_id, seq, Role.ASSISTANT, "", now))
            session.execute(_INSERT_MESSAGES, rows)
            done = executed(session, user_message_id) if retry is not None else []
            if attempt is not None:
                idempotency.claim(
                    session, attempt, conversation_id=conversation_id,
                    user_message_id=user_message_id, assistant_message_id=assistant_id, now=now,
                )  # fmt: skip
        self.interrupted(failed)
        pending = _Pending(
            TurnStarted(conversation_id, assistant_id, kind),
            user_message_id,
            Turn(
                user_id,
                conversation_id,
                request.message,
                history,
                timezone=request.timezone,
                instructions=request.instructions,
                sampling=request.sampling,
            ),
            context,
            idempotent=attempt is not None,
            quota_subject=who,
            quota_remaining=quota.remaining,
            knowledge_only=request.knowledge_only,
            scope=request.scope,
            done=done,
        )
        pending.timings["db"] += _ms_since(started)
        return pending

    # The agent, then unit of work 2 -------------------------------------------------------

    def _run(self, pending: _Pending, *, watched: bool) -> Iterator[TurnEvent]:
        """The agent's events as they happen, then the stored TurnResult. An agent failure
        stores a `failed` reply and raises the contract's error; a stop (`pending.stop`: a
        cancel from anywhere) stores what was said so far as `cancelled` and yields that
        result last, as does a consumer that stops early (without the result)."""
        user_id = None if pending.knowledge_only else pending.turn.user_id
        tools = tools_for(
            self.database,
            user_id,
            scope=pending.scope,
            turn_key=pending.user_message_id,
            done=pending.done,
            stop=pending.stop,
        )
        text: list[str] = []
        calls: list[ToolCall] = []
        started = time.perf_counter()
        settled = False

        def settle(status: str, code: str | None) -> TurnResult:
            nonlocal settled
            settled = True
            pending.timings["agent"] = _ms_since(started)
            partial = Reply("".join(text), self.agent.name, list(calls))
            return self._finish(pending, tools, partial, status=status, error_code=code)

        message_id = pending.started.message_id
        self.cancels.register(message_id, pending.stop)
        # A stop (a cancel from anywhere) ends the loop below at once, even mid-silence.
        events = stoppable(
            tracing.steps(
                self.agent.stream(pending.turn, tools, watched=watched),
                f"invoke_agent {self.agent.name}",
                _agent_attributes(self.agent.name, pending),
                last=_is_reply,
            ),
            pending.stop,
        )
        self.leases.hold(message_id)
        try:
            for event in events:
                if isinstance(event, ReplyDone):
                    pending.timings["agent"] = _ms_since(started)
                    settled = True
                    sources = tools.citations.sources(event.reply.text, event.reply.cited)
                    if sources:
                        yield SourcesFound(sources)
                    yield self._finish(pending, tools, event.reply, sources=sources)
                    return
                if isinstance(event, TextDelta):
                    text.append(event.text)
                elif isinstance(event, ToolCallDone):
                    calls.append(event.call)
                yield event
            if pending.stop.is_set():
                # Stored with every tool call that took effect, seen by a reader or not.
                calls[:] = tools.finished(STOP_WAIT)
                if pending.stop.reason == StopReason.CANCELLED:
                    yield settle(MessageStatus.CANCELLED, None)
                    return
                # The worker is leaving: failed as a crash would leave it (its log: `error`).
                settle(MessageStatus.FAILED, TurnInterrupted.code)
                raise TurnInterrupted()
            settle(MessageStatus.FAILED, "upstream_error")
            raise UpstreamFailure("upstream_error", "The agent ended without an answer.")
        except GeneratorExit:
            if not settled:
                settle(MessageStatus.CANCELLED, None)
            raise
        except AgentError as error:
            if not settled:
                settle(MessageStatus.FAILED, error.code)
            raise UpstreamFailure(
                error.code, error.detail, retry_after=error.retry_after
            ) from error
        except ApiError:
            raise
        except Exception:
            if not settled:
                settle(MessageStatus.FAILED, "internal_error")
            raise
        finally:
            self.leases.release(message_id)
            self.cancels.unregister(message_id)
            if pending.slot is not None:
                pending.slot.release()
            close = getattr(events, "close", None)
            if close is not None:
                close()  # stops the provider's stream when the client has gone

    def _finish(
        self,
        pending: _Pending,
        tools: ToolBox,
        reply: Reply,
        *,
        sources: list[dict[str, Any]] | None = None,
        status: str = MessageStatus.COMPLETED,
        error_code: str | None = None,
    ) -> TurnResult:
        """Unit of work 2: store the reply's outcome and free the conversation. A logged turn
        first waits for the store to hold the events it logged so far: a reader elsewhere
        that finds the outcome then finds them too (events.TurnWriter.wait_stored)."""
        if pending.log is not None:
            pending.log.wait_stored()
        started = time.perf_counter()
        now = utcnow()
        tool_calls = [call.as_dict() for call in reply.tool_calls]
        sources = sources or []
        usage = reply.usage.as_dict()
        message_id = pending.started.message_id
        attributes = {"chatsvc.turn.status": str(status)}
        with (
            tracing.span("chatsvc.turn.finish", attributes),
            self.database.statements() as session,
        ):
            session.execute(
                _STORE_REPLY,
                {
                    "b_id": message_id,
                    "content": reply.text,
                    "status": str(status),
                    "error_code": error_code,
                    "tool_calls": tool_calls,
                    "sources": sources,
                    "model": reply.model,
                    "latency_ms": int(pending.timings["agent"]),
                    "context_messages": pending.context.messages,
                    "context_truncated": pending.context.truncated,
                    "created_at": now,  # the reply's time, as the response says
                    "completed_at": now,
                    **usage,
                },
            )
            session.execute(
                _RELEASE,
                {
                    "b_id": pending.started.conversation_id, "b_turn": message_id,
                    "active_turn_id": None, "turn_started_at": None, "last_activity": now,
                },
            )  # fmt: skip
            if pending.idempotent:
                idempotency.settle(session, message_id, status == MessageStatus.COMPLETED)
            quotas.settle(session, pending.quota_subject, usage["total_tokens"])
        pending.timings["db"] += _ms_since(started)
        result = TurnResult(
            conversation_id=pending.started.conversation_id, message_id=message_id,
            kind=pending.started.kind, text=reply.text, tool_calls=tool_calls, sources=sources,
            usage=usage, model=reply.model, status=str(status), created_at=now,
            context=pending.context, timings=pending.timings, error_code=error_code,
            quota_remaining=_less(pending.quota_remaining, usage["total_tokens"]),
        )  # fmt: skip
        if self._observe is not None:
            self._observe(result, [call.tool for call in reply.tool_calls])
        return result


class Leases:
    """The claims of the turns running in this process, renewed together (one UPDATE every
    third of the lease) while any runs: a worker that dies stops renewing, and its turns are
    failed in seconds by the next request on their conversation (or by cleanup)."""

    def __init__(self, database: Database, seconds: float) -> None:
        self._database = database
        self._interval = max(0.1, seconds / 3)
        self._running: set[str] = set()
        self._lock = threading.Lock()
        self._renewer: threading.Thread | None = None

    def hold(self, message_id: str) -> None:
        with self._lock:
            self._running.add(message_id)
            if self._renewer is None:
                self._renewer = threading.Thread(
                    target=self._renew, name="turn-leases", daemon=True
                )
                self._renewer.start()

    def release(self, message_id: str) -> None:
        with self._lock:
            self._running.discard(message_id)

    def _renew(self) -> None:
        while True:
            time.sleep(self._interval)
            with self._lock:  # held while renewing: a released turn is never renewed after
                running = list(self._running)
                if not running:
                    self._renewer = None
                    return
                try:
                    with self._database.transaction() as session:
                        session.execute(_RENEW, {"b_turns": running, "turn_started_at": utcnow()})
                except Exception as error:  # the next round tries again; the turns go on
                    log.warning("turn leases not renewed: %s", type(error).__name__)


class TurnHandle:
    """A taken turn: replayed (already settled) or pending (the agent has not run yet). Run it
    once, through `result()` (nobody watches it happen) or `events()` (somebody does)."""

    def __init__(self, engine: TurnEngine, replay: TurnResult | None, pending: _Pending | None):
        self._engine = engine
        self._replay = replay
        self._pending = pending
        self._trace = tracing.capture()  # continued in the thread that runs a watched turn
        # The run's thread runs in a copy of the taker's context (its request id, app and
        # request globals: the log renders events there), whichever thread reads the events.
        self._context = contextvars.copy_context()
        # set: the run stops (its reader has gone, a cancel came from anywhere)
        self._stop = pending.stop if pending is not None else StopSignal()
        self._started = False
        if pending is not None and pending.slot is not None:
            # A handle dropped without running (its transport failed first) gives its place back.
            weakref.finalize(self, pending.slot.release)

    @property
    def replayed(self) -> bool:
        return self._replay is not None

    @property
    def quota_remaining(self) -> int | None:
        """Tokens left today as the turn starts (a replay: as it ended); None: no quota."""
        if self._replay is not None:
            return self._replay.quota_remaining
        assert self._pending is not None
        return self._pending.quota_remaining

    @property
    def started(self) -> TurnStarted:
        if self._replay is not None:
            return TurnStarted(self._replay.conversation_id, self._replay.message_id,
                               self._replay.kind)  # fmt: skip
        assert self._pending is not None
        return self._pending.started

    def result(self) -> TurnResult:
        """Run the turn to its end; raises the contract's error when the agent fails."""
        if self._replay is not None:
            return self._replay
        assert self._pending is not None
        for event in self._engine._run(self._pending, watched=False):
            if isinstance(event, TurnResult):
                return event
        raise AssertionError("a turn's run ends with a TurnResult or an error")

    def stream(self, wait: float) -> Iterator[list[Event] | None]:
        """Run the turn and read its event log as it is written (the log's first reader: the
        same ids and bodies every later reader gets), ending with `done` or `error`, in runs
        of the events ready together; a None after `wait` seconds of silence. Closing this
        early (the client has gone) leaves the turn running, unless TURN_ON_DISCONNECT=cancel:
        then what was said so far is stored `cancelled` (its log ends with that `done`). Not
        for a replay (see `events`)."""
        assert self._pending is not None and self._engine.events is not None
        self.start()
        reader = self._engine.follow(self._pending.started.message_id, 0, wait)
        try:
            yield from reader
        finally:
            reader.close()
            if self._engine.settings.on_disconnect == "cancel":
                self._stop.set()  # a no-op when the run is over

    def events(self, wait: float, *, outlive: bool = False) -> Iterator[TurnEvent | None]:
        """`TurnStarted`, the run's events as they happen, then a `TurnResult` or `TurnFailed`.
        The agent runs in its own thread (a greenlet under gevent): a `None` comes after `wait`
        seconds of silence (for a keep-alive), and closing this iterator early (the client has
        gone) stops the run, which stores what was said so far as `cancelled` — unless
        `outlive`: then the turn goes on and is stored as it ends (TURN_ON_DISCONNECT=continue,
        for a transport that renders these events itself). The run's events are logged as
        `stream` logs them."""
        if self._replay is not None:
            yield self.started
            yield self._replay
            return
        assert self._pending is not None
        feed: queue.SimpleQueue[Any] = queue.SimpleQueue()
        stop = self._stop
        self._start(feed)  # before the first event: a reader gone at once still settles it
        try:
            yield self.started
            while True:
                try:
                    event = feed.get(timeout=wait)
                except queue.Empty:
                    yield None
                    continue
                if event is _END:
                    return
                yield event
                if isinstance(event, TurnFailed):
                    return
        finally:
            if not outlive:
                stop.set()  # a no-op when the run is over; otherwise the client has gone

    def cancel(self) -> None:
        """Stop the run now (what was said so far is stored `cancelled`) while its reader
        stays: `events()` then ends with that `cancelled` TurnResult. For transports that
        outlive a turn (the WebSocket, the terminal chat)."""
        self._stop.set()

    def start(self) -> None:
        """Run the turn with nobody watching but its event log (a background turn): read it
        with `engine.follow`. Once per handle, as `stream`, `events` and `result` are."""
        self._start(None)

    def _start(self, feed: queue.SimpleQueue[Any] | None) -> None:
        """The run, in its own thread, in the context the turn was taken in; its events go to
        the log (when the engine keeps one) and to `feed`."""
        assert self._pending is not None and not self._started, "a turn runs once"
        self._started = True
        if self._pending.slot is not None:
            self._pending.slot.stream()
        engine = self._engine
        logged = engine.events is not None and engine.render is not None
        writer = engine.events.writer(self._pending.started.message_id) if logged else None
        self._pending.log = writer
        start_thread(self._context.run, self._feed, feed, writer,
                     name=f"turn-{self._pending.started.message_id}")  # fmt: skip

    def _feed(
        self,
        feed: queue.SimpleQueue[Any] | None,
        writer: TurnWriter | None,
    ) -> None:
        assert self._pending is not None
        with tracing.attached(self._trace):
            try:
                self._record(writer, self._pending.started)
                run = self._engine._run(self._pending, watched=True)
                first = True  # no text handed to the reader yet
                # A stop (the reader has gone, a cancel) ends the run itself: it stores what
                # was said so far and yields that `cancelled` result last.
                for event in run:
                    self._record(writer, event)
                    if feed is not None:
                        feed.put(event)
                    if first:
                        # Let the reader send it now: when the provider's first chunks arrive
                        # together, the run would otherwise read them all (and store the
                        # reply) first. Later events that arrive together are sent together
                        # (the reader takes all that is ready): a hub round trip each cost
                        # CPU on every delta (speedups.py).
                        time.sleep(0)
                        first = not isinstance(event, TextDelta)
            except ApiError as error:
                self._failed(writer, feed, error)
            except Exception as error:
                lost = database_unavailable(error)
                if lost is not None:  # the database went away: 503, as for any other request
                    log.error("database unavailable in a stream: %s", type(error).__name__)
                    self._failed(writer, feed, lost)
                else:
                    log_failure("turn failed", error)
                    self._failed(writer, feed, ApiError())
            finally:
                self._end(writer)
                if feed is not None:
                    feed.put(_END)

    def _record(self, writer: TurnWriter | None, event: TurnEvent) -> None:
        if writer is None or writer.ended:
            return
        assert self._engine.render is not None
        named = self._engine.render(event)
        if named is not None:
            writer.append(*named)

    def _failed(
        self, writer: TurnWriter | None, feed: queue.SimpleQueue[Any] | None, error: ApiError
    ) -> None:
        failed = TurnFailed(error)
        if feed is not None:
            feed.put(failed)
        try:
            self._record(writer, failed)
        except Exception as problem:
            log_failure("turn's error not logged", problem)

    def _end(self, writer: TurnWriter | None) -> None:
        """Close the turn's log; a run that stopped without an ending (cancelled) ends it with
        the reply as stored."""
        if writer is None:
            return
        assert self._pending is not None
        try:
            if not writer.ended:
                stored = self._engine.stored(self._pending.started.message_id)
                if stored.status == MessageStatus.PENDING:
                    self._record(writer, TurnFailed(ApiError()))
                else:
                    self._record(writer, stored)
        except Exception as error:
            try:
                self._record(writer, TurnFailed(database_unavailable(error) or ApiError()))
            except Exception as problem:
                log_failure("turn's ending not logged", problem)
        finally:
            writer.close()


_END = object()  # the feed is over


def _is_reply(event: Any) -> bool:
    return isinstance(event, ReplyDone)


def _agent_attributes(name: str, pending: _Pending) -> dict[str, Any]:
    """The agent span's attributes (ids, never the message's text)."""
    return {
        "gen_ai.operation.name": "invoke_agent",
        "gen_ai.agent.name": name,
        "gen_ai.conversation.id": pending.started.conversation_id,
        "chatsvc.message_id": pending.started.message_id,
    }


# The turn's own statements, built once. Building SQLAlchemy statements (ORM ones above all)
# cost more CPU than running them; these are plain table statements whose SET clauses come
# from the parameters they are executed with.
_ANSWERED = (MessageStatus.COMPLETED.value, MessageStatus.CANCELLED.value)
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
    select(_MESSAGES.c.role, _MESSAGES.c.content, _MESSAGES.c.tool_calls, _MESSAGES.c.status)
    .where(
        _MESSAGES.c.conversation_id == bindparam("b_conversation"),
        _MESSAGES.c.status != MessageStatus.PENDING.value,
        _MESSAGES.c.id != bindparam("b_skip"),
    )
    .order_by(_MESSAGES.c.seq.desc())
    .limit(bindparam("b_limit"))
)
_STORE_REPLY = update(_MESSAGES).where(
    _MESSAGES.c.id == bindparam("b_id"), _MESSAGES.c.status == MessageStatus.PENDING.value
)
_RENEW = update(_CONVERSATIONS).where(
    _CONVERSATIONS.c.active_turn_id.in_(bindparam("b_turns", expanding=True))
)
_REQUEST_CANCEL = update(_MESSAGES).where(
    _MESSAGES.c.id == bindparam("b_id"),
    _MESSAGES.c.conversation_id == bindparam("b_conversation"),
    _MESSAGES.c.role == Role.ASSISTANT.value,
    _MESSAGES.c.status == MessageStatus.PENDING.value,
)
_REPLY_STATUS = select(_MESSAGES.c.status).where(
    _MESSAGES.c.id == bindparam("b_id"),
    _MESSAGES.c.conversation_id == bindparam("b_conversation"),
    _MESSAGES.c.role == Role.ASSISTANT.value,
)
# What a silent reader of a turn's log asks: is the reply settled, is its claim still renewed?
_OUTCOME = (
    select(
        _MESSAGES.c.status, _MESSAGES.c.error_code, _MESSAGES.c.completed_at,
        _MESSAGES.c.conversation_id, _CONVERSATIONS.c.turn_started_at,
    )
    .select_from(_MESSAGES.outerjoin(
        _CONVERSATIONS,
        (_CONVERSATIONS.c.id == _MESSAGES.c.conversation_id)
        & (_CONVERSATIONS.c.active_turn_id == _MESSAGES.c.id),
    ))
    .where(_MESSAGES.c.id == bindparam("b_id"))
)  # fmt: skip
_RELEASE = update(_CONVERSATIONS).where(
    _CONVERSATIONS.c.id == bindparam("b_id"), _CONVERSATIONS.c.active_turn_id == bindparam("b_turn")
)


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
    message_id: str, conversation_id: str, seq: int, role: Role, content: str, now: datetime
) -> dict[str, Any]:
    """A new message: the user's is complete when stored; the assistant's waits for the agent."""
    done = role == Role.USER
    return {
        "id": message_id, "conversation_id": conversation_id, "seq": seq, "role": str(role),
        "content": content,
        "status": str(MessageStatus.COMPLETED if done else MessageStatus.PENDING),
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
        raise TurnInProgress()
    return claimed - slots + 1


def _context(
    session: Session,
    conversation_id: str,
    settings: TurnSettings,
    message: str,
    skip: str | None = None,
) -> tuple[tuple[HistoryMessage, ...], Context]:
    """The newest HISTORY_LIMIT messages of the conversation's answered exchanges (oldest
    first), trimmed from the oldest end so they and the new message fit HISTORY_MAX_TOKENS.

    A user message goes to the model only with the answer it got (completed, or cancelled with
    what was said): one whose turn failed stays in the history a person sees, but the model is
    not sent it — the next turn must not silently carry out a request the user may have given
    up on (a retry with the same Idempotency-Key runs that turn again). An assistant message
    carries its tool calls and their results, so it is kept or dropped whole. The history
    starts with a user message, as strict chat templates demand."""
    limit = settings.history_limit
    window = 2 * limit + 2  # failed exchanges take room in the window, not in the context
    newest = session.execute(
        _NEWEST_MESSAGES,
        {"b_conversation": conversation_id, "b_skip": skip or "", "b_limit": window},
    ).all()
    truncated = len(newest) == window
    budget = settings.history_max_tokens - estimate_tokens(message)
    kept: list[HistoryMessage] = []
    answered = False  # the exchange being walked (newest first) got an answer
    for row in newest:
        if row.role == Role.ASSISTANT:
            if row.status not in _ANSWERED:
                continue
            answered = True
            if not row.content and not row.tool_calls:
                continue
        elif not answered:
            continue  # its turn failed: not sent to the model
        else:
            answered = False
        if len(kept) == limit:
            truncated = True
            break
        item = HistoryMessage(
            row.role, row.content, tuple(ToolCall(**call) for call in row.tool_calls or ())
        )
        budget -= message_tokens(item)
        if budget < 0:
            truncated = True
            break
        kept.append(item)
    while kept and kept[-1].role != Role.USER:
        kept.pop()
        truncated = True
    kept.reverse()
    return tuple(kept), Context(len(kept), truncated)


def _given_context(
    given: tuple[HistoryMessage, ...], settings: TurnSettings, message: str
) -> tuple[tuple[HistoryMessage, ...], Context]:
    """A client's own context (stateless APIs), held to the stored history's limits: the
    newest HISTORY_LIMIT messages that fit HISTORY_MAX_TOKENS with the new message."""
    budget = settings.history_max_tokens - estimate_tokens(message)
    kept: list[HistoryMessage] = []
    for item in reversed(given[-settings.history_limit :] if settings.history_limit else ()):
        budget -= message_tokens(item)
        if budget < 0:
            break
        kept.append(item)
    kept.reverse()
    return tuple(kept), Context(len(kept), len(kept) < len(given))


def message_tokens(item: HistoryMessage) -> int:
    """A history message's estimated size, its tool calls and results included."""
    return estimate_tokens(item.content) + sum(
        estimate_tokens(json.dumps(call.parameters) + json.dumps(call.result))
        for call in item.tool_calls
    )


def _title(message: str) -> str:
    line = " ".join(message.split())
    if len(line) <= TITLE_CHARS:
        return line
    cut = line[: TITLE_CHARS - 1].rsplit(" ", 1)[0] or line[: TITLE_CHARS - 1]
    return cut + "…"


def _less(remaining: int | None, tokens: int) -> int | None:
    return None if remaining is None else max(0, remaining - tokens)


def _ms_since(started: float) -> float:
    return (time.perf_counter() - started) * 1000
