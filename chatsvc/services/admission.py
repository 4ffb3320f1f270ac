"""Admission: a worker refuses a new turn (503 `overloaded` with Retry-After, contract §1) when
taking it would slow the turns it already runs, instead of letting every stream slow together.

A turn is refused at once when the worker already runs MAX_STREAMS_PER_WORKER turns, or when
it streams turns and either its event loop lags or it runs as many turns as its adaptive
window admits. A watch thread (a greenlet under gevent) sleeps LAG_INTERVAL and measures how
late it wakes; a smoothed lateness over OVERLOAD_LAG_MS means the worker's CPU cannot keep its
streams' cadence. The window is what keeps a burst from overshooting before the lag shows
(the watch itself runs late under a burst, so lag alone is read too late): it starts at
WINDOW_START turns and, while the loop is on time, follows the load at twice the turns in
flight at each wake-up (slow start: a burst is taken in doublings, each one measured); when
the loop lags, the window is cut to CUT of the turns in flight (at most once per CUT_EVERY
seconds: the turns already admitted keep running and need that long to show the cut's
effect) and from then on grows by GROW a wake-up while the loop is on time and the window is
what refuses. Lag and window refuse nothing while no turn streams (turns answered as one JSON
body have no cadence to keep: a burst of them queues, as before); both are off when
OVERLOAD_LAG_MS is 0. The cost per turn is a counter under a lock, never a query.

`check()` is the same decision without taking a place: the API asks it before it reads a new
turn's request (api/__init__.py, `_refuse_early`), so that a refusal costs a few hundred µs of
CPU rather than a whole turn's request, idempotency look-up included (bench/RESULTS.md,
"Refusals").

Retry-After grows while refusals last: it starts at OVERLOAD_RETRY_AFTER_SECONDS, doubles each
time the worker has refused turns for a whole Retry-After (so every client refused at one step
has come back before the next), up to OVERLOAD_RETRY_AFTER_MAX_SECONDS, and goes back to the
start once the base Retry-After has passed without a refusal. Each refusal's value is drawn
within ±JITTER of the step (whole seconds), so that clients refused together do not all come
back together.

Admission      the worker's count of turns in flight, its lag watch and window; `admit()`
               gives a Slot
Slot           one admitted turn's place: `stream()` when its events are read as they come
               (SSE, WebSocket, a background turn's log), given back once (`release`)
"""

from __future__ import annotations

import math
import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum

from ..errors import Overloaded


class Refusal(StrEnum):
    """Why a turn was refused: the fixed label set of `chatsvc_turns_refused_total`."""

    STREAMS = "streams"  # MAX_STREAMS_PER_WORKER turns in flight already
    LAG = "lag"  # the event loop is late by more than OVERLOAD_LAG_MS
    WINDOW = "window"  # as many turns in flight as the adaptive window admits


# The watch wakes this often (seconds): 20 wake-ups a second cost nothing measurable, and a
# loop late by more than a stream's 50 ms cadence shows within a few of them.
LAG_INTERVAL = 0.05
# Each wake-up's lateness moves the smoothed lag by this share: one late wake-up (a GC pause)
# is not a trend; a loop that stays late crosses the threshold within ~0.2 s.
LAG_WEIGHT = 0.25
# The watch stops after this long with no turn streaming (and its lag reads 0 again): a worker
# that streams nothing runs no timer.
LINGER_SECONDS = 5.0
# The adaptive window (turns in flight while turns stream): where it starts after a quiet
# while, its floor, the share of the turns in flight a lagging loop cuts it to, how often at
# most, and how much it grows a wake-up once it has been cut (×1.5 a second).
WINDOW_START = 16
WINDOW_MIN = 4
CUT = 0.8
CUT_EVERY = 1.0
GROW = 1.02
# A refusal's Retry-After is drawn within this share either side of the current step.
JITTER = 0.25


@dataclass
class Metrics:
    """What admission reports (observability's Prometheus metrics, wired by create_app)."""

    refused: Callable[[str], None] = lambda reason: None  # a Refusal's value
    in_flight: Callable[[int], None] = lambda delta: None  # +1 admitted, -1 released
    lag: Callable[[float], None] = lambda seconds: None  # the smoothed lag, at each wake-up
    window: Callable[[int], None] = lambda turns: None  # the adaptive window, at each wake-up


