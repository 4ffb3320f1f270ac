"""The event log of a turn (contract §5, "Turns outlive their connection").

Every event a turn produces (`meta`, `delta`, `tool_call`, `sources`, then `done` or `error`)
gets a per-turn id 1, 2, 3… and is appended to the turn's log. Every reader reads that log:
the chat POST's own SSE response first, then any resume, on any worker or host. The log lives
in the database (the embedded default) or in Redis Streams (EVENTS_REDIS_URL); or, for one
worker or a measurement, in this process's memory only (TURN_EVENTS_STORE=memory).

Public names (other transports and the cancel path use these; keep them stable):

    Event(id, name, data)                one logged event; `data` is its JSON text, as sent
    EventLog.open(settings, database)    this process's log, on the configured backend
    log.writer(message_id) -> TurnWriter the one writer of a turn running in this process:
        writer.append(name, body) -> Event   numbered and handed to this process's readers
                                         at once; stored in batches by a flusher (never waits
                                         on the store)
        writer.wait_stored() -> bool     until the store holds every event appended so far
                                         (the turn's outcome is committed after: see there)
        writer.close()                   the turn is over (after its `done` or `error`)
    log.append(message_id, name, body)   an event from outside the running turn (the `error`
                                         of a turn failed as stale): numbered after the stored
                                         ones (or handed to the writer when the turn runs
                                         here), stored at once
    log.read(message_id, after)          the events after id `after`, in order
    log.follow(message_id, after, wait, outcome)   replay after `after`, then the live events
                                         until `done`/`error`; None after `wait` s of silence
    log.runs(message_id, after, wait, outcome)     the same, as lists of the events ready
                                         together (one write for a reader that fell behind)
    log.expire(now)                      drop stored logs older than TURN_EVENTS_TTL_SECONDS
    log.close()                          store what is pending (a worker exits)

Readers of a turn running in this process read its events from memory (the "head"); readers
elsewhere read the store: a blocking XREAD on Redis, a short poll of the table otherwise. A
reader that meets silence asks `outcome` (the turn engine: the message's stored status) so a
turn whose worker died still ends: see `follow`.
"""

from __future__ import annotations

import contextlib
import json
import logging
import queue
import threading
import time
from collections import OrderedDict, deque
from collections.abc import Callable, Iterator
from datetime import datetime, timedelta
from typing import Any, NamedTuple, Protocol

from sqlalchemy import bindparam, delete, select
from sqlalchemy.dialects.postgresql import insert as postgres_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert

from ..config import TurnSettings
from ..db import Database, utcnow
from ..errors import database_unavailable
from ..models import LoggedEvent

log = logging.getLogger(__name__)

TERMINAL = frozenset({"done", "error"})
# Redis MAXLEN per turn, in runs of events (each at least one event): above what one turn can
# produce (a reply is at most 32,000 characters, one delta at least one; a few tool rounds add
# a few dozen events), so never reached by a real turn; it bounds a runaway writer.
MAX_EVENTS_PER_TURN = 40_000
# A turn's outcome is committed once the store holds every event before its ending
# (`TurnWriter.wait_stored`), and before its ending is stored (by the flusher, milliseconds
# later): a reader that finds the message settled and no `done`/`error` in the log waits this
# long (counted from the settling) before it makes the ending from the stored message.
SETTLE_GRACE_SECONDS = 2.0
# How often a silent reader asks for the turn's stored status (and fails a stale turn).
STATUS_EVERY_SECONDS = 1.0
# Events waiting for the store beyond this are dropped, oldest first (the store is down):
# memory stays bounded, readers still end through the stored status.
MAX_PENDING = 100_000
MAX_BATCH = 5_000  # events stored in one transaction or pipeline
EXPIRE_EVERY_SECONDS = 60.0
MEMORY_TURNS = 10_000
# Rows of a turn that never got a `done`/`error` are dropped once this much older than the TTL.
ORPHAN_MARGIN = timedelta(days=1)


class Event(NamedTuple):
    """One event of a turn's log: its per-turn id, its §5 name and its JSON body (text). A
    tuple: made once per delta, on the stream's path."""

    id: int
    name: str
    data: str

    @property
    def terminal(self) -> bool:
        return self.name in TERMINAL


