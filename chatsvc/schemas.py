"""Marshmallow schemas: the same classes validate requests and document them in /openapi.json."""

from __future__ import annotations

import re
from datetime import UTC, datetime
from typing import Any

from flask import current_app
from marshmallow import Schema, ValidationError, fields, validate, validates_schema

# NUL and C0 controls other than tab, LF and CR; invalid UTF-8 never gets this far.
CONTROL_CHARS = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f]")


class UTCDateTime(fields.DateTime):
    """ISO 8601 in UTC with a `Z` suffix."""

    def _serialize(self, value: datetime | None, attr: Any, obj: Any, **kwargs: Any) -> str | None:
        if value is None:
            return None
        return value.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


class ChatText(fields.String):
    """A chat message: trimmed, 1..MAX_MESSAGE_CHARS characters, no control characters."""

    def _deserialize(self, value: Any, attr: Any, data: Any, **kwargs: Any) -> str:
        text = super()._deserialize(value, attr, data, **kwargs).strip()
        limit = current_app.config["MAX_MESSAGE_CHARS"]
        if not 1 <= len(text) <= limit:
            raise ValidationError(f"Length must be between 1 and {limit}.")
        if CONTROL_CHARS.search(text):
            raise ValidationError("Control characters other than tab, CR and LF are not allowed.")
        return text


class Title(fields.String):
    """A short single-line text, trimmed, with no control characters."""

    def __init__(self, max_length: int, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.max_length = max_length

    def _deserialize(self, value: Any, attr: Any, data: Any, **kwargs: Any) -> str:
        text = super()._deserialize(value, attr, data, **kwargs).strip()
        if not 1 <= len(text) <= self.max_length:
            raise ValidationError(f"Length must be between 1 and {self.max_length}.")
        if CONTROL_CHARS.search(text) or "\n" in text or "\r" in text:
            raise ValidationError("Control characters and line breaks are not allowed.")
        return text


# Requests -------------------------------------------------------------------------------


class UserChatSchema(Schema):
    message = ChatText(required=True, metadata={"description": "What the user says."})
    conversation_id = fields.String(
        load_default=None,
        allow_none=True,
        metadata={"description": "Continue this conversation; omit to start a new one."},
    )


class SessionChatSchema(Schema):
    message = ChatText(required=True, metadata={"description": "What the user says."})


class PageArgsSchema(Schema):
    limit = fields.Integer(load_default=20, validate=validate.Range(1, 100))
    cursor = fields.String(load_default=None, metadata={"description": "From `next_cursor`."})


class HistoryArgsSchema(PageArgsSchema):
    limit = fields.Integer(load_default=50, validate=validate.Range(1, 100))


class TaskListArgsSchema(PageArgsSchema):
    status = fields.String(
        load_default="all", validate=validate.OneOf(["all", "pending", "completed"])
    )


class TaskCreateSchema(Schema):
    title = Title(200, required=True)
    description = fields.String(load_default="", validate=validate.Length(max=1000))


class TaskUpdateSchema(Schema):
    title = Title(200)
    description = fields.String(validate=validate.Length(max=1000))
    completed = fields.Boolean()

    @validates_schema
    def not_empty(self, data: dict[str, Any], **kwargs: Any) -> None:
        if not data:
            raise ValidationError("Give at least one of title, description, completed.")


# Resources ------------------------------------------------------------------------------


class ToolCallSchema(Schema):
    tool = fields.String(required=True)
    parameters = fields.Dict(required=True)
    result = fields.Dict(required=True)


class SourceSchema(Schema):
    document_id = fields.String(required=True)
    title = fields.String(required=True)
    url = fields.String(allow_none=True)
    chunk_id = fields.String(required=True)
    snippet = fields.String(required=True)
    score = fields.Float(required=True)


class UsageSchema(Schema):
    prompt_tokens = fields.Integer(required=True)
    completion_tokens = fields.Integer(required=True)
    total_tokens = fields.Integer(required=True)


class MessageSchema(Schema):
    id = fields.String(required=True)
    role = fields.String(required=True, metadata={"enum": ["user", "assistant"]})
    content = fields.String(required=True)
    status = fields.String(
        required=True, metadata={"enum": ["pending", "completed", "failed", "cancelled"]}
    )
    error_code = fields.String(allow_none=True, metadata={"description": "Why a turn failed."})
    created_at = UTCDateTime(required=True)
    tool_calls = fields.List(fields.Nested(ToolCallSchema), required=True)
    sources = fields.List(fields.Nested(SourceSchema), required=True)
    usage = fields.Nested(UsageSchema, required=True)


class ContextSchema(Schema):
    messages = fields.Integer(required=True, metadata={"description": "History messages sent."})
    truncated = fields.Boolean(required=True)


class TurnSchema(Schema):
    conversation_id = fields.String(required=True)
    session_id = fields.String(metadata={"description": "Session routes only; = conversation_id."})
    message_id = fields.String(required=True)
    response = fields.String(required=True)
    tool_calls = fields.List(fields.Nested(ToolCallSchema), required=True)
    sources = fields.List(fields.Nested(SourceSchema), required=True)
    usage = fields.Nested(UsageSchema, required=True)
    model = fields.String(required=True)
    status = fields.String(required=True)
    created_at = UTCDateTime(required=True)
    context = fields.Nested(ContextSchema, required=True)


class SessionStateSchema(Schema):
    session_id = fields.String(required=True)
    created_at = UTCDateTime(required=True)
    last_activity = UTCDateTime(required=True)
    expires_at = UTCDateTime(required=True)
    message_count = fields.Integer(required=True)
    messages = fields.List(fields.Nested(MessageSchema), required=True)


class ConversationSchema(Schema):
    id = fields.String(required=True)
    kind = fields.String(required=True, metadata={"enum": ["user", "session"]})
    title = fields.String(required=True)
    created_at = UTCDateTime(required=True)
    last_activity = UTCDateTime(required=True)
    message_count = fields.Integer(required=True)


class ConversationDetailSchema(ConversationSchema):
    messages = fields.List(fields.Nested(MessageSchema), required=True)
    next_cursor = fields.String(required=True, allow_none=True)


class ConversationPageSchema(Schema):
    items = fields.List(fields.Nested(ConversationSchema), required=True)
    next_cursor = fields.String(required=True, allow_none=True)


class TaskSchema(Schema):
    task_id = fields.Integer(required=True)
    title = fields.String(required=True)
    description = fields.String(required=True)
    completed = fields.Boolean(required=True)
    created_at = UTCDateTime(required=True)
    updated_at = UTCDateTime(required=True)


class TaskPageSchema(Schema):
    items = fields.List(fields.Nested(TaskSchema), required=True)
    next_cursor = fields.String(required=True, allow_none=True)


class UsageDaySchema(Schema):
    day = fields.Date(required=True, metadata={"description": "UTC day."})
    model = fields.String(required=True)
    prompt_tokens = fields.Integer(required=True)
    completion_tokens = fields.Integer(required=True)
    total_tokens = fields.Integer(required=True)
    turns = fields.Integer(
        required=True, metadata={"description": "Assistant replies, failed and cancelled included."}
    )


class UsagePageSchema(Schema):
    items = fields.List(fields.Nested(UsageDaySchema), required=True)


class ProblemSchema(Schema):
    """RFC 9457 problem details."""

    type = fields.String(required=True)
    title = fields.String(required=True)
    status = fields.Integer(required=True)
    code = fields.String(required=True)
    detail = fields.String(required=True)
    request_id = fields.String(allow_none=True)
    errors = fields.Dict()
