"""The OpenAI-compatible API (contract §9): chatsvc's assistants behind OpenAI's wire format,
for the clients people already have. One more transport over the turn engine: each view turns
the request into a TurnRequest and the turn into OpenAI's shapes (render.py).

    model `todo`       the Todo assistant of the token's user (task tools and the knowledge
                       base); needs a bearer token
    model `knowledge`  the knowledge assistant (the knowledge base only), a session: anonymous
                       when the service allows anonymous sessions, else the token's user's

Errors use OpenAI's envelope `{"error": {"message", "type", "code", "param"}}` with the
contract's statuses and codes: the app's problem body, rewrapped here for paths under /v1.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from http import HTTPStatus
from typing import Any

from flask import Response, current_app, request, stream_with_context

from ... import auth
from ...agent.base import HistoryMessage
from ...errors import PROBLEM_JSON, ApiError, Unauthorized, ValidationFailed
from ...observability import record_timings
from ...schemas import IdempotencyHeadersSchema
from ...services import replies
from ...services.conversations import SESSION, USER, Access
from ...services.turns import IdempotencyKey, TurnEngine, TurnHandle, TurnRequest, TurnResult
from .. import TURN_DOCS, Blueprint, admits_turns
from ..chat import REPLAYED, idempotency_for
from ..sse import EVENT_STREAM, NO_BUFFERING
from . import render
from .schemas import (
    CONTEXT_ROLES,
    INSTRUCTION_ROLES,
    MODELS,
    ChatCompletionRequestSchema,
    ChatCompletionSchema,
    ModelListSchema,
    ModelSchema,
    OpenAIErrorSchema,
    ResponseRequestSchema,
    ResponseSchema,
)

bp = Blueprint(
    "openai", __name__, url_prefix="/v1",
    description="OpenAI-compatible API (contract §9): models `todo` and `knowledge`. Errors in "
    "OpenAI's envelope; see docs/openai-clients.md.",
)  # fmt: skip

TURN_ERRORS = (400, 401, 403, 404, 409, 410, 413, 415, 422, 429, 500, 502, 503, 504)
CREATED = 1767225600  # 2026-01-01: when these models were first served (OpenAI's `created`)
DESCRIPTIONS = {
    "todo": "The Todo assistant: manages the token's user's tasks with server-side tools, "
    "and answers from the knowledge base with citations.",
    "knowledge": "The knowledge assistant: answers from the knowledge base with citations.",
}
SAMPLING = ("temperature", "top_p", "max_tokens", "max_completion_tokens", "stop", "seed",
            "presence_penalty", "frequency_penalty")  # fmt: skip


class ModelNotFound(ApiError):
    status, code = 404, "model_not_found"

    def __init__(self, model: str) -> None:
        super().__init__(
            f"The model '{model[:128]}' does not exist; use one of: {', '.join(MODELS)}.",
            param="model",
        )


class UnsupportedParameter(ApiError):
    status, code = 400, "unsupported_parameter"

    def __init__(self, param: str, detail: str) -> None:
        super().__init__(detail, param=param)


def openai_errors(*statuses: int, docs: dict[int, dict[str, Any]] | None = None) -> Any:
    """Document the error responses an operation can return, in OpenAI's envelope."""

    def decorate(view: Any) -> Any:
        for status in statuses:
            own = {"description": HTTPStatus(status).phrase, **(docs or {}).get(status, {})}
            view = bp.alt_response(status, schema=OpenAIErrorSchema, **own)(view)
        return view

    return decorate


@bp.get("/models")
@bp.response(200, ModelListSchema)
@openai_errors(401, 422, 429)
def list_models() -> Any:
    """The models this service answers as (OpenAI's list shape)."""
    return {"object": "list", "data": [_model_card(name) for name in MODELS]}