# What the reader asks when the log is silent: None while the turn runs; else the ending the
# stored message makes (name, body) and how many seconds ago it was settled.
Outcome = Callable[[], tuple[str, dict[str, Any], float] | None]


def encode(event_id: int, name: str, body: dict[str, Any]) -> Event:
    return Event(event_id, name, as_json(body))


# json.dumps(body, ensure_ascii=False) builds an encoder on every call; this one is built once.
_ENCODE = json.JSONEncoder(ensure_ascii=False).encode


def as_json(body: dict[str, Any]) -> str:
    """`body` as JSON text, exactly as json.dumps(body, ensure_ascii=False) writes it; a
    delta's `{"text": …}` (most of a turn's events) is put together around its encoded string,
    an eighth of the CPU of encoding the dict (speedups.py)."""
    if len(body) == 1:
        text = body.get("text")
        if type(text) is str:
            return '{"text": ' + _ENCODE(text) + "}"
    return _ENCODE(body)


class Store(Protocol):
    """A backend: where events are kept between processes."""

    def save(self, batch: list[tuple[str, Event]]) -> None: ...
    def read(self, message_id: str, after: int) -> list[Event]: ...
    def wait(self, message_id: str, after: int, timeout: float) -> list[Event]: ...
    def last(self, message_id: str) -> Event | None: ...
    def expire(self, cutoff: datetime) -> int: ...
    def close(self) -> None: ...


def runs(batch: list[tuple[str, Event]]) -> list[tuple[str, list[Event]]]:
    """A batch as one run of events per turn (a batch holds each turn's events in order)."""
    grouped: dict[str, list[Event]] = {}
    for message_id, event in batch:
        grouped.setdefault(message_id, []).append(event)
    return list(grouped.items())


def pack(events: list[Event]) -> str:
    """A run as stored: one event a line, `id<TAB>name<TAB>data` (JSON text never holds a raw
    tab or line break: it escapes them)."""
    return "\n".join(f"{e.id}\t{e.name}\t{e.data}" for e in events)


def unpack(text: str, after: int = 0) -> list[Event]:
    events = []
    for line in text.split("\n"):
        number, name, data = line.split("\t", 2)
        if int(number) > after:
            events.append(Event(int(number), name, data))
    return events


class DatabaseStore:
    """The table `turn_events`: a row per run of one turn's events stored together (a batch),
    keyed by the run's last id, so a delta costs a line of a row, not a row. A run someone else
    already stored under that id is skipped. Readers elsewhere poll the table."""

    def __init__(self, database: Database, poll_seconds: float) -> None:
        self._database = database
        self._poll = poll_seconds
        dialect = database.engine.dialect.name
        insert = postgres_insert if dialect == "postgresql" else sqlite_insert
        self._insert = insert(LoggedEvent.__table__).on_conflict_do_nothing()
        table = LoggedEvent.__table__
        self._read = (
            select(table.c.data)
            .where(table.c.message_id == bindparam("m"), table.c.seq > bindparam("after"))
            .order_by(table.c.seq)
        )
        self._last = (
            select(table.c.data)
            .where(table.c.message_id == bindparam("m"))
            .order_by(table.c.seq.desc())
            .limit(1)
        )

    def save(self, batch: list[tuple[str, Event]]) -> None:
        now = utcnow()
        rows = [
            {"message_id": message_id, "seq": run[-1].id, "name": run[-1].name,
             "data": pack(run), "created_at": now}
            for message_id, run in runs(batch)
        ]  # fmt: skip
        # The engine's own transaction, not an ORM session: a third less CPU a batch (measured:
        # 190 → 130 µs on SQLite, 610 → 380 µs on PostgreSQL), on the stream's path.
        with self._database.engine.begin() as connection:
            connection.execute(self._insert, rows)

    def read(self, message_id: str, after: int) -> list[Event]:
        with self._database.engine.connect() as connection:
            rows = connection.execute(self._read, {"m": message_id, "after": after}).scalars()
            return [event for data in rows for event in unpack(data, after)]

    def wait(self, message_id: str, after: int, timeout: float) -> list[Event]:
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                return []
            time.sleep(min(self._poll, left))
            events = self.read(message_id, after)
            if events:
                return events

    def last(self, message_id: str) -> Event | None:
        with self._database.engine.connect() as connection:
            data = connection.execute(self._last, {"m": message_id}).scalar()
        return unpack(data)[-1] if data else None

    def expire(self, cutoff: datetime) -> int:
        """Whole turns whose ending is older than `cutoff` (so no reader meets half a log),
        and rows of endless logs (a turn whose ending was never stored) a day after that."""
        table = LoggedEvent.__table__
        ended = (
            select(table.c.message_id)
            .where(table.c.created_at < cutoff, table.c.name.in_(sorted(TERMINAL)))
            .scalar_subquery()
        )
        with self._database.transaction() as session:
            gone = session.execute(delete(table).where(table.c.message_id.in_(ended))).rowcount
            old = table.c.created_at < cutoff - ORPHAN_MARGIN
            gone += session.execute(delete(table).where(old)).rowcount
        return gone

    def close(self) -> None:
        return None


