"""Marshmallow schemas: the same classes validate requests and document them in /openapi.json."""

from __future__ import annotations

import json
import math
import re
from datetime import UTC, datetime
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError, available_timezones

from flask import current_app
from flask.json.provider import DefaultJSONProvider
from marshmallow import EXCLUDE, Schema, ValidationError, fields, validate, validates_schema

from .config import Config
from .services.words import words as search_words

# NUL and C0 controls other than tab, LF and CR, and lone surrogates (JSON's "\ud800" escapes:
# no text, and no database stores them); invalid UTF-8 never gets this far.
CONTROL_CHARS = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\ud800-\udfff]")


def no_control_chars(text: str) -> None:
    if CONTROL_CHARS.search(text):
        raise ValidationError(
            "Control characters (other than tab, CR and LF) and lone surrogates are not allowed."
        )


# Strict JSON, both ways ------------------------------------------------------------------

MAX_JSON_DEPTH = 32  # objects and arrays within each other in a request body
MAX_JSON_INT = 2**63 - 1  # integers fit in 64 bits (and far below Python's 4,300-digit limit)


def _strict_int(text: str) -> int:
    if len(text.lstrip("-")) > 19 or abs(value := int(text)) > MAX_JSON_INT:
        raise ValueError("an integer is out of range (64 bits)")
    return value


def _strict_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):  # 1e400 reads as inf
        raise ValueError("a number is out of range")
    return value


def _no_constant(name: str) -> None:
    raise ValueError(f"{name} is not JSON")


def _check_depth(value: Any) -> None:
    """Iteratively: a recursive walk is what a deep document breaks."""
    level = [value]
    for _ in range(MAX_JSON_DEPTH + 1):
        level = [
            child
            for item in level
            if isinstance(item, dict | list)
            for child in (item.values() if isinstance(item, dict) else item)
        ]
        if not level:
            return
    raise ValueError(f"nested deeper than {MAX_JSON_DEPTH} levels")


class StrictJSONProvider(DefaultJSONProvider):
    """RFC 8259 JSON only: NaN and Infinity are neither read nor written (Python's json does
    both by default, and a stored NaN made every later list invalid JSON), numbers must fit
    (64-bit integers, finite doubles), and bodies nest at most MAX_JSON_DEPTH deep."""

    def loads(self, s: str | bytes, **kwargs: Any) -> Any:
        value = json.loads(
            s, parse_int=_strict_int, parse_float=_strict_float, parse_constant=_no_constant,
            **kwargs,
        )  # fmt: skip
        _check_depth(value)
        return value

    def dumps(self, obj: Any, **kwargs: Any) -> str:
        return super().dumps(obj, **{"allow_nan": False, **kwargs})


class UTCDateTime(fields.DateTime):
    """ISO 8601 in UTC with a `Z` suffix."""

    def _serialize(self, value: datetime | None, attr: Any, obj: Any, **kwargs: Any) -> str | None:
        if value is None:
            return None
        return value.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


# The same rules for OpenAPI (so clients and fuzzers know them): something besides whitespace,
# and no control characters; a title has no line breaks either.
TEXT_PATTERN = r"^[^\x00-\x08\x0b\x0c\x0e-\x1f]*[^\s\x00-\x1f][^\x00-\x08\x0b\x0c\x0e-\x1f]*$"
LINE_PATTERN = r"^[^\x00-\x1f]*[^\s\x00-\x1f][^\x00-\x1f]*$"
NO_CONTROLS_PATTERN = r"^[^\x00-\x08\x0b\x0c\x0e-\x1f]*$"


def _documented(kwargs: dict[str, Any], max_length: int, pattern: str) -> dict[str, Any]:
    metadata = {"minLength": 1, "maxLength": max_length, "pattern": pattern}
    return {**kwargs, "metadata": {**metadata, **kwargs.get("metadata", {})}}


