"""Server-Sent Events for chat turns (contract §5).

The turn runs in a worker thread (a greenlet under gunicorn's gevent worker) that feeds a
queue, so the response can send `: ping` while the model is silent and notice a client that
left; the worker then stops the run, which stores what was said so far as `cancelled`.
"""

from __future__ import annotations

import json
import queue
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

from flask import Flask, Response, current_app, g, request, stream_with_context
from sqlalchemy.orm import Session

from ..agent.base import AgentError, SourcesFound, TextDelta, ToolCallDone
from ..db import database
from ..errors import ApiError, log_failure, problem_body
from ..observability import server_timing
from ..schemas import TurnSchema
from ..services.turns import PendingTurn, TurnResult

EVENT_STREAM = "text/event-stream"
PING = ": ping\n\n"
# Proxies must pass each event on as it is written.
NO_BUFFERING = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}

Run = Callable[[Session], Iterator[Any]]


class _End:
    """The worker is done (after its last event, or after `error`)."""

    def __init__(self, error: BaseException | None = None) -> None:
        self.error = error


def wants_stream() -> bool:
    return request.accept_mimetypes.best_match(["application/json", EVENT_STREAM]) == EVENT_STREAM


def respond(run: Run, pending: PendingTurn) -> Response:
    """Stream the turn `run(session)` produces, forwarding each event as it happens."""
    events: queue.SimpleQueue[Any] = queue.SimpleQueue()
    cancel = threading.Event()
    worker = threading.Thread(
        target=_work,
        args=(current_app._get_current_object(), g.get("request_id"), run, events, cancel),
        name=f"turn-{pending.assistant_message_id}",
        daemon=True,
    )
    worker.start()
    ping = current_app.config["SSE_PING_SECONDS"]
    return Response(
        stream_with_context(_sse(events, cancel, pending, ping)),
        mimetype=EVENT_STREAM,
        headers=NO_BUFFERING,
    )


def replay(body: dict[str, Any], *, headers: dict[str, str]) -> Response:
    """An earlier turn's stored response as a stream: `meta`, then `done`."""
    meta = {
        name: body[name] for name in ("conversation_id", "message_id", "session_id") if name in body
    }
    frames = [frame(1, "meta", meta), frame(2, "done", body)]
    return Response(
        frames,
        mimetype=EVENT_STREAM,
        headers={**NO_BUFFERING, **headers},
    )


def _work(
    app: Flask,
    request_id: str | None,
    run: Run,
    events: queue.SimpleQueue[Any],
    cancel: threading.Event,
) -> None:
    """Run the turn on its own session; stop between events once the client has gone."""
    with app.app_context():
        g.request_id = request_id
        session = database(app).sessions()
        stream = None
        try:
            stream = run(session)
            for event in stream:
                events.put(event)
                # Let the response send it now: when the provider's chunks arrive together,
                # the run would otherwise read them all (and store the reply) first.
                time.sleep(0)
                if cancel.is_set():
                    break
            stream.close()  # on a break: the turn service stores the partial answer
            events.put(_End())
        except BaseException as error:  # handed to the response, which reports it
            events.put(_End(error))
        finally:
            session.close()


def _sse(
    events: queue.SimpleQueue[Any], cancel: threading.Event, pending: PendingTurn, ping: float
) -> Iterator[str]:
    counter = iter(range(1, 1_000_000))
    meta = {"conversation_id": pending.conversation_id, "message_id": pending.assistant_message_id}
    if pending.kind == "session":
        meta["session_id"] = pending.conversation_id
    yield frame(next(counter), "meta", meta)
    try:
        while True:
            try:
                event = events.get(timeout=ping)
            except queue.Empty:
                yield PING
                continue
            if isinstance(event, _End):
                if event.error is not None:
                    yield _error_frame(next(counter), event.error)
                return
            named = _named(event, pending)
            if named is not None:
                yield frame(next(counter), *named)
    finally:
        cancel.set()  # a no-op when the run is over; otherwise the client has gone


def _named(event: Any, pending: PendingTurn) -> tuple[str, dict[str, Any]] | None:
    if isinstance(event, TextDelta):
        return "delta", {"text": event.text}
    if isinstance(event, ToolCallDone):
        return "tool_call", event.call.as_dict()
    if isinstance(event, SourcesFound):
        return "sources", {"sources": event.sources}
    if isinstance(event, TurnResult):
        body = TurnSchema().dump(event.body())
        body["timing"] = server_timing(pending.timings)
        return "done", body
    return None


def _error_frame(event_id: int, error: BaseException) -> str:
    if isinstance(error, AgentError | ApiError):
        return frame(event_id, "error", problem_body(error.status, error.code, error.detail))
    log_failure("stream failed", error)
    return frame(event_id, "error", problem_body(500, "internal_error", ApiError.detail))


def frame(event_id: int, name: str, data: dict[str, Any]) -> str:
    return f"event: {name}\nid: {event_id}\ndata: {json.dumps(data, ensure_ascii=False)}\n\n"