class MemoryStore:
    """This process only (TURN_EVENTS_STORE=memory): no resume on another worker or host, no
    I/O; what the log costs apart from its store (bench P5), or a single-worker deployment.
    At most MEMORY_TURNS turns are kept, the oldest dropped first."""

    def __init__(self) -> None:
        self._turns: OrderedDict[str, tuple[float, list[Event]]] = OrderedDict()
        self._lock = threading.Lock()

    def save(self, batch: list[tuple[str, Event]]) -> None:
        with self._lock:
            for message_id, event in batch:
                kept = self._turns.setdefault(message_id, (time.time(), []))[1]
                if not kept or kept[-1].id < event.id:
                    kept.append(event)
            while len(self._turns) > MEMORY_TURNS:
                self._turns.popitem(last=False)

    def read(self, message_id: str, after: int) -> list[Event]:
        with self._lock:
            kept = self._turns.get(message_id, (0.0, []))[1]
            return [e for e in kept if e.id > after]

    def wait(self, message_id: str, after: int, timeout: float) -> list[Event]:
        time.sleep(timeout)
        return self.read(message_id, after)

    def last(self, message_id: str) -> Event | None:
        with self._lock:
            kept = self._turns.get(message_id, (0.0, []))[1]
            return kept[-1] if kept else None

    def expire(self, cutoff: datetime) -> int:
        with self._lock:
            old = [m for m, (at, _) in self._turns.items() if at < cutoff.timestamp()]
            for message_id in old:
                del self._turns[message_id]
        return len(old)

    def close(self) -> None:
        return None


class RedisStore:
    """Redis Streams: one stream per turn, an entry per run of events stored together whose
    id is `0-<the run's last event id>` (so a reader resumes with XREAD after
    `0-<Last-Event-ID>`, and Redis refuses a run at or below one it holds), capped by MAXLEN,
    expiring TURN_EVENTS_TTL_SECONDS after its last write."""

    PREFIX = "chatsvc:turn-events:"

    def __init__(self, url: str, ttl_seconds: int) -> None:
        import redis  # only when configured

        # Blocking reads last at most STATUS_EVERY_SECONDS; the socket waits a little longer.
        self._redis = redis.Redis.from_url(
            url, socket_connect_timeout=5, socket_timeout=STATUS_EVERY_SECONDS + 10
        )
        self._ttl = ttl_seconds
        self._response_error = redis.ResponseError

    def _key(self, message_id: str) -> str:
        return self.PREFIX + message_id

    def save(self, batch: list[tuple[str, Event]]) -> None:
        pipe = self._redis.pipeline(transaction=False)
        for message_id, run in runs(batch):
            key = self._key(message_id)
            pipe.xadd(key, {"e": pack(run)}, id=f"0-{run[-1].id}", maxlen=MAX_EVENTS_PER_TURN)
            pipe.expire(key, self._ttl)
        for result in pipe.execute(raise_on_error=False):
            # An id at or below the stream's top: that event is already stored.
            if isinstance(result, Exception) and not isinstance(result, self._response_error):
                raise result

    def read(self, message_id: str, after: int) -> list[Event]:
        reply = self._redis.xread({self._key(message_id): f"0-{after}"})
        return self._events(reply, after)

    def wait(self, message_id: str, after: int, timeout: float) -> list[Event]:
        block = max(1, int(timeout * 1000))
        reply = self._redis.xread({self._key(message_id): f"0-{after}"}, block=block)
        return self._events(reply, after)

    def last(self, message_id: str) -> Event | None:
        newest = self._redis.xrevrange(self._key(message_id), count=1)
        return self._entries(newest, 0)[-1] if newest else None

    def expire(self, cutoff: datetime) -> int:
        return 0  # Redis expires each stream itself

    def close(self) -> None:
        self._redis.close()

    @staticmethod
    def _events(reply: Any, after: int) -> list[Event]:
        if not reply:
            return []
        _key, entries = reply[0]
        return RedisStore._entries(entries, after)

    @staticmethod
    def _entries(entries: Any, after: int) -> list[Event]:
        return [event for _id, fields in entries for event in unpack(fields[b"e"].decode(), after)]