class ChatText(fields.String):
    """A chat message: trimmed, 1..MAX_MESSAGE_CHARS characters, no control characters."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**_documented(kwargs, Config.MAX_MESSAGE_CHARS, TEXT_PATTERN))

    def _deserialize(self, value: Any, attr: Any, data: Any, **kwargs: Any) -> str:
        raw = super()._deserialize(value, attr, data, **kwargs)
        # Checked before trimming: str.strip() would silently drop \x0b, \x0c and \x1c-\x1f.
        no_control_chars(raw)
        text = raw.strip()
        limit = current_app.config["MAX_MESSAGE_CHARS"]
        if not 1 <= len(text) <= limit:
            raise ValidationError(f"Length must be between 1 and {limit}.")
        return text


def document_running_limits(api: Any, config: Any) -> None:
    """/openapi.json states the limits this instance enforces (MAX_MESSAGE_CHARS as set), not
    the class defaults. Call before the blueprints are registered."""

    def running_limits(converter: Any, field: fields.Field, **kwargs: Any) -> dict[str, Any]:
        if isinstance(field, ChatText):
            return {"maxLength": config["MAX_MESSAGE_CHARS"]}
        return {}

    api.ma_plugin.converter.add_attribute_function(running_limits)
    # What validation demands beyond the fields, stated in the document too (schemathesis
    # reported PATCH tasks as mostly rejecting its generated data: `{}` was documented valid).
    api.spec.components.schema("TaskUpdate", {"minProperties": 1}, schema=TaskUpdateSchema)


class Title(fields.String):
    """A short single-line text, trimmed, with no control characters."""

    def __init__(self, max_length: int, **kwargs: Any) -> None:
        super().__init__(**_documented(kwargs, max_length, LINE_PATTERN))
        self.max_length = max_length

    def _deserialize(self, value: Any, attr: Any, data: Any, **kwargs: Any) -> str:
        raw = super()._deserialize(value, attr, data, **kwargs)
        text = raw.strip()
        if CONTROL_CHARS.search(raw) or "\n" in text or "\r" in text:
            raise ValidationError("Control characters and line breaks are not allowed.")
        if not 1 <= len(text) <= self.max_length:
            raise ValidationError(f"Length must be between 1 and {self.max_length}.")
        return text


# Requests -------------------------------------------------------------------------------


COLLECTION_PATTERN = r"^[a-z0-9][a-z0-9_-]{0,63}\Z"
MAX_SCOPE_COLLECTIONS = 10
MAX_SCOPE_METADATA = 5


def collection_field(**kwargs: Any) -> fields.String:
    """A collection's name: lower-case letters, digits, `_` and `-`, at most 64."""
    return fields.String(
        validate=validate.Regexp(COLLECTION_PATTERN, error="Not a collection name."),
        metadata={"pattern": COLLECTION_PATTERN.replace("\\Z", "$"),
                  "description": "A collection: lower-case letters, digits, _ and -."},
        **kwargs,
    )  # fmt: skip


def _refuse(message: str) -> bool:
    raise ValidationError(message)


class KnowledgeScopeFields(Schema):
    """What a turn's knowledge searches may return (its `search_knowledge` calls and the offline
    agent's answers alike)."""

    collections = fields.List(
        collection_field(),
        load_default=list,
        validate=validate.Length(1, MAX_SCOPE_COLLECTIONS),
        metadata={"description": "Search only documents of these collections (default: all)."},
    )
    document_metadata = fields.Dict(
        keys=fields.String(),
        values=fields.String(validate=validate.Length(max=200)),
        load_default=dict,
        validate=lambda given: (
            1 <= len(given) <= MAX_SCOPE_METADATA
            or _refuse(f"Give 1 to {MAX_SCOPE_METADATA} keys.")
        ),
        metadata={
            "description": "Search only documents whose `metadata` holds each of these keys "
            "with exactly this string value.",
            "minProperties": 1,
            "maxProperties": MAX_SCOPE_METADATA,
        },
    )


