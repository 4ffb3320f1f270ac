"""A turn in OpenAI's wire formats: a chat completion and its `chat.completion.chunk` stream,
a Responses API `response` and its typed events, usage and citations in OpenAI's shapes."""

from __future__ import annotations

import calendar
import json
from collections.abc import Iterator
from datetime import datetime
from typing import Any

from ...agent.base import TextDelta
from ...errors import ApiError
from ...services.citations import CITATION
from ...services.turns import SourcesFound, TurnEvent, TurnFailed, TurnResult, TurnStarted

PING = ": ping\n\n"
DONE = "data: [DONE]\n\n"

# OpenAI's error `type` for a status (its clients switch on the status and `code`).
ERROR_TYPES = {401: "authentication_error", 403: "permission_error", 429: "rate_limit_error"}
# A failed response's `error.code` must be one of OpenAI's; the §1 code goes in `type`.
RESPONSE_ERROR_CODES = {
    "upstream_busy": "rate_limit_exceeded",
    "quota_exceeded": "rate_limit_exceeded",
}


def epoch(moment: datetime) -> int:
    """Seconds since the epoch of a UTC time (aware, or naive as some databases give it back)."""
    return calendar.timegm(moment.utctimetuple())


def error_body(status: int, code: str, message: str, param: str | None = None) -> dict[str, Any]:
    """OpenAI's error envelope; `code` is the contract's §1 code."""
    kind = ERROR_TYPES.get(status) or ("server_error" if status >= 500 else "invalid_request_error")
    if code == "quota_exceeded":
        kind = "insufficient_quota"
    return {"error": {"message": message, "type": kind, "code": code, "param": param}}


def failure_body(error: ApiError) -> dict[str, Any]:
    return error_body(error.status, error.code, error.detail, error.extra.get("param"))


def annotations(text: str, sources: list[dict[str, Any]]) -> list[tuple[int, int, dict]]:
    """Each source with the span of the "[n]" mark that cites it (the k-th distinct number
    marked is the k-th source: sources come in the order cited); a source no mark names
    (an agent that cites without marks) is placed at the end of the text."""
    spans: list[tuple[int, int]] = []
    seen: set[str] = set()
    for match in CITATION.finditer(text):
        for number in match.group(1).split(","):
            if number.strip() not in seen:
                seen.add(number.strip())
                spans.append((match.start(), match.end()))
    end = len(text)
    return [
        (*(spans[index] if index < len(spans) else (end, end)), source)
        for index, source in enumerate(sources)
    ]


# Chat Completions ------------------------------------------------------------------------


def completion_usage(usage: dict[str, int]) -> dict[str, int]:
    return {name: int(usage.get(name, 0)) for name in _USAGE}


_USAGE = ("prompt_tokens", "completion_tokens", "total_tokens")


