"""Server-Sent Events for chat turns (contract §5)."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from typing import Any

from flask import Response, request, stream_with_context

from ..agent.base import AgentError, SourcesFound, TextDelta, ToolCallDone
from ..errors import ApiError, problem_body
from ..observability import server_timing
from ..schemas import TurnSchema
from ..services.turns import PendingTurn, TurnResult

EVENT_STREAM = "text/event-stream"
log = logging.getLogger(__name__)


def wants_stream() -> bool:
    return request.accept_mimetypes.best_match(["application/json", EVENT_STREAM]) == EVENT_STREAM


def respond(events: Iterator[Any], pending: PendingTurn) -> Response:
    """Forward the turn's events as they happen; the generator's close (client gone) reaches
    the turn service, which stores what was said so far as `cancelled`."""
    response = Response(
        stream_with_context(_sse(events, pending)),
        mimetype=EVENT_STREAM,
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )
    return response


def replay(body: dict[str, Any], *, headers: dict[str, str]) -> Response:
    """An earlier turn's stored response as a stream: `meta`, then `done`."""
    meta = {
        name: body[name] for name in ("conversation_id", "message_id", "session_id") if name in body
    }
    frames = [frame(1, "meta", meta), frame(2, "done", body)]
    return Response(
        frames,
        mimetype=EVENT_STREAM,
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no", **headers},
    )


def _sse(events: Iterator[Any], pending: PendingTurn) -> Iterator[str]:
    counter = iter(range(1, 1_000_000))
    meta = {"conversation_id": pending.conversation_id, "message_id": pending.assistant_message_id}
    if pending.kind == "session":
        meta["session_id"] = pending.conversation_id
    yield frame(next(counter), "meta", meta)
    try:
        for event in events:
            if isinstance(event, TextDelta):
                yield frame(next(counter), "delta", {"text": event.text})
            elif isinstance(event, ToolCallDone):
                yield frame(next(counter), "tool_call", event.call.as_dict())
            elif isinstance(event, SourcesFound):
                yield frame(next(counter), "sources", {"sources": event.sources})
            elif isinstance(event, TurnResult):
                body = TurnSchema().dump(event.body())
                body["timing"] = server_timing(pending.timings)
                yield frame(next(counter), "done", body)
    except (AgentError, ApiError) as error:
        yield frame(next(counter), "error", problem_body(error.status, error.code, error.detail))
    except Exception:
        log.exception("stream failed")
        yield frame(next(counter), "error", problem_body(500, "internal_error", ApiError.detail))
    finally:
        if hasattr(events, "close"):
            events.close()


def frame(event_id: int, name: str, data: dict[str, Any]) -> str:
    return f"event: {name}\nid: {event_id}\ndata: {json.dumps(data, ensure_ascii=False)}\n\n"