class UserChatSchema(KnowledgeScopeFields):
    message = ChatText(required=True, metadata={"description": "What the user says."})
    conversation_id = fields.String(
        load_default=None,
        allow_none=True,
        metadata={"description": "Continue this conversation; omit to start a new one."},
    )


# The IANA zones an `X-Timezone` may name (tzdata's list; documented as the header's enum).
TIME_ZONES = sorted(available_timezones())
_ZONE_SET = frozenset(TIME_ZONES)


class IdempotencyHeadersSchema(Schema):
    class Meta:
        unknown = EXCLUDE  # every other header

    idempotency_key = fields.String(
        data_key="Idempotency-Key",
        load_default=None,
        validate=validate.Length(1, 255),
        metadata={
            "description": "Send the same key again (same body) to get the first response back "
            "instead of a second turn; scoped to the caller and the route."
        },
    )
    timezone = fields.String(
        data_key="X-Timezone",
        load_default="UTC",
        validate=[validate.Length(1, 64), lambda name: _known_zone(name)],
        metadata={
            "enum": TIME_ZONES,
            "description": "The user's IANA time zone (e.g. `Europe/Paris`): what the agent "
            'takes "today", "tomorrow" and "Friday" to mean. UTC when absent.',
        },
    )


# A turn's event ids are 1, 2, 3…; 0 (or none) reads from the start. Digits only, ≤ 9 of them.
EVENT_ID = validate.Regexp(r"^[0-9]{1,9}$", error="An event id: digits only, 0 to 999999999.")
EVENT_ID_DOC = "Read the events after this id (the `id:` of the last event received)."


# Absent reads as "" (not None): a None default would make the document call the parameter
# nullable, and a client (or a fuzzer) would then send the text "null".
class EventsArgsSchema(Schema):
    last_event_id = fields.String(
        load_default="", validate=EVENT_ID, metadata={"description": EVENT_ID_DOC}
    )


class EventsHeadersSchema(Schema):
    class Meta:
        unknown = EXCLUDE  # every other header

    last_event_id = fields.String(
        data_key="Last-Event-ID", load_default="", validate=EVENT_ID,
        metadata={"description": EVENT_ID_DOC + " Wins over `?last_event_id=`."},
    )  # fmt: skip


class ChatHeadersSchema(IdempotencyHeadersSchema):
    """The headers of a chat POST under /api: those of every turn, and `Prefer`."""

    prefer = fields.String(
        data_key="Prefer",
        load_default="",
        metadata={
            "description": "`respond-async`: answer 202 at once with the turn's ids and links "
            "(`TurnAccepted`) and run the turn in the background (RFC 7240; other preferences "
            "are ignored)."
        },
    )


def _known_zone(name: str) -> bool:
    """An IANA zone name the system knows ("Europe/Paris"); never a path."""
    try:
        known = name in _ZONE_SET and ZoneInfo(name) is not None
    except (ZoneInfoNotFoundError, ValueError, OSError):
        known = False
    if not known:
        raise ValidationError("Not a known IANA time zone (e.g. Europe/Paris).")
    return True


class SessionChatSchema(KnowledgeScopeFields):
    message = ChatText(required=True, metadata={"description": "What the user says."})


class PageArgsSchema(Schema):
    limit = fields.Integer(load_default=20, validate=validate.Range(1, 100))
    cursor = fields.String(load_default=None, metadata={"description": "From `next_cursor`."})


class HistoryArgsSchema(PageArgsSchema):
    limit = fields.Integer(load_default=50, validate=validate.Range(1, 100))


MAX_SEARCH_CHARS = 200


# Documented: no control characters and at least one letter or digit (what is accepted is wider:
# letters of any script count).
SEARCH_PATTERN = r"^[^\x00-\x08\x0b\x0c\x0e-\x1f]*[0-9A-Za-z][^\x00-\x08\x0b\x0c\x0e-\x1f]*$"