class Admission:
    """One worker's admission of turns. `limit` 0 admits any number; `lag_ms` 0 turns the lag
    watch off."""

    def __init__(
        self, limit: int, lag_ms: float, retry_after: int, metrics: Metrics | None = None,
        *, sleep: Callable[[float], object] = time.sleep, retry_after_max: int | None = None,
    ) -> None:  # fmt: skip
        self.limit = limit
        self.lag_threshold = lag_ms / 1000
        self.retry_after = retry_after  # the first refusals' Retry-After (seconds)
        self.retry_after_max = max(retry_after, retry_after_max or retry_after)
        self.metrics = metrics or Metrics()
        self.clock: Callable[[], float] = time.monotonic  # the refusals' (a test sets its own)
        self.random = random.Random()  # the jitter's
        self._step = float(retry_after)  # Retry-After while refusals last, before the jitter
        self._step_since = float("-inf")  # when the step was last set
        self._last_refusal = float("-inf")
        self.in_flight = 0
        self.streaming = 0  # of those in flight, the turns whose events are read as they come
        self._lag = 0.0  # seconds, smoothed
        self.window = float(WINDOW_START)  # turns in flight admitted while turns stream
        self._slow_start = True  # until the loop first lags: the window follows the load ×2
        self._last_cut = float("-inf")
        self._lock = threading.Lock()
        self._watch: threading.Thread | None = None
        self._sleep = sleep  # the watch's (a test's own makes its wake-ups explicit: `observe`)

    def admit(self) -> Slot:
        """A place for one new turn, or 503 `overloaded` at once. A worker that streams no turn
        admits one whatever its lag: there is no stream its lag could slow."""
        self._decide(take=True)
        self.metrics.in_flight(1)
        return Slot(self)

    def check(self) -> None:
        """503 `overloaded` at once when `admit()` would refuse a turn now, counted as its
        refusal; else nothing (no place is taken: `admit()` decides again, later)."""
        self._decide(take=False)

    def _decide(self, *, take: bool) -> None:
        """Refuse a new turn now (503, counted, with its Retry-After), or let it through,
        taking its place when `take`."""
        with self._lock:
            refusal = self._refusal()
            if refusal is None:
                self.in_flight += take
                return
            retry_after = self._retry_after()
        self.metrics.refused(refusal.value)
        raise Overloaded(refusal.value, retry_after)

    def _refusal(self) -> Refusal | None:
        """Why a new turn is refused now, or None (under the lock)."""
        if self.limit and self.in_flight >= self.limit:
            return Refusal.STREAMS
        if self.streaming and self._lag > self.lag_threshold > 0:
            return Refusal.LAG
        if self.streaming and self.lag_threshold and self.in_flight >= self.window:
            return Refusal.WINDOW
        return None

    def _retry_after(self) -> int:
        """A refusal's Retry-After (under the lock): the step, doubled once refusals have lasted
        a whole step, back to the start after a quiet base Retry-After; jittered."""
        now = self.clock()
        if now - self._last_refusal >= self.retry_after:
            self._step, self._step_since = float(self.retry_after), now
        elif now - self._step_since >= self._step:
            self._step = min(float(self.retry_after_max), 2 * self._step)
            self._step_since = now
        self._last_refusal = now
        spread = self._step * self.random.uniform(1 - JITTER, 1 + JITTER)
        return max(1, min(self.retry_after_max, round(spread)))

    def _stream(self) -> None:
        with self._lock:
            self.streaming += 1
            if self.lag_threshold and self._watch is None:
                self._watch = threading.Thread(
                    target=self._measure, name="admission-lag", daemon=True
                )
                self._watch.start()

    def _release(self, streamed: bool) -> None:
        with self._lock:
            self.in_flight -= 1
            self.streaming -= streamed
        self.metrics.in_flight(-1)

    def _measure(self) -> None:
        """The lag watch: how late each sleep of LAG_INTERVAL ends, smoothed; the window
        follows it."""
        idle = 0.0
        while True:
            before = time.monotonic()
            self._sleep(LAG_INTERVAL)
            now = time.monotonic()
            late = max(0.0, now - before - LAG_INTERVAL)
            self.observe(late, now)
            with self._lock:
                idle = 0.0 if self.streaming else idle + LAG_INTERVAL + late
                if idle >= LINGER_SECONDS:
                    self._lag = 0.0
                    self._watch = None
                    self.window, self._slow_start = float(WINDOW_START), True
                window = int(self.window)
            self.metrics.lag(self._lag)
            self.metrics.window(window)
            if idle >= LINGER_SECONDS:
                return

    def observe(self, late: float, now: float) -> None:
        """One wake-up of the watch, `late` seconds after it was due (at `now`, monotonic):
        the smoothed lag and the window take their step."""
        with self._lock:
            self._lag += LAG_WEIGHT * (late - self._lag)
            if self.lag_threshold:
                self._adapt(now)

    def _adapt(self, now: float) -> None:
        """One wake-up's step of the window (under the lock)."""
        if self._lag > self.lag_threshold:
            if now - self._last_cut >= CUT_EVERY:
                self.window = max(float(WINDOW_MIN), min(self.window, self.in_flight * CUT))
                self._last_cut, self._slow_start = now, False
        elif self._lag < self.lag_threshold / 2:
            ceiling = float(self.limit) if self.limit else math.inf
            if self._slow_start:
                self.window = min(ceiling, max(self.window, 2.0 * self.in_flight))
            elif self.in_flight >= self.window - 1:  # the window is what holds turns back
                self.window = min(ceiling, self.window * GROW + 1)


class Slot:
    """An admitted turn's place in its worker: released once, when the turn's run is over (or
    when the turn never started: its unit of work failed, its handle was dropped unrun)."""

    __slots__ = ("_admission", "_streamed")

    def __init__(self, admission: Admission) -> None:
        self._admission: Admission | None = admission
        self._streamed = False

    def stream(self) -> None:
        """The turn's events are read as they come: its worker's lag now matters."""
        if self._admission is not None and not self._streamed:
            self._streamed = True
            self._admission._stream()

    def release(self) -> None:
        admission, self._admission = self._admission, None
        if admission is not None:
            admission._release(self._streamed)