@bp.get("/models/<model_id>")
@bp.response(200, ModelSchema)
@openai_errors(401, 404, 422, 429)
def get_model(model_id: str) -> Any:
    """One model."""
    return _model_card(_model(model_id))


# One Server-Sent Event: `data` holds a JSON object (or `[DONE]`); `event` names its type.
SSE_EVENT = {
    "type": "object",
    "required": ["data"],
    "properties": {name: {"type": "string"} for name in ("event", "data", "id")},
}


def streamed(schema: str, description: str) -> dict[str, Any]:
    """A 200 that is JSON, or with `stream: true` Server-Sent Events in OpenAI's format."""
    content = {
        "application/json": {"schema": {"$ref": f"#/components/schemas/{schema}"}},
        "text/event-stream": {"schema": SSE_EVENT},
    }
    return {"200": {"description": description, "content": content}}


@bp.post("/chat/completions")
@admits_turns
@bp.arguments(ChatCompletionRequestSchema)
@bp.arguments(IdempotencyHeadersSchema, location="headers")
@bp.response(200, ChatCompletionSchema)
@bp.doc(
    responses=streamed(
        "ChatCompletion", "The completion; with `stream: true`, `chat.completion.chunk` "
        "objects as Server-Sent Events, ending with `data: [DONE]`.",
    )
)  # fmt: skip
@openai_errors(*TURN_ERRORS, docs=TURN_DOCS)
def create_chat_completion(body: dict[str, Any], headers: dict[str, Any]) -> Any:
    """Chat Completions: the request's messages are the context; one stored turn."""
    _refuse_unsupported_chat(body)
    model = _model(body["model"])
    instructions, context, message = _split_messages(body["messages"])
    access, kind = _caller(model)
    conversation_id = (body.get("metadata") or {}).get("conversation_id")
    handle = _take(
        model, access, kind, body, headers, message, conversation_id,
        context=context, instructions=instructions, sampling=_sampling(body, SAMPLING),
    )  # fmt: skip
    usage = bool((body.get("stream_options") or {}).get("include_usage"))
    return _answer(
        handle, body["stream"],
        lambda events: render.chunks(events, model, _now(), include_usage=usage),
        lambda result: render.chat_completion(result, model),
    )  # fmt: skip


@bp.post("/responses")
@admits_turns
@bp.arguments(ResponseRequestSchema)
@bp.arguments(IdempotencyHeadersSchema, location="headers")
@bp.response(200, ResponseSchema)
@bp.doc(
    responses=streamed(
        "Response", "The response; with `stream: true`, typed Server-Sent Events "
        "(`response.created`, `response.output_text.delta`, …, `response.completed` or "
        "`response.failed`).",
    )
)  # fmt: skip
@openai_errors(*TURN_ERRORS, docs=TURN_DOCS)
def create_response(body: dict[str, Any], headers: dict[str, Any]) -> Any:
    """Responses: continues chatsvc's stored conversation (previous_response_id, conversation)."""
    _refuse_unsupported_response(body)
    model = _model(body["model"])
    access, kind = _caller(model)
    conversation_id = _continued(body, access, kind)
    instructions, context, message = _split_input(body, conversation_id)
    handle = _take(
        model, access, kind, body, headers, message, conversation_id,
        context=context, instructions=instructions, sampling=_response_sampling(body),
    )  # fmt: skip
    shell = render.Shell(
        model=model, created=_now(), instructions=body.get("instructions"),
        previous_response_id=body.get("previous_response_id"), metadata=body.get("metadata"),
    )  # fmt: skip
    return _answer(
        handle, body["stream"], lambda events: render.response_events(events, shell), shell.settled
    )