class SearchText(fields.String):
    """A search: at most MAX_SEARCH_CHARS, with at least one word (letters or digits)."""

    def __init__(self, **kwargs: Any) -> None:
        metadata = {"maxLength": MAX_SEARCH_CHARS, "pattern": SEARCH_PATTERN,
                    **kwargs.pop("metadata", {})}  # fmt: skip
        super().__init__(metadata=metadata, **kwargs)

    def _deserialize(self, value: Any, attr: Any, data: Any, **kwargs: Any) -> str:
        text = super()._deserialize(value, attr, data, **kwargs)
        if len(text) > MAX_SEARCH_CHARS:
            raise ValidationError(f"At most {MAX_SEARCH_CHARS} characters.")
        no_control_chars(text)
        if not search_words(text):
            raise ValidationError("Give at least one word (letters or digits) to search for.")
        return text


class ConversationListArgsSchema(PageArgsSchema):
    q = SearchText(
        load_default=None,
        metadata={"description": "Only conversations whose title or messages have every word "
                  "(full-text: letters and digits; punctuation is ignored)."},
    )  # fmt: skip


class ConversationRenameSchema(Schema):
    title = Title(200, required=True)


class ExportArgsSchema(Schema):
    format = fields.String(load_default="json", validate=validate.OneOf(["json", "markdown"]))


PRIORITIES = ("low", "normal", "high")
TASK_SORTS = ("task_id", "due_date", "priority", "updated_at")


class TaskListArgsSchema(PageArgsSchema):
    status = fields.String(
        load_default="all", validate=validate.OneOf(["all", "pending", "completed"])
    )
    q = SearchText(
        load_default=None, metadata={"description": "Tasks whose title or description has every "
                                     "word (letters and digits; punctuation is ignored)."}
    )  # fmt: skip
    due_before = fields.Date(
        load_default=None, metadata={"description": "Due on or before this date (ISO)."}
    )
    due_after = fields.Date(
        load_default=None, metadata={"description": "Due on or after this date (ISO)."}
    )
    priority = fields.String(load_default=None, validate=validate.OneOf(PRIORITIES))
    sort = fields.String(
        load_default="task_id",
        validate=validate.OneOf([*TASK_SORTS, *(f"-{name}" for name in TASK_SORTS)]),
        metadata={"description": "A leading `-` sorts descending; tasks without a due date "
                  "come last either way."},
    )  # fmt: skip

    @validates_schema
    def dates_in_order(self, data: dict[str, Any], **kwargs: Any) -> None:
        before, after = data.get("due_before"), data.get("due_after")
        if before is not None and after is not None and after > before:
            raise ValidationError("due_after is later than due_before.", "due_after")


class TaskCreateSchema(Schema):
    title = Title(200, required=True)
    description = fields.String(
        load_default="", validate=[validate.Length(max=1000), no_control_chars],
        metadata={"pattern": NO_CONTROLS_PATTERN},
    )  # fmt: skip
    due_date = fields.Date(
        load_default=None, allow_none=True, metadata={"description": "An ISO date, or null."}
    )
    priority = fields.String(load_default="normal", validate=validate.OneOf(PRIORITIES))


class TaskUpdateSchema(Schema):
    title = Title(200)
    description = fields.String(
        validate=[validate.Length(max=1000), no_control_chars],
        metadata={"pattern": NO_CONTROLS_PATTERN},
    )
    completed = fields.Boolean()
    due_date = fields.Date(allow_none=True, metadata={"description": "null removes it."})
    priority = fields.String(validate=validate.OneOf(PRIORITIES))

    @validates_schema
    def not_empty(self, data: dict[str, Any], **kwargs: Any) -> None:
        if not data:
            raise ValidationError(
                "Give at least one of title, description, completed, due_date, priority."
            )


# The task tools' arguments (contract §2): the same fields and validation as the REST routes,
# so a model's arguments pass exactly the checks a frontend's do. `tool_parameters` gives the
# JSON Schema the model is shown; `Schema().load(arguments)` validates what it sends.


