"""Chat turns: the Todo assistant (user-scoped) and knowledge sessions. Each view turns the
request into a TurnRequest and the turn into JSON or SSE; the turn engine does the rest."""

from __future__ import annotations

import hashlib
from typing import Any

from flask import Response, current_app, jsonify, request

from .. import auth
from ..errors import ValidationFailed
from ..observability import record_timings
from ..schemas import (
    ChatHeadersSchema,
    SessionChatSchema,
    TurnAcceptedSchema,
    TurnSchema,
    UserChatSchema,
)
from ..services.conversations import SESSION, USER, Access
from ..services.knowledge import Scope
from ..services.turns import IdempotencyKey, TurnEngine, TurnHandle, TurnRequest
from . import TURN_DOCS, Blueprint, accepted, admits_turns, problems, sse

bp = Blueprint("chat", __name__, url_prefix="/api", description="Chat turns.")

TURN_ERRORS = (400, 401, 403, 404, 409, 413, 415, 422, 429, 500, 502, 503, 504)
REPLAYED = {"Idempotent-Replayed": "true"}
BACKGROUND = "With `Prefer: respond-async`: the turn runs in the background."
_ACCEPTED_SCHEMA = TurnAcceptedSchema()  # built once (api/sse.py's _TURN_SCHEMA says why)


@bp.post("/<user_id>/chat")
@admits_turns
@bp.arguments(UserChatSchema)
@bp.arguments(ChatHeadersSchema, location="headers")
@bp.response(200, TurnSchema)
@bp.alt_response(202, schema=TurnAcceptedSchema, description=BACKGROUND)
@problems(bp, *TURN_ERRORS, docs=TURN_DOCS)
def chat_as_user(body: dict[str, Any], headers: dict[str, Any], user_id: str) -> Any:
    """Send a message to the Todo assistant, in a new or an existing conversation."""
    access = auth.user_access(user_id)
    return _turn(access, USER, body, headers, body["conversation_id"])


@bp.post("/chat")
@admits_turns
@bp.arguments(SessionChatSchema)
@bp.arguments(ChatHeadersSchema, location="headers")
@bp.response(200, TurnSchema)
@bp.alt_response(202, schema=TurnAcceptedSchema, description=BACKGROUND)
@problems(bp, *TURN_ERRORS, docs=TURN_DOCS)
def start_session(body: dict[str, Any], headers: dict[str, Any]) -> Any:
    """Start a knowledge session with its first message."""
    return _turn(auth.session_access(), SESSION, body, headers)


@bp.post("/chat/<session_id>")
@admits_turns
@bp.arguments(SessionChatSchema)
@bp.arguments(ChatHeadersSchema, location="headers")
@bp.response(200, TurnSchema)
@bp.alt_response(202, schema=TurnAcceptedSchema, description=BACKGROUND)
@problems(bp, *TURN_ERRORS, 410, docs=TURN_DOCS)
def continue_session(body: dict[str, Any], headers: dict[str, Any], session_id: str) -> Any:
    """Send the next message of a knowledge session."""
    return _turn(auth.session_access(), SESSION, body, headers, session_id)


def engine() -> TurnEngine:
    return current_app.extensions["chatsvc.turns"]


def _turn(
    access: Access, kind: str, body: dict[str, Any], options: dict[str, Any],
    conversation_id: str | None = None,
) -> Any:  # fmt: skip
    idempotent = idempotency_for(access, options["idempotency_key"], body, conversation_id)
    scope = Scope(tuple(body["collections"]), tuple(sorted(body["document_metadata"].items())))
    handle = engine().take(
        TurnRequest(access, kind, body["message"], conversation_id, idempotent,
                    client_address=request.remote_addr, timezone=options["timezone"],
                    scope=scope)
    )  # fmt: skip
    headers = dict(REPLAYED) if handle.replayed else {}
    if accepted.prefers_async(options["prefer"]):
        return _background(handle, access, {**headers, **_quota(handle.quota_remaining)})
    if sse.wants_stream():
        return sse.respond(handle, headers={**headers, **_quota(handle.quota_remaining)})
    result = handle.result()
    record_timings(result.timings)
    return sse.turn_body(result), 200, {**headers, **_quota(result.quota_remaining)}


def _background(handle: TurnHandle, access: Access, headers: dict[str, str]) -> Response:
    """202 at once; the turn runs on with its event log as its only reader, as a stream
    whose client has gone (a replay: the stored turn's status)."""
    if handle.replayed:
        status = handle.result().status
    else:
        handle.start()
        status = "pending"
    body, code, location = accepted.accepted(handle.started, access.user_id, status)
    response = jsonify(_ACCEPTED_SCHEMA.dump(body))
    response.status_code = code
    response.headers.update({**headers, **location, "Preference-Applied": accepted.PREFERENCE})
    return response


def _quota(remaining: int | None) -> dict[str, str]:
    """X-Quota-Remaining, when a quota applies (contract §10)."""
    return {} if remaining is None else {"X-Quota-Remaining": str(remaining)}


def idempotency_for(
    access: Access, key: str | None, body: dict[str, Any], conversation_id: str | None
) -> IdempotencyKey | None:
    """The key's scope (contract §1): a signed-in caller's (or a trusted path user's) own id;
    an anonymous session's id itself (hashed: whoever holds it may read the session anyway).
    An anonymous caller starting a session has nothing that tells it from another client
    behind the same address, so its key could hand one client another's session: refused."""
    if key is None:
        return None
    if access.user_id is not None:
        scope = f"user:{access.user_id}"
    elif conversation_id is not None:
        scope = "session:" + hashlib.sha256(conversation_id.encode()).hexdigest()[:32]
    else:
        raise ValidationFailed(
            "An anonymous session cannot be started with an Idempotency-Key: nothing tells you "
            "from another client behind the same address. Send a token, or start the session "
            "without a key and send keys with its next messages.",
            errors={"headers": {"Idempotency-Key": ["Not accepted when starting an anonymous "
                                                     "session."]}},
        )  # fmt: skip
    return IdempotencyKey(scope, request.path, key, body)