@bp.get("/responses/<response_id>")
@bp.response(200, ResponseSchema)
@openai_errors(401, 404, 410, 422, 429)
def get_response(response_id: str) -> Any:
    """A stored response (the assistant message `response_id`), as the caller may see it."""
    subject = auth.caller_id()
    turns = engine()
    with turns.database.read() as session:
        replies.conversation_of(session, response_id, subject, auth.lifetimes())
    result = turns.stored(response_id)
    shell = render.Shell(
        model="todo" if result.kind == USER else "knowledge",
        created=render.epoch(result.created_at),
        instructions=None, previous_response_id=None, metadata=None,
    )  # fmt: skip
    return _json(shell.settled(result), {})


@bp.after_app_request
def _openai_errors(response: Response) -> Response:
    """Under /v1 (unknown routes and wrong methods included), the app's problem body is
    rewrapped in OpenAI's envelope; the status and headers (Retry-After, Allow) stay."""
    if response.mimetype != PROBLEM_JSON or not request.path.startswith("/v1/"):
        return response
    problem = json.loads(response.get_data())
    param, leaf = _param(problem.get("errors"))
    param = problem.get("param") or param
    detail = f"{param}: {leaf}" if leaf else problem["detail"]
    envelope = render.error_body(problem["status"], problem["code"], detail, param)
    response.set_data(json.dumps(envelope))
    response.mimetype = "application/json"
    return response


def engine() -> TurnEngine:
    return current_app.extensions["chatsvc.turns"]


# What a request asks for ------------------------------------------------------------------


def _model(name: str) -> str:
    if name not in MODELS:
        raise ModelNotFound(name)
    return name


def _model_card(name: str) -> dict[str, Any]:
    return {"id": name, "object": "model", "created": CREATED, "owned_by": "chatsvc",
            "description": DESCRIPTIONS[name]}  # fmt: skip


def _caller(model: str) -> tuple[Access, str]:
    """`todo` acts for the token's user (its tasks are theirs); `knowledge` is a session, as
    on /api/chat: the token's user's, or anonymous where the service allows it."""
    if model == "knowledge":
        return auth.session_access(), SESSION
    subject = auth.caller_id()
    if subject is None:
        raise Unauthorized(
            "The `todo` model works on the tasks of the token's user: send a bearer token "
            "(the SDK's api_key). Without one, use the `knowledge` model."
        )
    return Access(subject, kind=USER, rules=auth.lifetimes()), USER


def _continued(body: dict[str, Any], access: Access, kind: str) -> str | None:
    """The conversation a response continues: previous_response_id's, or `conversation`."""
    previous = body.get("previous_response_id")
    named = _conversation_id(body.get("conversation"))
    if not previous:
        return named
    with engine().database.read() as session:
        found = replies.conversation_of(session, previous, access.user_id, auth.lifetimes(), kind)
    if named is not None and named != found:  # OpenAI refuses the pair; the same one is fine
        raise ValidationFailed(
            "conversation: not the conversation of previous_response_id; send one of the two.",
            errors={"json": {"conversation": ["Not the conversation of previous_response_id."]}},
        )
    return found


def _conversation_id(conversation: Any) -> str | None:
    """`conversation` as an id: a string, or `{"id"}`."""
    if conversation is None:
        return None
    if isinstance(conversation, dict) and set(conversation) == {"id"}:
        conversation = conversation["id"]
    if not isinstance(conversation, str) or not conversation:
        raise ValidationFailed(
            "conversation: a conversation id, or an object with one.",
            errors={"json": {"conversation": ["A conversation id, or an object with one."]}},
        )
    return conversation