class TaskRefSchema(Schema):
    task_id = fields.Integer(
        required=True, strict=True, validate=validate.Range(1, 2**31 - 1),
        metadata={"description": "The task's number."},
    )  # fmt: skip


class AddTaskToolSchema(TaskCreateSchema):
    """add_task(title, description?, due_date?, priority?)"""


class UpdateTaskToolSchema(TaskRefSchema, TaskUpdateSchema):
    """update_task(task_id, title?, description?, due_date?, priority?)"""

    class Meta:
        exclude = ("completed",)  # complete_task does that

    @validates_schema
    def not_empty(self, data: dict[str, Any], **kwargs: Any) -> None:
        if set(data) <= {"task_id"}:
            raise ValidationError("Give at least one of title, description, due_date, priority.")


class ListTasksToolSchema(TaskListArgsSchema):
    """list_tasks(status?, q?, due_before?)"""

    class Meta:
        fields = ("status", "q", "due_before")


def tool_parameters(schema: type[Schema]) -> dict[str, Any]:
    """A schema's fields as the JSON Schema object of a tool's parameters (no other keys)."""
    from apispec.ext.marshmallow import OpenAPIConverter

    converter = OpenAPIConverter("3.0.3", lambda _: None, None)
    found = converter.schema2jsonschema(schema())
    properties = found["properties"]
    for field in properties.values():  # OpenAPI 3.0's `nullable` in JSON Schema's words
        if field.pop("nullable", False):
            field["type"] = [field["type"], "null"]
        # A regular expression is for the server's validation (which every call passes), not
        # for the model: servers that turn tool schemas into a grammar (llama.cpp) cannot read
        # every pattern, and refused the whole request.
        field.pop("pattern", None)
    return {
        "type": "object",
        "properties": properties,
        "required": found.get("required", []),
        "additionalProperties": False,
    }


class SearchToolSchema(Schema):
    """search_knowledge(query, k?)"""

    query = fields.String(
        required=True, validate=[validate.Length(1, 500), no_control_chars],
        metadata={"description": "Keywords or a question."},
    )  # fmt: skip
    k = fields.Integer(
        load_default=5, validate=validate.Range(1, 10), strict=True,
        metadata={"description": "How many passages to return (default 5)."},
    )  # fmt: skip


class DocumentText(fields.String):
    """A document's text: not blank, no control characters other than tab, CR and LF."""

    def _deserialize(self, value: Any, attr: Any, data: Any, **kwargs: Any) -> str:
        text = super()._deserialize(value, attr, data, **kwargs)
        if not text.strip():
            raise ValidationError("The text must not be empty.")
        if CONTROL_CHARS.search(text):
            raise ValidationError("Control characters other than tab, CR and LF are not allowed.")
        return text


# A subset of what fields.Url accepts, for the document (so generated examples are URLs it takes):
# a scheme, a host with a top-level domain, an optional port and path.
URL_PATTERN = (
    r"^https?://(?:[a-z0-9]{1,20}\.){1,3}[a-z]{2,6}(?::[0-9]{2,4})?(?:/[A-Za-z0-9._~-]{0,20}){0,4}$"
)


class DocumentCreateSchema(Schema):
    title = Title(200, required=True)
    text = DocumentText(
        required=True, metadata={"description": "Markdown or plain text.", "pattern": TEXT_PATTERN}
    )
    url = fields.Url(
        load_default=None, allow_none=True, schemes={"http", "https"},
        validate=validate.Length(max=2048),
        metadata={"description": "Where a citation links (http or https).", "format": "uri",
                  "pattern": URL_PATTERN},
    )  # fmt: skip
    metadata = fields.Dict(
        keys=fields.String(), load_default=dict, metadata={"description": "Any JSON object."}
    )
    collection = collection_field(load_default="default")


class DocumentListArgsSchema(PageArgsSchema):
    collection = collection_field(load_default=None)


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


