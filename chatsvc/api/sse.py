"""The turn's wire formats: the contract's JSON body, and Server-Sent Events (contract §5)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from flask import Response, current_app, request, stream_with_context

from ..agent.base import TextDelta, ToolCallDone
from ..errors import NotFound, problem_body
from ..models import Message, Role
from ..observability import server_timing
from ..schemas import TurnSchema
from ..services.conversations import SESSION
from ..services.events import Event, as_json
from ..services.turns import (
    SourcesFound,
    TurnEvent,
    TurnFailed,
    TurnHandle,
    TurnResult,
    TurnStarted,
)

EVENT_STREAM = "text/event-stream"
PING = ": ping\n\n"
PING_BYTES = PING.encode()
EVENTS_DOC = (
    "Server-Sent Events: `meta`, `delta`, `tool_call`, `sources`, then `done` or `error`, each "
    "with its per-turn `id:`; `: ping` comments while the turn is silent."
)
# Built once: building a marshmallow schema for each `done` cost as much as dumping the turn
# with it (speedups.py has the figure).
_TURN_SCHEMA = TurnSchema()
# Proxies must pass each event on as it is written.
NO_BUFFERING = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}


def wants_stream() -> bool:
    return request.accept_mimetypes.best_match(["application/json", EVENT_STREAM]) == EVENT_STREAM


def turn_body(result: TurnResult) -> dict[str, Any]:
    """The chat response of the contract (§2, §3), dumped by TurnSchema."""
    body: dict[str, Any] = {
        "conversation_id": result.conversation_id,
        "message_id": result.message_id,
        "response": result.text,
        "tool_calls": result.tool_calls,
        "sources": result.sources,
        "usage": result.usage,
        "model": result.model,
        "status": result.status,
        "created_at": result.created_at,
        "context": {"messages": result.context.messages, "truncated": result.context.truncated},
    }
    if result.kind == SESSION:
        body["session_id"] = result.conversation_id
    return body


def respond(handle: TurnHandle, *, headers: dict[str, str] | None = None) -> Response:
    """Stream the turn's events as they happen, as its event log numbers them (a replay: its
    `meta` and `done`); `: ping` while the model is silent."""
    wait = current_app.config["SSE_PING_SECONDS"]
    if handle.replayed:
        return _response(_frames(handle.events(wait)), headers)
    return _response(logged_frames(handle.stream(wait)), headers)


def resume(runs: Iterator[list[Event] | None]) -> Response:
    """A turn's logged events (a resume, contract §5), with `: ping` while it is silent."""
    return _response(logged_frames(runs), None)


def follow(message: Message, args: dict[str, Any], headers: dict[str, Any]) -> Response:
    """The events route (contract §5) for a message the caller may see: its turn's events
    after `Last-Event-ID` (the header, else `?last_event_id=`; none: from the start)."""
    if message.role != Role.ASSISTANT:
        raise NotFound("No turn answers this message: it is the user's own.")
    raw = headers["last_event_id"] or args["last_event_id"]
    engine = current_app.extensions["chatsvc.turns"]
    events = engine.follow(message.id, int(raw or 0), current_app.config["SSE_PING_SECONDS"])
    return resume(events)


def _response(frames: Iterator[str] | Iterator[bytes], headers: dict[str, str] | None) -> Response:
    return Response(
        stream_with_context(frames), mimetype=EVENT_STREAM,
        headers={**NO_BUFFERING, **(headers or {})},
    )  # fmt: skip


def logged_frames(runs: Iterator[list[Event] | None]) -> Iterator[bytes]:
    """The frames of each run of events ready together, written at once: a reader that fell
    behind sends its backlog in one write (one system call, one chunk) rather than one per
    event — each event keeps its own frame and id (speedups.py has the figure)."""
    try:
        for run in runs:
            if run is None:
                yield PING_BYTES
            else:
                yield "".join(
                    [
                        f"event: {event.name}\nid: {event.id}\ndata: {event.data}\n\n"
                        for event in run
                    ]
                ).encode()
    finally:
        close = getattr(runs, "close", None)
        if close is not None:
            close()  # the client has gone, or the turn is over


def _frames(events: Iterator[TurnEvent | None]) -> Iterator[str]:
    counter = 0
    try:
        for event in events:
            if event is None:
                yield PING
                continue
            named = named_event(event)
            if named is not None:
                counter += 1
                yield frame(counter, *named)
    finally:
        close = getattr(events, "close", None)
        if close is not None:
            close()  # the client has gone (or the turn is over): stops the run if it still goes


def named_event(event: TurnEvent) -> tuple[str, dict[str, Any]] | None:
    """A turn event as the §5 event name and body: one mapping for every streaming transport
    (SSE here, the WebSocket in websocket.py). None: the event has no wire form."""
    if isinstance(event, TextDelta):
        return "delta", {"text": event.text}
    if isinstance(event, ToolCallDone):
        return "tool_call", event.call.as_dict()
    if isinstance(event, SourcesFound):
        return "sources", {"sources": event.sources}
    if isinstance(event, TurnStarted):
        meta = {"conversation_id": event.conversation_id, "message_id": event.message_id}
        if event.kind == SESSION:
            meta["session_id"] = event.conversation_id
        return "meta", meta
    if isinstance(event, TurnResult):
        body = _TURN_SCHEMA.dump(turn_body(event))
        if event.timings:
            body["timing"] = server_timing(event.timings)
        return "done", body
    if isinstance(event, TurnFailed):
        error = event.error
        return "error", problem_body(error.status, error.code, error.detail)
    return None


def frame(event_id: int, name: str, data: dict[str, Any]) -> str:
    return f"event: {name}\nid: {event_id}\ndata: {as_json(data)}\n\n"