def _split_messages(
    messages: list[dict[str, Any]], field: str = "messages"
) -> tuple[str, tuple[HistoryMessage, ...], str]:
    """(the client's instructions, its context, the new user message) of a message list: the
    last user/assistant message must be the user's; system and developer messages become
    instructions, said after chatsvc's own prompt."""
    instructions: list[str] = []
    said: list[tuple[int, HistoryMessage]] = []
    for index, item in enumerate(messages):
        role = item["role"]
        if role in INSTRUCTION_ROLES:
            instructions.append(item["content"])
        elif role in CONTEXT_ROLES:
            said.append((index, HistoryMessage(role, item["content"])))
        else:
            raise UnsupportedParameter(
                f"{field}[{index}].role", f"Messages with the role '{role}' belong to client-side "
                "tools, which are not supported.",
            )  # fmt: skip
    if not said or said[-1][1].role != "user":
        raise ValidationFailed(
            f"{field}: the last message (other than system ones) must be the user's.",
            errors={"json": {field: ["The last message must be the user's."]}},
        )
    index, last = said[-1]
    message = last.content.strip()
    limit = current_app.config["MAX_MESSAGE_CHARS"]
    if not 1 <= len(message) <= limit:
        problem = f"Length must be between 1 and {limit}."
        raise ValidationFailed(
            f"{field}[{index}].content: {problem}",
            errors={"json": {field: {str(index): {"content": [problem]}}}},
        )
    context = tuple(item for _, item in said[:-1] if item.content.strip())
    return "\n\n".join(text for text in instructions if text.strip()), context, message


def _refuse_unsupported_chat(body: dict[str, Any]) -> None:
    tools = "Client-side tools are not supported: chatsvc runs its own tools on the server."
    checks = (
        ("tools", bool(body.get("tools")), tools),
        ("functions", bool(body.get("functions")), tools),
        ("tool_choice", body.get("tool_choice") not in (None, "none", "auto"), tools),
        ("function_call", body.get("function_call") not in (None, "none", "auto"), tools),
        ("n", body.get("n") not in (None, 1), "Only one choice (n = 1) is supported."),
        ("logprobs", bool(body.get("logprobs")), "logprobs are not supported."),
        ("top_logprobs", bool(body.get("top_logprobs")), "logprobs are not supported."),
        ("response_format", (body.get("response_format") or {"type": "text"}).get("type")
         != "text", "Only text responses are supported."),
    )  # fmt: skip
    _refuse(checks)


def _refuse_unsupported_response(body: dict[str, Any]) -> None:
    tools = "Client-side tools are not supported: chatsvc runs its own tools on the server."
    text_format = ((body.get("text") or {}).get("format") or {"type": "text"}).get("type")
    checks = (
        ("tools", bool(body.get("tools")), tools),
        ("tool_choice", body.get("tool_choice") not in (None, "none", "auto"), tools),
        ("top_logprobs", bool(body.get("top_logprobs")), "logprobs are not supported."),
        ("text.format", text_format != "text", "Only text responses are supported."),
        ("store", body.get("store") is False,
         "chatsvc stores every turn (it is the conversation's history): store must be true."),
    )  # fmt: skip
    _refuse(checks)


def _refuse(checks: tuple[tuple[str, bool, str], ...]) -> None:
    for param, refused, detail in checks:
        if refused:
            raise UnsupportedParameter(param, detail)


def _split_input(
    body: dict[str, Any], conversation_id: str | None
) -> tuple[str, tuple[HistoryMessage, ...] | None, str]:
    """`input` as instructions (the request's own first), context and the new message. A
    response that continues a conversation takes its context from the stored one."""
    instructions, context, message = _split_messages(body["input"], field="input")
    if conversation_id is not None and context:
        raise UnsupportedParameter(
            "input", "Continuing a conversation, `input` holds the new user message (and "
            "instructions) only: the earlier messages are the stored conversation's.",
        )  # fmt: skip
    instructions = "\n\n".join(filter(None, (body.get("instructions"), instructions)))
    return instructions, context or None, message


def _sampling(body: dict[str, Any], names: tuple[str, ...]) -> dict[str, Any]:
    return {name: body[name] for name in names if body.get(name) is not None}


def _response_sampling(body: dict[str, Any]) -> dict[str, Any]:
    sampling = _sampling(body, ("temperature", "top_p"))
    if body.get("max_output_tokens") is not None:
        sampling["max_tokens"] = body["max_output_tokens"]
    return sampling