class TurnLinksSchema(Schema):
    message = fields.String(required=True, metadata={"description": "GET: the reply, its status."})
    events = fields.String(required=True, metadata={"description": "GET: its events (SSE)."})
    cancel = fields.String(required=True, metadata={"description": "POST: stop the turn."})


class TurnAcceptedSchema(Schema):
    """A turn running in the background (202): where to follow it and how to stop it."""

    conversation_id = fields.String(required=True)
    session_id = fields.String(metadata={"description": "Session routes only; = conversation_id."})
    message_id = fields.String(required=True, metadata={"description": "The reply's id."})
    status = fields.String(
        required=True, metadata={"enum": ["pending", "completed", "failed", "cancelled"]}
    )
    links = fields.Nested(TurnLinksSchema, required=True)


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


class ConversationMatchSchema(ConversationSchema):
    match = fields.String(
        metadata={"description": "With `?q=`: a short snippet of the best match (≤ 200 chars)."}
    )


class ConversationExportSchema(ConversationSchema):
    messages = fields.List(fields.Nested(MessageSchema), required=True)
    exported_at = UTCDateTime(required=True)


class ConversationDetailSchema(ConversationSchema):
    messages = fields.List(fields.Nested(MessageSchema), required=True)
    next_cursor = fields.String(required=True, allow_none=True)


class ConversationPageSchema(Schema):
    items = fields.List(fields.Nested(ConversationMatchSchema), required=True)
    next_cursor = fields.String(required=True, allow_none=True)


class TaskSchema(Schema):
    task_id = fields.Integer(required=True)
    title = fields.String(required=True)
    description = fields.String(required=True)
    completed = fields.Boolean(required=True)
    due_date = fields.Date(required=True, allow_none=True)
    priority = fields.String(required=True, metadata={"enum": list(PRIORITIES)})
    created_at = UTCDateTime(required=True)
    updated_at = UTCDateTime(required=True)
    completed_at = UTCDateTime(required=True, allow_none=True)


class TaskPageSchema(Schema):
    items = fields.List(fields.Nested(TaskSchema), required=True)
    next_cursor = fields.String(required=True, allow_none=True)


class DocumentSchema(Schema):
    id = fields.String(required=True)
    title = fields.String(required=True)
    url = fields.String(required=True, allow_none=True)
    metadata = fields.Dict(required=True, attribute="meta")
    collection = fields.String(required=True)
    chunk_count = fields.Integer(required=True)
    created_at = UTCDateTime(required=True)
    status = fields.String(
        required=True,
        validate=validate.OneOf(["ready", "indexing", "failed"]),
        metadata={
            "description": "`ready`: every passage is searchable; `indexing`: a large document "
            "being split in the background (its passages become searchable as they are "
            "stored); `failed`: it could not be split."
        },
    )


class DocumentPageSchema(Schema):
    items = fields.List(fields.Nested(DocumentSchema), required=True)
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


class QuotaSchema(Schema):
    tokens_per_day = fields.Integer(
        required=True, allow_none=True, metadata={"description": "null: no quota applies."}
    )
    used_today = fields.Integer(required=True, metadata={"description": "Tokens, this UTC day."})
    remaining = fields.Integer(required=True, allow_none=True)
    resets_at = UTCDateTime(required=True, metadata={"description": "The next midnight UTC."})


class UsagePageSchema(Schema):
    items = fields.List(fields.Nested(UsageDaySchema), required=True)
    quota = fields.Nested(QuotaSchema, required=True)


class QuotaUpdateSchema(Schema):
    tokens_per_day = fields.Integer(
        required=True, allow_none=True, strict=True, validate=validate.Range(0, 10**12),
        metadata={"description": "The user's own cap (0: no quota); null: back to the default."},
    )  # fmt: skip


class ProblemSchema(Schema):
    """RFC 9457 problem details."""

    type = fields.String(required=True)
    title = fields.String(required=True)
    status = fields.Integer(required=True)
    code = fields.String(required=True)
    detail = fields.String(required=True)
    request_id = fields.String(allow_none=True)
    errors = fields.Dict()
