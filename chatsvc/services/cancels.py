"""Stopping a running turn from anywhere: the request that runs it, another request, another
worker process or another host.

StopSignal       one run's stop, with its reason: `cancelled` (a cancel, a client that left)
                 or `interrupted` (the worker is leaving)
stoppable        the agent's events, pulled in a thread of their own, so that a stop ends the
                 run at once even while the model is silent between two chunks
Cancels          this process's running turns, and the watch that stops them when a cancel was
                 asked elsewhere: the reply's database flag (`messages.cancel_requested_at`),
                 checked every TURN_CANCEL_POLL_SECONDS while turns run here, and, when
                 EVENTS_REDIS_URL is set, a Redis channel that brings the cancel at once (the
                 flag is then only a safety net, checked every SAFETY_SECONDS)

No database connection is held while a turn waits: the watch is one short query per process
per interval (for all the turns it runs), never one per turn.
"""

from __future__ import annotations

import contextvars
import logging
import queue
import threading
import time
from collections.abc import Iterator
from enum import StrEnum
from typing import Any, TypeVar

from sqlalchemy import bindparam, select

from ..db import Database
from ..models import Message
from ..speedups import start_thread

log = logging.getLogger(__name__)

T = TypeVar("T")

CHANNEL = "chatsvc:turns:cancel"
# With a live Redis subscription, the database flag is checked this often anyway: a cancel
# whose message was lost (Redis restarted, a publish that failed) still arrives.
SAFETY_SECONDS = 5.0
# A cancel that arrives (over Redis) just before its turn starts running here is kept this
# long, so that the turn stops as it starts.
RECENT_SECONDS = 60.0
RECENT_MAX = 10_000
# The watch thread ends after this long with no turn running here (it starts again with the
# next turn), so an idle process holds no Redis connection.
LINGER_SECONDS = 10.0


class StopReason(StrEnum):
    CANCELLED = "cancelled"  # stored `cancelled` with the text so far
    INTERRUPTED = "interrupted"  # the worker is leaving: stored `failed` (interrupted)


class StopSignal:
    """A run's stop: set once (the first reason wins), seen by the run at once."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._wakers: list[queue.SimpleQueue[Any]] = []
        self.reason: StopReason | None = None

    def set(self, reason: StopReason = StopReason.CANCELLED) -> None:
        with self._lock:
            if self.reason is not None:
                return
            self.reason = reason
            wakers = list(self._wakers)
        for inbox in wakers:
            inbox.put(_STOPPED)

    def is_set(self) -> bool:
        return self.reason is not None

    def _wake(self, inbox: queue.SimpleQueue[Any]) -> None:
        with self._lock:
            self._wakers.append(inbox)
            stopped = self.reason is not None
        if stopped:
            inbox.put(_STOPPED)


_STOPPED = object()
_END = object()


def stoppable(events: Iterator[T], stop: StopSignal) -> Iterator[T]:
    """`events` as they come, until they end or `stop` is set — whichever is first. They are
    pulled in a thread (a greenlet under gevent) of their own, in a copy of the caller's
    context, and their exceptions are raised here. After a stop (or when this iterator is
    closed) the source is closed by that thread as soon as its current step returns: a
    provider's stream is then cut at its next chunk, or by its own timeout."""
    inbox: queue.SimpleQueue[Any] = queue.SimpleQueue()
    gone = threading.Event()  # the consumer has stopped listening

    def pump() -> None:
        try:
            for event in events:
                inbox.put((event, None))
                if gone.is_set() or stop.is_set():
                    break
        except Exception as error:  # raised in the consumer's thread
            inbox.put((None, error))
        finally:
            inbox.put(_END)
            close = getattr(events, "close", None)
            if close is not None:
                close()

    stop._wake(inbox)
    start_thread(contextvars.copy_context().run, pump, name="turn-agent")
    return _drain(inbox, gone)


def _drain(inbox: queue.SimpleQueue[Any], gone: threading.Event) -> Iterator[Any]:
    try:
        while True:
            item = inbox.get()
            if item is _STOPPED or item is _END:
                return
            event, error = item
            if error is not None:
                raise error
            yield event
    finally:
        gone.set()


_FLAGGED = select(Message.__table__.c.id).where(
    Message.__table__.c.id.in_(bindparam("b_running", expanding=True)),
    Message.__table__.c.cancel_requested_at.is_not(None),
)