# What the response carries ---------------------------------------------------------------


def _idempotency(
    access: Access, headers: dict[str, Any], body: dict[str, Any], conversation_id: str | None
) -> IdempotencyKey | None:
    """As on /api, with the body's streaming fields left out: the same turn may be asked for
    again streamed or not (on /api that is the Accept header), and gets the first one back."""
    same_turn = {k: v for k, v in body.items() if k not in ("stream", "stream_options")}
    return idempotency_for(access, headers["idempotency_key"], same_turn, conversation_id)


def _take(
    model: str, access: Access, kind: str, body: dict[str, Any], headers: dict[str, Any],
    message: str, conversation_id: str | None, **turn: Any,
) -> TurnHandle:  # fmt: skip
    """The turn, through the one engine: the same TurnRequest as /api's, plus the client's
    context, instructions and sampling settings (`turn`)."""
    return engine().take(
        TurnRequest(
            access, kind, message, conversation_id,
            _idempotency(access, headers, body, conversation_id),
            client_address=request.remote_addr, timezone=headers["timezone"],
            knowledge_only=model == "knowledge", **turn,
        )
    )  # fmt: skip


def _answer(
    handle: TurnHandle,
    stream: bool,
    frames: Callable[[Iterator[Any]], Iterator[str]],
    body: Callable[[TurnResult], dict[str, Any]],
) -> Response:
    """The turn streamed (`frames` of its events) or, run to its end, as JSON (`body`)."""
    headers = {"X-Conversation-Id": handle.started.conversation_id}
    if handle.replayed:
        headers.update(REPLAYED)
    if stream:
        # A client that goes goes alone (TURN_ON_DISCONNECT=continue): the turn is stored
        # whole, for GET /v1/responses/{id} or the conversation's history.
        outlive = engine().settings.on_disconnect == "continue"
        events = handle.events(current_app.config["SSE_PING_SECONDS"], outlive=outlive)
        return _stream(frames(events), events, {**headers, **_quota(handle.quota_remaining)})
    result = handle.result()
    record_timings(result.timings)
    return _json(body(result), {**headers, **_quota(result.quota_remaining)})


def _quota(remaining: int | None) -> dict[str, str]:
    return {} if remaining is None else {"X-Quota-Remaining": str(remaining)}


def _json(body: dict[str, Any], headers: dict[str, str]) -> Response:
    return Response(json.dumps(body, ensure_ascii=False), 200, headers, mimetype="application/json")


def _stream(frames: Iterator[str], events: Iterator[Any], headers: dict[str, str]) -> Response:
    """Frames as the turn happens; the turn's events are closed with the stream (a client
    that has gone stops the run, as on /api)."""

    def guarded() -> Iterator[str]:
        try:
            yield from frames
        finally:
            close = getattr(events, "close", None)
            if close is not None:
                close()

    return Response(
        stream_with_context(guarded()), mimetype=EVENT_STREAM, headers={**NO_BUFFERING, **headers}
    )


def _now() -> int:
    return int(time.time())


def _param(errors: Any) -> tuple[str | None, str | None]:
    """The first invalid field of a problem's `errors` as OpenAI names one
    (`messages[0].content`, `model`, a header's name), and what is wrong with it."""
    if not isinstance(errors, dict):
        return None, None
    for location in ("json", "headers", "query"):
        fields = errors.get(location)
        if isinstance(fields, dict) and fields:
            return _path(fields)
    return None, None


def _path(fields: dict[str, Any]) -> tuple[str, str | None]:
    name, inner = next(iter(fields.items()))
    path = str(name)
    while isinstance(inner, dict) and inner:
        key, inner = next(iter(inner.items()))
        path += f"[{key}]" if str(key).isdigit() else f".{key}"
    leaf = inner[0] if isinstance(inner, list) and inner and isinstance(inner[0], str) else None
    return path, leaf
