"""The 202 of a turn that goes on without the request (contract §5): a background chat POST
(`Prefer: respond-async`) and a cancel answer with the turn's ids, the links to follow it
(the message, its events, its cancel) and `Location` of the message."""

from __future__ import annotations

from typing import Any
from urllib.parse import quote

from flask import request

from ..services.conversations import SESSION
from ..services.turns import TurnStarted

PREFERENCE = "respond-async"


def prefers_async(prefer: str) -> bool:
    """`Prefer: respond-async` (RFC 7240: comma-separated preferences, each maybe with
    parameters after `;`, names case-insensitive). Linear in the header's length."""
    return any(
        part.split(";", 1)[0].split("=", 1)[0].strip().lower() == PREFERENCE
        for part in prefer.split(",")
    )


def links(started: TurnStarted, user_id: str | None) -> dict[str, str]:
    """Where the turn's reply lives: a session's routes for a session, else its user's."""
    if started.kind == SESSION or user_id is None:
        base = f"/api/session/{_segment(started.conversation_id)}"
    else:
        base = f"/api/{_segment(user_id)}/conversations/{_segment(started.conversation_id)}"
    message = f"{request.script_root}{base}/messages/{_segment(started.message_id)}"
    return {"message": message, "events": f"{message}/events", "cancel": f"{message}/cancel"}


def accepted(
    started: TurnStarted, user_id: str | None, status: str = "pending"
) -> tuple[dict[str, Any], int, dict[str, str]]:
    """The 202 response: TurnAcceptedSchema's body, and `Location` of the message."""
    found = links(started, user_id)
    body: dict[str, Any] = {
        "conversation_id": started.conversation_id,
        "message_id": started.message_id,
        "status": status,
        "links": found,
    }
    if started.kind == SESSION:
        body["session_id"] = started.conversation_id
    return body, 202, {"Location": found["message"]}


def _segment(value: str) -> str:
    return quote(value, safe="")