class Cancels:
    """The turns running in this process (message id → StopSignal) and the watch that stops
    them when a cancel was asked on another worker or host."""

    def __init__(self, database: Database, poll_seconds: float, redis_url: str = "") -> None:
        self._database = database
        self._poll = max(0.05, poll_seconds)
        self._redis_url = redis_url
        self._lock = threading.Lock()
        self._running: dict[str, StopSignal] = {}
        self._recent: dict[str, float] = {}  # cancels heard for turns not (yet) running here
        self._watch: threading.Thread | None = None
        self._publisher: Any = None

    @property
    def running(self) -> int:
        with self._lock:
            return len(self._running)

    def register(self, message_id: str, signal: StopSignal) -> None:
        """The turn runs here from now on: a cancel stops it through `signal`."""
        with self._lock:
            self._running[message_id] = signal
            heard = self._recent.pop(message_id, None) is not None
            if self._watch is None:
                self._watch = threading.Thread(target=self._watching, name="turn-cancels",
                                               daemon=True)  # fmt: skip
                self._watch.start()
        if heard:
            signal.set()

    def unregister(self, message_id: str) -> None:
        with self._lock:
            self._running.pop(message_id, None)

    def stop(self, message_id: str, reason: StopReason = StopReason.CANCELLED) -> bool:
        """Stop the turn if it runs here; False when it does not."""
        with self._lock:
            signal = self._running.get(message_id)
        if signal is None:
            return False
        signal.set(reason)
        return True

    def stop_all(self, reason: StopReason) -> int:
        with self._lock:
            signals = list(self._running.values())
        for signal in signals:
            signal.set(reason)
        return len(signals)

    def announce(self, message_id: str) -> None:
        """Tell every other worker and host at once (Redis), when Redis is configured; the
        database flag, already committed, reaches them anyway within the poll interval."""
        if not self._redis_url:
            return
        try:
            if self._publisher is None:
                import redis

                self._publisher = redis.Redis.from_url(
                    self._redis_url, socket_connect_timeout=2, socket_timeout=2
                )
            self._publisher.publish(CHANNEL, message_id)
        except Exception as error:  # the flag still gets there, at the slower pace
            log.warning("cancel not published to redis: %s", type(error).__name__)

    # The watch ----------------------------------------------------------------------------

    def _watching(self) -> None:
        subscription: Any = None
        checked = retry_at = 0.0
        idle_since: float | None = None
        try:
            while True:
                now = time.monotonic()
                with self._lock:
                    if self._running:
                        idle_since = None
                    elif idle_since is None:
                        idle_since = now
                    elif now - idle_since > LINGER_SECONDS:
                        self._watch = None
                        return
                if self._redis_url and subscription is None and now >= retry_at:
                    subscription = self._subscribe()
                    checked = 0.0  # cancels sent before the subscription: from the flag
                    retry_at = now + SAFETY_SECONDS
                interval = SAFETY_SECONDS if subscription is not None else self._poll
                if time.monotonic() - checked >= interval:
                    checked = time.monotonic()
                    self._check_flags()
                if subscription is None:
                    time.sleep(self._poll)
                    continue
                try:
                    message = subscription.get_message(timeout=self._poll)
                except Exception as error:
                    log.warning("cancel subscription lost: %s", type(error).__name__)
                    _close(subscription)
                    subscription = None
                    continue
                if message is not None and message.get("type") == "message":
                    self._heard(_text(message.get("data")))
        finally:
            _close(subscription)

    def _subscribe(self) -> Any:
        """A confirmed subscription to the cancel channel, or None (Redis is down: the flag
        is then checked at the poll interval, and the subscription tried again)."""
        try:
            import redis

            client = redis.Redis.from_url(
                self._redis_url, socket_connect_timeout=2, socket_timeout=max(5.0, 2 * self._poll)
            )
            subscription = client.pubsub()
            subscription.subscribe(CHANNEL)
            deadline = time.monotonic() + 2
            while time.monotonic() < deadline:
                confirmed = subscription.get_message(timeout=0.5)
                if confirmed is not None and confirmed.get("type") == "subscribe":
                    return subscription
            _close(subscription)
        except Exception as error:
            log.warning("cancel subscription failed: %s", type(error).__name__)
        return None

    def _heard(self, message_id: str) -> None:
        if self.stop(message_id):
            return
        now = time.monotonic()
        with self._lock:  # perhaps about to run here: kept a while
            if len(self._recent) >= RECENT_MAX:
                self._recent = {k: t for k, t in self._recent.items() if now - t < RECENT_SECONDS}
            if len(self._recent) < RECENT_MAX:
                self._recent[message_id] = now

    def _check_flags(self) -> None:
        with self._lock:
            running = list(self._running)
        if not running:
            return
        try:
            with self._database.read() as session:
                flagged = session.execute(_FLAGGED, {"b_running": running}).scalars().all()
        except Exception as error:  # the next round tries again
            log.warning("cancel flags not read: %s", type(error).__name__)
            return
        for message_id in flagged:
            self.stop(message_id)


def _text(data: Any) -> str:
    return data.decode("utf-8", "replace") if isinstance(data, bytes) else str(data)


def _close(subscription: Any) -> None:
    if subscription is None:
        return
    try:
        subscription.close()
    except Exception:  # already broken: nothing left to release
        log.debug("cancel subscription close failed", exc_info=True)
