"""The performance tricks, in one room, each with the figure that keeps it (bench/RESULTS.md).

Worker-wide, applied by gunicorn's post_worker_init (`tune_worker`):
- `probe_sockets_without_the_hub`: httpcore probes idle keep-alive connections with a
  zero-timeout poll; gevent's cooperative poll made each a trip through the hub (~20 µs
  against 1.4 µs), a quarter of the CPU at 500 turns in flight.
- `collect_less`: gc.freeze after boot and young collections every 10 000 allocations: under
  P2 a worker spent 1.8 s of 25 s collecting (pauses up to 190 ms); after, 0.5-0.7 s (~60 ms).
- `accept_in_batches`: up to ACCEPT_BATCH new connections a turn of the loop instead of
  gunicorn's one. Beyond capacity (P7, 2,000 streams offered) a busy loop turning every 10-20
  ms accepted 50-100 connections a second: new turns (and /health/live) waited 2-9 s unseen
  in the kernel's queue, where admission cannot refuse them (TTFD p50 9.5 s, 400 refused);
  with 32 they reach admission and are refused at once (TTFD p50 1.6 s, 10,500 refused).

In the OpenAI-compatible adapter (chatsvc/agent/openai.py), where they belong to the protocol:
- `_ConnectionPools`: eight SDK clients with a pool each, lent least busy first: 1.1-2.4 ms of
  CPU saved per turn (13-25 %) at 250 turns in flight per worker.
- `_with_retries`: the request sent as plain dicts, the answer read as plain JSON, a stream
  read to its end so its connection is reused: the SDK's typed layer cost more CPU than the
  rest of the turn.
- `_ChatCompletions`: that request sent through the SDK client's own httpx client as the SDK's
  `post` would send it (URL, headers, body, timeout, the SDK's own errors), without its
  per-request layer (options copied twice, headers merged anew, auth hooks, a response
  wrapper): 9.56 -> 8.32 M instructions a JSON turn, 12.76 -> 11.47 M a streamed one
  (bench/turncost.py --callgrind, SQLite). Clients that need the SDK's hooks keep `post`.
  Its `_request` builds the httpx2.Request from the client's headers merged with the SDK's
  once (at start-up), where `build_request` merged URL, headers, cookies and query anew each
  time (a client holding cookies or query parameters still goes through it): 8.32 -> 8.02 M
  a JSON turn.
- `_event_data`: the provider's SSE stream parsed from the body's bytes, without httpx's text
  and line decoders: 5.2 -> 4.7 µs of CPU a chunk with its json.loads (in-process, 3 paired
  runs of 20 000 chunks); small, and no more code than the line reader it replaced.

On every turn's path (issue 16; instructions a turn from bench/turncost.py --callgrind,
SQLite, JSON turn of P1's shape, a 0 ms model: load-independent):
- `Database.statements` (chatsvc/db.py): the turn's units of work on a Core connection in a
  transaction, without the ORM Session's bookkeeping (unit of work 2 always, unit of work 1
  for a new conversation without a key): 10.34 -> 9.56 M.
- `App` (the app's Flask class): which hooks and views are plain functions is remembered, not
  asked of `inspect` 26 times a request: 8.32 -> 8.20 M.
- `Blueprint.alt_response` (chatsvc/api/__init__.py): a documented alternative response is
  written on the view, where flask-smorest wrapped the view in a function that only calls it
  (through `current_app.ensure_sync`), once per status: 14 call layers on a chat turn's way;
  /openapi.json is byte-identical: 8.02 -> 7.77 M.
- The request hooks (auth.claims, auth.check_early, api's `_known_path_and_query` and
  `_require_json`, observability's `_start` and `_log_access`) look through Flask's `request`,
  `g` and `current_app` proxies once each, not at every attribute (34 look-ups a turn
  fewer): 7.77 -> 7.66 M.
- `start_thread`: the agent's pump (cancels.stoppable) and a streamed turn's run are bare
  greenlets under gevent, not patched `threading.Thread` objects: 10.40 -> 10.34 M (streamed,
  with the above: 13.51 -> 12.76 M).

On the streamed turn's path (services/turns.py, services/events.py, api/sse.py), issue 22:
- `events.as_json`: a delta's body put together around its encoded string, other bodies by
  one prebuilt encoder: 10.3 -> 0.9 µs a delta (json.dumps with ensure_ascii=False builds an
  encoder on every call).
- `sse._TURN_SCHEMA`: the `done` event's TurnSchema built once, not for every streamed turn
  (WebSocket and `/v1` streams render through it too): 11.29 -> 10.37 M instructions a
  streamed turn of 8 deltas (bench/turncost.py --callgrind --mode stream).
- `sse.logged_frames` writes the events that are ready together as one chunk, and the turn
  yields to its reader after each event only until its first delta (the hub round trip
  that `time.sleep(0)` costs is paid once, not per delta): server CPU per delta at 200
  streams of 20 tokens/s, interleaved runs: see bench/RESULTS.md "Streaming CPU".
"""