def chat_annotations(text: str, sources: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [
        {
            "type": "url_citation",
            "url_citation": {
                "url": source.get("url") or "",
                "title": source.get("title") or "",
                "start_index": start,
                "end_index": end,
            },
        }  # fmt: skip
        for start, end, source in annotations(text, sources)
    ]


def chat_completion(result: TurnResult, model: str) -> dict[str, Any]:
    message = {
        "role": "assistant",
        "content": result.text,
        "refusal": None,
        "annotations": chat_annotations(result.text, result.sources),
    }
    return {
        "id": f"chatcmpl-{result.message_id}",
        "object": "chat.completion",
        "created": epoch(result.created_at),
        "model": model,
        "choices": [{"index": 0, "message": message, "finish_reason": "stop", "logprobs": None}],
        "usage": completion_usage(result.usage),
        "sources": result.sources,
    }


def chunks(
    events: Iterator[TurnEvent | None], model: str, created: int, *, include_usage: bool
) -> Iterator[str]:
    """`chat.completion.chunk` frames as the turn happens: the role first, each text delta,
    a last chunk with `finish_reason` (and chatsvc's `sources`), the usage chunk when asked
    for, then `[DONE]`. A failure is an `error` frame, as OpenAI sends one mid-stream."""
    chunk_id = ""
    for event in events:
        if event is None:
            yield PING
        elif isinstance(event, TurnStarted):
            chunk_id = f"chatcmpl-{event.message_id}"
            yield _data(_chunk(chunk_id, model, created, {"role": "assistant", "content": ""}))
        elif isinstance(event, TextDelta):
            yield _data(_chunk(chunk_id, model, created, {"content": event.text}))
        elif isinstance(event, TurnResult):
            if not chunk_id:
                chunk_id = f"chatcmpl-{event.message_id}"
            if event.status == "cancelled":
                return
            last = _chunk(chunk_id, model, created, {}, "stop")
            last["sources"] = event.sources
            yield _data(last)
            if include_usage:
                usage = _chunk(chunk_id, model, created, None)
                usage["usage"] = completion_usage(event.usage)
                yield _data(usage)
            yield DONE
            return
        elif isinstance(event, TurnFailed):
            yield _data(failure_body(event.error))
            return


def _chunk(
    chunk_id: str, model: str, created: int, delta: dict[str, Any] | None, finish: str | None = None
) -> dict[str, Any]:
    choices = (
        [] if delta is None
        else [{"index": 0, "delta": delta, "finish_reason": finish, "logprobs": None}]
    )  # fmt: skip
    return {
        "id": chunk_id, "object": "chat.completion.chunk", "created": created, "model": model,
        "choices": choices,
    }  # fmt: skip


def _data(body: dict[str, Any]) -> str:
    return f"data: {json.dumps(body, ensure_ascii=False)}\n\n"


# Responses -------------------------------------------------------------------------------

STATUSES = {"completed": "completed", "failed": "failed", "cancelled": "cancelled",
            "pending": "in_progress"}  # fmt: skip


def response_usage(usage: dict[str, int]) -> dict[str, Any]:
    return {
        "input_tokens": int(usage.get("prompt_tokens", 0)),
        "input_tokens_details": {"cached_tokens": 0},
        "output_tokens": int(usage.get("completion_tokens", 0)),
        "output_tokens_details": {"reasoning_tokens": 0},
        "total_tokens": int(usage.get("total_tokens", 0)),
    }


def output_text(text: str, sources: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "type": "output_text",
        "text": text,
        "annotations": [
            {
                "type": "url_citation",
                "url": source.get("url") or "",
                "title": source.get("title") or "",
                "start_index": start,
                "end_index": end,
            }  # fmt: skip
            for start, end, source in annotations(text, sources)
        ],
        "logprobs": [],
    }


def message_item(message_id: str, status: str, content: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "type": "message", "id": message_id, "status": status, "role": "assistant",
        "content": content,
    }  # fmt: skip


class Shell:
    """What every `response` of one turn repeats: the ids, the model, the request's echo."""

    def __init__(
        self, *, model: str, created: int, instructions: str | None,
        previous_response_id: str | None, metadata: dict[str, str] | None,
    ) -> None:  # fmt: skip
        self.model, self.created, self.instructions = model, created, instructions
        self.previous_response_id, self.metadata = previous_response_id, metadata or {}

    def response(
        self, response_id: str, conversation_id: str, status: str, *,
        output: list[dict[str, Any]] | None = None, usage: dict[str, Any] | None = None,
        error: dict[str, Any] | None = None, sources: list[dict[str, Any]] | None = None,
    ) -> dict[str, Any]:  # fmt: skip
        return {
            "id": response_id, "object": "response", "created_at": self.created,
            "status": status, "model": self.model, "output": output or [],
            "usage": usage, "error": error, "incomplete_details": None,
            "instructions": self.instructions, "metadata": self.metadata,
            "previous_response_id": self.previous_response_id,
            "conversation": {"id": conversation_id}, "store": True,
            "parallel_tool_calls": False, "tool_choice": "none", "tools": [],
            "temperature": None, "top_p": None, "text": {"format": {"type": "text"}},
            "truncation": "disabled", "sources": sources or [],
        }  # fmt: skip

    def settled(self, result: TurnResult, error: dict[str, Any] | None = None) -> dict[str, Any]:
        status = STATUSES.get(result.status, "completed")
        item_status = "completed" if status == "completed" else "incomplete"
        content = [output_text(result.text, result.sources)]
        return self.response(
            result.message_id, result.conversation_id, status,
            output=[message_item(result.message_id, item_status, content)],
            usage=response_usage(result.usage), error=error or _stored_error(result),
            sources=result.sources,
        )  # fmt: skip


def response_error(code: str, message: str) -> dict[str, Any]:
    """A failed response's `error`: OpenAI's code, the contract's in `type`."""
    openai_code = RESPONSE_ERROR_CODES.get(code, "server_error")
    return {"code": openai_code, "message": message, "type": code}


def _stored_error(result: TurnResult) -> dict[str, Any] | None:
    if result.status != "failed":
        return None
    code = result.error_code or "upstream_error"
    return response_error(code, "The turn failed; send it again to retry.")


def response_events(events: Iterator[TurnEvent | None], shell: Shell) -> Iterator[str]:
    """The Responses API's typed events as the turn happens, ending with `response.completed`
    or `response.failed` (a cancelled turn: `response.incomplete`)."""
    frames = _ResponseFrames(shell)
    for event in events:
        if event is None:
            yield PING
            continue
        yield from frames.of(event)
        if isinstance(event, TurnResult | TurnFailed):
            return


class _ResponseFrames:
    def __init__(self, shell: Shell) -> None:
        self.shell = shell
        self.sequence = 0
        self.started: TurnStarted | None = None
        self.text: list[str] = []

    def of(self, event: TurnEvent) -> Iterator[str]:
        if isinstance(event, TurnStarted):
            self.started = event
            yield from self._opening(event)
        elif isinstance(event, TextDelta):
            self.text.append(event.text)
            yield self._frame("response.output_text.delta", **self._where(), delta=event.text,
                              logprobs=[])  # fmt: skip
        elif isinstance(event, TurnResult):
            yield from self._closing(event)
        elif isinstance(event, TurnFailed):
            assert self.started is not None
            error = response_error(event.error.code, event.error.detail)
            response = self.shell.response(
                self.started.message_id, self.started.conversation_id, "failed", error=error
            )
            yield self._frame("response.failed", response=response)
        elif isinstance(event, SourcesFound):
            return

    def _opening(self, started: TurnStarted) -> Iterator[str]:
        pending = self.shell.response(started.message_id, started.conversation_id, "in_progress")
        yield self._frame("response.created", response=pending)
        yield self._frame("response.in_progress", response=pending)
        item = message_item(started.message_id, "in_progress", [])
        yield self._frame("response.output_item.added", output_index=0, item=item)
        yield self._frame("response.content_part.added", **self._where(),
                          part=output_text("", []))  # fmt: skip

    def _closing(self, result: TurnResult) -> Iterator[str]:
        part = output_text(result.text, result.sources)
        for index, annotation in enumerate(part["annotations"]):
            yield self._frame("response.output_text.annotation.added", **self._where(),
                              annotation_index=index, annotation=annotation)  # fmt: skip
        yield self._frame("response.output_text.done", **self._where(), text=result.text,
                          logprobs=[])  # fmt: skip
        yield self._frame("response.content_part.done", **self._where(), part=part)
        settled = self.shell.settled(result)
        yield self._frame("response.output_item.done", output_index=0, item=settled["output"][0])
        name = {"completed": "response.completed", "failed": "response.failed"}.get(
            settled["status"], "response.incomplete"
        )
        yield self._frame(name, response=settled)

    def _where(self) -> dict[str, Any]:
        assert self.started is not None
        return {"item_id": self.started.message_id, "output_index": 0, "content_index": 0}

    def _frame(self, name: str, **body: Any) -> str:
        self.sequence += 1
        data = {"type": name, "sequence_number": self.sequence, **body}
        return f"event: {name}\ndata: {json.dumps(data, ensure_ascii=False)}\n\n"