class _Head:
    """A turn running in this process: its events in memory, for the readers here. Each
    reader waits on a doorbell of its own (a queue the writer rings on every event): under
    gevent a queue costs a third of what a Condition does per event (bench P5)."""

    def __init__(self, writer: TurnWriter) -> None:
        self.writer = writer
        self.events: list[Event] = []  # appended by the one writer; event n at index n - 1
        self.closed = False
        self._bells: tuple[queue.SimpleQueue[None], ...] = ()

    def add(self, event: Event) -> None:
        self.events.append(event)
        self._ring()

    def close(self) -> None:
        self.closed = True
        self._ring()

    def _ring(self) -> None:
        for bell in self._bells:
            if bell.empty():  # one ring is enough: the reader takes every event there is
                bell.put(None)

    def after(self, last: int, timeout: float, bell: queue.SimpleQueue[None]) -> list[Event] | None:
        """The events after id `last`, waiting up to `timeout` for one; None once the turn is
        over here and nothing more will come."""
        if bell not in self._bells:
            self._bells = (*self._bells, bell)  # copied, never changed in place: no lock
        if len(self.events) <= last and not self.closed:
            with contextlib.suppress(queue.Empty):  # silence: the caller decides what next
                bell.get(timeout=timeout)
        if len(self.events) > last:
            return self.events[last:]
        return None if self.closed else []

    def leave(self, bell: queue.SimpleQueue[None]) -> None:
        self._bells = tuple(b for b in self._bells if b is not bell)


class TurnWriter:
    """The one writer of a turn's log, in the process that runs the turn."""

    def __init__(self, events: EventLog, message_id: str) -> None:
        self._log = events
        self.message_id = message_id
        self._count = 0
        self._lock = threading.Lock()
        self.ended = False  # a `done` or `error` was appended
        self._head = _Head(self)
        self.saved = 0  # the last id the store holds (set by the flusher)
        self._saving: threading.Event | None = None  # rung by the flusher while `wait_stored`

    def append(self, name: str, body: dict[str, Any]) -> Event:
        with self._lock:
            self._count += 1
            event = encode(self._count, name, body)
            self.ended = self.ended or event.terminal
            self._head.add(event)
            self._log._enqueue(self.message_id, event)
        return event

    def wait_stored(self) -> bool:
        """Wait until the store holds every event appended so far (at most
        TURN_EVENTS_STORE_WAIT_SECONDS; False after that). The turn's outcome is committed
        after: a reader elsewhere that finds the turn settled finds those events in the log, and
        never makes an ending of its own while this worker's flusher still holds them (the
        store is slow, or down: a Redis restart, a database cut; the flusher tries again every
        half second meanwhile). The events reach this worker's readers at once regardless."""
        target = self._count
        if self.saved >= target:
            return True
        self._saving = saving = threading.Event()
        deadline = time.monotonic() + self._log.store_wait
        try:
            while self.saved < target:
                left = deadline - time.monotonic()
                if left <= 0:
                    log.warning("turn %s settled before its events were stored", self.message_id)
                    return False
                saving.wait(left)
                saving.clear()  # `saved` is read again after
            return True
        finally:
            self._saving = None

    def _saved(self, last: int) -> None:
        """The flusher stored this turn's events up to id `last`."""
        self.saved = max(self.saved, last)
        saving = self._saving
        if saving is not None:
            saving.set()

    def close(self) -> None:
        self._head.close()
        self._log._enqueue(self.message_id, None)