from __future__ import annotations

import gc
import select
import sys
import threading
import types
import weakref
from collections.abc import Callable
from typing import Any

from flask import Flask

# Allocations between young collections (CPython's default is 700).
GC_YOUNG_THRESHOLD = 10_000
# Connections a gevent worker accepts at most per turn of its loop (gevent's own default is
# 100; gunicorn sets 1 when it runs several workers, to spread connections among them).
ACCEPT_BATCH = 32


def tune_worker() -> None:
    """What a gunicorn worker applies once its app is loaded."""
    probe_sockets_without_the_hub()
    collect_less()
    accept_in_batches()


def accept_in_batches() -> None:
    """gunicorn's gevent worker accepts one connection per turn of the event loop when there
    are several workers; the loop then serves new connections no faster than it turns."""
    import gunicorn.workers.ggevent
    from gevent.server import StreamServer

    class BatchingStreamServer(StreamServer):
        _max_accept = ACCEPT_BATCH

        @property
        def max_accept(self) -> int:
            return self._max_accept

        @max_accept.setter
        def max_accept(self, value: int) -> None:
            self._max_accept = max(value, ACCEPT_BATCH)

    gunicorn.workers.ggevent.StreamServer = BatchingStreamServer


def probe_sockets_without_the_hub() -> None:
    """A zero-timeout poll never blocks, so httpcore may use the system's own."""
    import httpcore2._utils
    from gevent import monkey

    httpcore2._utils.select = types.SimpleNamespace(
        poll=monkey.get_original("select", "poll"),
        select=monkey.get_original("select", "select"),
        POLLIN=select.POLLIN,
    )


def collect_less() -> None:
    """What exists once the worker has booted lives as long as the worker: the collector stops
    walking it, and young collections run less often."""
    gc.freeze()
    gc.set_threshold(GC_YOUNG_THRESHOLD, 10, 10)


def start_thread(target: Callable[..., Any], *args: Any, name: str) -> None:
    """Run `target(*args)` in a daemon thread of its own. Under gevent's monkey-patch (the
    gunicorn workers) that is a bare greenlet: a patched `threading.Thread` is a greenlet too,
    but building one and waiting in `start()` for it to run cost more CPU than the rest of a
    turn's hand-offs together. Elsewhere (tests, the CLI) a real thread."""
    monkey = sys.modules.get("gevent.monkey")
    if monkey is not None and monkey.is_module_patched("threading"):
        import gevent

        gevent.spawn(target, *args)
        return
    threading.Thread(target=target, args=args, daemon=True, name=name).start()


class App(Flask):
    """Flask, remembering which functions are plain (not coroutine functions): Flask asks
    `inspect.iscoroutinefunction` again for every hook and view of every request
    (`ensure_sync`), 26 times a chat turn: 8.32 -> 8.13 M instructions a JSON turn. Weak keys,
    and only `True` as the value (a value holding its key would keep it alive): a function
    made for one request (after_this_request, copy_current_request_context) is forgotten with
    it; one that cannot be weakly referenced is asked about every time, as Flask does."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._plain: weakref.WeakKeyDictionary[Any, bool] = weakref.WeakKeyDictionary()

    def ensure_sync(self, func: Callable[..., Any]) -> Callable[..., Any]:
        try:
            if self._plain.get(func):
                return func
        except TypeError:  # no weak reference to it
            return super().ensure_sync(func)
        made = super().ensure_sync(func)
        if made is func:
            self._plain[func] = True
        return made
