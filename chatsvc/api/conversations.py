"""A user's conversation history, for frontends: list and search, read, rename, export, delete."""

from __future__ import annotations

import json
from typing import Any

from flask import Response

from .. import auth, db
from ..db import utcnow
from ..models import Conversation, Message
from ..schemas import (
    ConversationDetailSchema,
    ConversationExportSchema,
    ConversationListArgsSchema,
    ConversationPageSchema,
    ConversationRenameSchema,
    ConversationSchema,
    EventsArgsSchema,
    EventsHeadersSchema,
    ExportArgsSchema,
    MessageSchema,
    PageArgsSchema,
)
from ..services import conversations
from . import Blueprint, cached, problems, sse

bp = Blueprint("conversations", __name__, url_prefix="/api", description="Conversation history.")

FIELDS = ("id", "kind", "title", "created_at", "last_activity", "message_count")


@bp.get("/<user_id>/conversations")
@bp.arguments(ConversationListArgsSchema, location="query")
@cached(bp)
@bp.response(200, ConversationPageSchema)
@problems(bp, 401, 403, 404, 422, 429)
def list_conversations(args: dict[str, Any], user_id: str) -> dict[str, Any]:
    """The user's conversations and sessions, newest activity first; `q` searches them."""
    user = auth.user_for_path(user_id)
    if args["q"] is None:
        items, next_cursor = conversations.list_for_user(
            db.session(), user, args["limit"], args["cursor"]
        )
        return {"items": items, "next_cursor": next_cursor}
    found, next_cursor = conversations.search_for_user(
        db.session(), user, args["q"], args["limit"], args["cursor"]
    )
    items = [{**_fields(conversation), "match": match} for conversation, match in found]
    return {"items": items, "next_cursor": next_cursor}


@bp.get("/<user_id>/conversations/<conversation_id>")
@bp.arguments(PageArgsSchema, location="query")
@cached(bp)
@bp.response(200, ConversationDetailSchema)
@problems(bp, 401, 403, 404, 410, 422, 429)
def get_conversation(args: dict[str, Any], user_id: str, conversation_id: str) -> dict[str, Any]:
    """One conversation with its newest messages (oldest first) and a cursor to older ones."""
    found = conversations.get(db.session(), conversation_id, auth.user_access(user_id))
    messages, next_cursor = conversations.messages_page(
        db.session(), found, args["limit"], args["cursor"]
    )
    return {**_fields(found), "messages": messages, "next_cursor": next_cursor}


@bp.patch("/<user_id>/conversations/<conversation_id>")
@bp.arguments(ConversationRenameSchema)
@bp.response(200, ConversationSchema)
@problems(bp, 400, 401, 403, 404, 410, 413, 415, 422, 429)
def rename_conversation(body: dict[str, Any], user_id: str, conversation_id: str) -> Conversation:
    """Rename a conversation."""
    access = auth.user_access(user_id)
    return conversations.rename(db.session(), conversation_id, access, body["title"])


@bp.get("/<user_id>/conversations/<conversation_id>/export")
@bp.arguments(ExportArgsSchema, location="query")
@bp.response(200, ConversationExportSchema)
@bp.alt_response(200, content_type="text/markdown", description="With `format=markdown`.")
@problems(bp, 401, 403, 404, 410, 422, 429)
def export_conversation(args: dict[str, Any], user_id: str, conversation_id: str) -> Response:
    """Download the whole conversation (every message, tool call and citation), JSON or Markdown."""
    found, messages = conversations.export(db.session(), conversation_id, auth.user_access(user_id))
    document = {**_fields(found), "messages": messages, "exported_at": utcnow()}
    if args["format"] == "markdown":
        body, mimetype, extension = _markdown(found, messages), "text/markdown", "md"
    else:
        dumped = ConversationExportSchema().dump(document)
        body, mimetype, extension = json.dumps(dumped, ensure_ascii=False, indent=2), None, "json"
    response = Response(body + "\n", mimetype=mimetype or "application/json")
    response.headers["Content-Disposition"] = (
        f'attachment; filename="conversation-{found.id}.{extension}"'
    )
    return response


@bp.get("/<user_id>/conversations/<conversation_id>/messages/<message_id>")
@bp.response(200, MessageSchema)
@problems(bp, 401, 403, 404, 410, 422, 429)
def get_message(user_id: str, conversation_id: str, message_id: str) -> Message:
    """One message with its status (`pending` while its turn runs)."""
    access = auth.user_access(user_id)
    return conversations.message(db.session(), conversation_id, message_id, access)


@bp.get("/<user_id>/conversations/<conversation_id>/messages/<message_id>/events")
@bp.arguments(EventsArgsSchema, location="query")
@bp.arguments(EventsHeadersSchema, location="headers")
@bp.response(200, content_type=sse.EVENT_STREAM, description=sse.EVENTS_DOC)
@problems(bp, 401, 403, 404, 410, 422, 429)
def follow_events(
    args: dict[str, Any], headers: dict[str, Any], user_id: str, conversation_id: str,
    message_id: str,
) -> Response:  # fmt: skip
    """The turn's events after Last-Event-ID, then the live ones until `done` or `error`."""
    access = auth.user_access(user_id)
    found = conversations.message(db.session(), conversation_id, message_id, access)
    return sse.follow(found, args, headers)


@bp.delete("/<user_id>/conversations/<conversation_id>")
@bp.response(204)
@problems(bp, 401, 403, 404, 409, 410, 422, 429)
def delete_conversation(user_id: str, conversation_id: str) -> None:
    """Delete a conversation and its messages."""
    conversations.delete_conversation(db.session(), conversation_id, auth.user_access(user_id))


def _fields(conversation: Any) -> dict[str, Any]:
    return {name: getattr(conversation, name) for name in FIELDS}


def _markdown(conversation: Conversation, messages: list[Message]) -> str:
    """A readable transcript: each message under a heading, its tool calls (arguments and
    results as JSON) and its numbered citations with their links."""
    lines = [f"# {_line(conversation.title) or 'Conversation'}", ""]
    lines += [f"- id: `{conversation.id}`", f"- kind: {conversation.kind}",
              f"- created: {_when(conversation.created_at)}",
              f"- messages: {len(messages)}", ""]  # fmt: skip
    for message in messages:
        status = "" if message.status == "completed" else f" ({message.status})"
        lines += [f"## {message.role.capitalize()} · {_when(message.created_at)}{status}", ""]
        lines += [message.content or "_(no text)_", ""]
        for call in message.tool_calls or []:
            lines += [f"**Tool call** `{call.get('tool')}`", "", "```json",
                      json.dumps({"parameters": call.get("parameters"),
                                  "result": call.get("result")}, ensure_ascii=False, indent=2),
                      "```", ""]  # fmt: skip
        if message.sources:
            lines += ["**Sources**", ""]
            for n, source in enumerate(message.sources, 1):
                title = _line(str(source.get("title", ""))) or "source"
                link = f"[{title}]({_citation_url(source)})"
                lines.append(f"{n}. {link} — {_line(str(source.get('snippet', '')))[:300]}")
            lines.append("")
    return "\n".join(lines).rstrip("\n")


def _citation_url(source: dict[str, Any]) -> str:
    """The document's own url, else a link into the document (contract §6)."""
    if source.get("url"):
        return str(source["url"])
    ordinal = str(source.get("chunk_id", "")).rpartition(":")[2]
    return f"/api/documents/{source.get('document_id')}#chunk-{ordinal}"


def _line(text: str) -> str:
    return " ".join(text.split())


def _when(moment: Any) -> str:
    return moment.strftime("%Y-%m-%d %H:%M:%S UTC")