class EventLog:
    """This process's view of the event log (see the module's docstring)."""

    def __init__(self, store: Store, settings: TurnSettings) -> None:
        self.store = store
        self._ttl = timedelta(seconds=settings.events_ttl_seconds)
        self._flush_seconds = settings.events_flush_ms / 1000
        self.store_wait = settings.events_store_wait_seconds
        self._live: dict[str, _Head] = {}
        # Appended by writers, taken by the flusher (deque appends and pops are atomic).
        self._pending: deque[tuple[str, Event | None]] = deque()
        self._wake = threading.Event()  # set: the flusher has something to store
        self._idle = True  # the flusher waits for `_wake` (or has not started)
        self._flusher: threading.Thread | None = None
        self._starting = threading.Lock()
        self._expired_at = time.monotonic()
        self._warned_at = -10.0  # when a reader last warned that the store is unreachable
        self._flushing = threading.Lock()  # one batch at a time, in order
        self._closed = False

    @classmethod
    def open(cls, settings: TurnSettings, database: Database) -> EventLog:
        if settings.events_redis_url:
            store: Store = RedisStore(settings.events_redis_url, settings.events_ttl_seconds)
        elif settings.events_store == "memory":
            store = MemoryStore()
        else:
            store = DatabaseStore(database, settings.events_poll_seconds)
        return cls(store, settings)

    # Writing ---------------------------------------------------------------------------------

    def writer(self, message_id: str) -> TurnWriter:
        writer = TurnWriter(self, message_id)
        self._live[message_id] = writer._head
        return writer

    def append(self, message_id: str, name: str, body: dict[str, Any]) -> Event:
        head = self._live.get(message_id)
        if head is not None and not head.closed:
            return head.writer.append(name, body)
        for _attempt in range(3):
            tail = self.store.last(message_id)
            event = encode(tail.id + 1 if tail else 1, name, body)
            self.store.save([(message_id, event)])
            if self.store.read(message_id, event.id - 1)[:1] == [event]:
                return event
        raise RuntimeError("the event could not be appended")  # three writers raced: rare

    def _enqueue(self, message_id: str, event: Event | None) -> None:
        self._pending.append((message_id, event))
        if self._idle:
            self._idle = False
            self._wake.set()
            with self._starting:  # against a flusher ending just now (it checks under it)
                if self._flusher is None:
                    self._flusher = threading.Thread(
                        target=self._flush_loop, name="turn-events", daemon=True
                    )
                    self._flusher.start()

    def _flush_loop(self) -> None:
        """Store what was appended, a batch every TURN_EVENTS_FLUSH_MS at most; the thread
        ends after a quiet while and is started again by the next append."""
        while not self._closed:
            if not self._pending:
                self._wake.clear()
                self._idle = True
                if not self._pending and not self._wake.wait(5.0):
                    with self._starting:
                        if not self._pending:
                            self._flusher = None
                            return
                        self._idle = False
                self._idle = False
            time.sleep(self._flush_seconds)  # let the batch fill
            self.flush()
            self._maybe_expire()

    def flush(self) -> bool:
        """Store every pending event now (one batch); True when the store took them."""
        with self._flushing:
            return self._flush()

    def _flush(self) -> bool:
        taken: list[tuple[str, Event | None]] = []
        while len(taken) < MAX_BATCH:
            try:
                taken.append(self._pending.popleft())  # atomic, beside writers appending
            except IndexError:
                break
        if not taken:
            return True
        batch = [(m, e) for m, e in taken if e is not None]
        try:
            if batch:
                self.store.save(batch)
        except Exception as error:  # put back, and tried again with the next batch
            self._pending.extendleft(reversed(taken))
            log.warning("turn events not stored: %s", type(error).__name__)
            self._shed()
            time.sleep(0.5)
            return False
        tops: dict[str, int] = {}
        for message_id, event in batch:
            tops[message_id] = event.id  # a turn's events are in order: its last stays
        for message_id, top in tops.items():
            head = self._live.get(message_id)
            if head is not None:
                head.writer._saved(top)
        for message_id, event in taken:
            if event is None:  # that turn's writer is closed and everything of it is stored
                self._live.pop(message_id, None)
        return True

    def _shed(self) -> None:
        """The store is down: beyond MAX_PENDING, the oldest events are dropped (their
        readers elsewhere still end, from the turn's stored status)."""
        extra = len(self._pending) - MAX_PENDING
        for _ in range(max(0, extra)):
            self._pending.popleft()
        if extra > 0:
            log.warning("%d turn events dropped: the event store is unreachable", extra)

    def _maybe_expire(self) -> None:
        if time.monotonic() - self._expired_at < EXPIRE_EVERY_SECONDS:
            return
        self._expired_at = time.monotonic()
        try:
            self.expire()
        except Exception as error:  # the next round tries again
            log.warning("turn events not expired: %s", type(error).__name__)

    def expire(self, now: datetime | None = None) -> int:
        return self.store.expire((now or utcnow()) - self._ttl)

    def close(self, timeout: float = 5.0) -> None:
        """Store what is pending (for at most `timeout` seconds), then stop the flusher. Once
        closed, a second close (the app's, after its owner's) has nothing more to do."""
        if self._closed:
            return
        deadline = time.monotonic() + timeout
        while self._pending and time.monotonic() < deadline:
            self.flush()
        self._closed = True
        self._wake.set()
        self.store.close()

    # Reading ---------------------------------------------------------------------------------

    def read(self, message_id: str, after: int = 0) -> list[Event]:
        head = self._live.get(message_id)
        if head is not None:
            return head.events[after:]
        return self.store.read(message_id, after)

    def follow(
        self, message_id: str, after: int, wait: float, outcome: Outcome
    ) -> Iterator[Event | None]:
        """The events of `runs`, one at a time."""
        runs = self.runs(message_id, after, wait, outcome)
        try:
            for run in runs:
                if run is None:
                    yield None
                else:
                    yield from run
        finally:
            runs.close()  # leaves the turn's readers at once

    def runs(
        self, message_id: str, after: int, wait: float, outcome: Outcome
    ) -> Iterator[list[Event] | None]:
        """The events after id `after`, then the live ones, ending with the turn's `done` or
        `error`: each once, in order, in runs of the events that were ready together (a
        reader that fell behind sends them in one write). A None after `wait` seconds of
        silence (a keep-alive).

        When the log is silent, `outcome` says whether the turn is settled. A settled turn
        whose log has no ending after SETTLE_GRACE_SECONDS (its worker died, or its log
        expired or was never kept) ends with the ending made from the stored message:
        appended to the log when the log has events (so every later read ends the same way),
        else sent alone, numbered after `after`.

        The store failing (Redis down) is silence, not an error: the reader goes on asking
        `outcome`, and ends as above. A log that lost events (Redis came back empty while the
        turn ran on, so its next events follow a hole) is never sent with the hole: like an
        expired log, it ends with its ending alone, numbered after the last event sent."""
        last = after
        bell: queue.SimpleQueue[None] = queue.SimpleQueue()
        try:
            yield from self._follow(message_id, last, wait, outcome, bell)
        finally:
            head = self._live.get(message_id)
            if head is not None:
                head.leave(bell)

    def _follow(
        self, message_id: str, last: int, wait: float, outcome: Outcome,
        bell: queue.SimpleQueue[None],
    ) -> Iterator[list[Event] | None]:  # fmt: skip
        quiet_since = time.monotonic()
        check_at = 0.0  # at once, the first time the log is silent
        ending: tuple[str, dict[str, Any], float] | None = None
        sent = last  # the last id sent; `last` is where the log is read from
        while True:
            slice_ = min(wait, STATUS_EVERY_SECONDS)
            events = self._next(message_id, last, slice_, bell)
            if events:
                run: list[Event] = []
                for event in events:
                    if event.id <= last:
                        continue
                    if sent < last or event.id > last + 1:  # a hole: only the ending goes out
                        if sent == last:
                            log.warning("turn %s: events %d-%d lost by the event store",
                                        message_id, last + 1, event.id - 1)  # fmt: skip
                        last = event.id
                        if event.terminal:
                            run.append(Event(sent + 1, event.name, event.data))
                            yield run
                            return
                        continue
                    run.append(event)
                    sent = last = event.id
                    if event.terminal:
                        yield run
                        return
                if run:
                    yield run
                quiet_since = time.monotonic()
                continue
            now = time.monotonic()
            # A turn running in this process ends its log itself: nothing to ask.
            if now >= check_at and not self._running_here(message_id):
                check_at = now + STATUS_EVERY_SECONDS
                try:
                    ending = outcome()
                except Exception as error:  # the database went away: ask again in a second
                    if database_unavailable(error) is None:
                        raise
                    self._unreachable(error)
                    ending = None
                if ending is not None and ending[2] >= SETTLE_GRACE_SECONDS:
                    final = self._ending(message_id, last, ending)
                    if final is not None and final.id > last + 1:
                        # the log holds events this reader has not read (it could not read
                        # the store just now, or they came meanwhile): read them first
                        check_at = 0.0
                        continue
                    if final is not None:
                        yield [final if sent == last else Event(sent + 1, final.name, final.data)]
                    return
                if ending is not None:  # settled just now: its ending may be on its way
                    check_at = now + SETTLE_GRACE_SECONDS - ending[2]
            if now - quiet_since >= wait:
                yield None
                quiet_since = now

    def _running_here(self, message_id: str) -> bool:
        head = self._live.get(message_id)
        return head is not None and not head.closed

    def _next(
        self, message_id: str, last: int, timeout: float, bell: queue.SimpleQueue[None]
    ) -> list[Event]:
        head = self._live.get(message_id)
        if head is not None:
            events = head.after(last, timeout, bell)
            if events is not None:
                return events
        try:
            return self.store.read(message_id, last) or self.store.wait(message_id, last, timeout)
        except Exception as error:  # the store is down: silence (the stored status still ends)
            self._unreachable(error)
            time.sleep(timeout)
            return []

    def _unreachable(self, error: Exception) -> None:
        now = time.monotonic()
        if now - self._warned_at >= 10:  # once in a while, not once per reader and second
            self._warned_at = now
            log.warning("turn events unreadable: %s: %s", type(error).__name__, error)

    def _ending(
        self, message_id: str, last: int, ending: tuple[str, dict[str, Any], float]
    ) -> Event | None:
        """The ending of a settled turn whose log has none after `last`; None when the reader
        has had its `done` already.

        An `error` at or before `last` is sent again, numbered after it: a worker killed
        mid-turn loses the events of its last batch, which its client may have read, so the
        interrupted turn's `error` (numbered after the stored ones) can fall on an id that
        client already had; it must still learn that the turn ended."""
        name, body, _age = ending
        try:
            tail = self.store.last(message_id)
        except Exception as error:  # the store is down: the ending alone, not stored
            self._unreachable(error)
            return encode(last + 1, name, body)
        if tail is None:  # expired, or never kept: the ending alone
            return encode(last + 1, name, body)
        if tail.terminal:
            if tail.id > last:
                return tail
            return Event(last + 1, tail.name, tail.data) if tail.name == "error" else None
        try:
            event = self.append(message_id, name, body)
            # Someone else ended it first: theirs is the ending every reader gets.
            ended = [e for e in self.store.read(message_id, tail.id) if e.terminal]
        except Exception as error:  # the store went down meanwhile: the ending alone
            self._unreachable(error)
            return encode(last + 1, name, body)
        return ended[0] if ended and ended[0].id > last else event
