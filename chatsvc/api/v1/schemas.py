"""The OpenAI-compatible API's schemas: requests as OpenAI's clients send them (validated, and
documented in /openapi.json), and the answers' shapes for the document."""

from __future__ import annotations

from typing import Any

from flask import current_app
from marshmallow import INCLUDE, Schema, ValidationError, fields, validate, validates_schema

from ...config import Config
from ...schemas import CONTROL_CHARS, NO_CONTROLS_PATTERN, TEXT_PATTERN, SourceSchema

MODELS = ("todo", "knowledge")
ROLES = ("system", "developer", "user", "assistant", "tool", "function")
ACCEPTED_ROLES = ("system", "developer", "user", "assistant")
CONTEXT_ROLES = ("user", "assistant")  # what a model may see again of a client's context
INSTRUCTION_ROLES = ("system", "developer")
MAX_MESSAGES = 256  # items in `messages` / `input` (the body limit bounds them anyway)
MAX_STOP = 4
MAX_MESSAGE_CHARS = Config.MAX_MESSAGE_CHARS  # documented; the running value is enforced


class Content(fields.Field):
    """A message's content as OpenAI takes it: a string, or a list of text parts
    (`{"type": "text" | "input_text" | "output_text", "text"}`), joined. Other parts (images,
    audio, files) are refused: no agent here reads them."""

    TEXT_PARTS = frozenset({"text", "input_text", "output_text"})

    def _deserialize(self, value: Any, attr: Any, data: Any, **kwargs: Any) -> str:
        if isinstance(value, str):
            return _checked(value)
        if not isinstance(value, list) or not value:
            raise ValidationError("Must be a string or a non-empty list of text parts.")
        texts = []
        for part in value:
            if not isinstance(part, dict) or not isinstance(part.get("text"), str):
                raise ValidationError("Each part must be an object with a string `text`.")
            if part.get("type") not in self.TEXT_PARTS:
                raise ValidationError("Only text parts are supported.")
            texts.append(_checked(part["text"]))
        return "\n".join(texts)


def _checked(text: str) -> str:
    if CONTROL_CHARS.search(text):
        raise ValidationError(
            "Control characters (other than tab, CR and LF) and lone surrogates are not allowed."
        )
    if len(text) > 4 * current_app.config["MAX_MESSAGE_CHARS"]:
        raise ValidationError("The text is longer than this service takes in one message.")
    return text


_TEXT_DOC = {"type": "string", "pattern": NO_CONTROLS_PATTERN, "maxLength": 4 * MAX_MESSAGE_CHARS}
_CONTENT_DOC = {
    "oneOf": [
        _TEXT_DOC,
        {
            "type": "array",
            "minItems": 1,
            "items": {
                "type": "object",
                "required": ["type", "text"],
                "properties": {
                    "type": {"type": "string", "enum": sorted(Content.TEXT_PARTS)},
                    "text": _TEXT_DOC,
                },
            },
        },
    ]
}


class ChatMessageSchema(Schema):
    """One message of `messages`. Messages of client-side tools (`tool`, `function`) are
    refused with 400 `unsupported_parameter`: chatsvc runs its own tools on the server."""

    role = fields.String(
        required=True, validate=validate.OneOf(ROLES), metadata={"enum": list(ACCEPTED_ROLES)}
    )
    content = Content(required=True, metadata=_CONTENT_DOC)
    name = fields.String(validate=validate.Length(1, 64), metadata={"description": "Ignored."})
    refusal = fields.String(allow_none=True, metadata={"description": "Ignored."})


class StreamOptionsSchema(Schema):
    include_usage = fields.Boolean(load_default=False)
    include_obfuscation = fields.Boolean(metadata={"description": "Ignored."})


class MetadataField(fields.Dict):
    """OpenAI's `metadata`: up to 16 string pairs. chatsvc reads `conversation_id`."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(
            keys=fields.String(validate=validate.Length(1, 64)),
            values=fields.String(validate=validate.Length(0, 512)),
            validate=_at_most_16,
            **{**kwargs, "metadata": {"maxProperties": 16, **kwargs.get("metadata", {})}},
        )


def _at_most_16(value: dict[str, str]) -> None:
    if len(value) > 16:
        raise ValidationError("At most 16 pairs.")


class Stop(fields.Field):
    """`stop`: one string or up to four."""

    def _deserialize(self, value: Any, attr: Any, data: Any, **kwargs: Any) -> Any:
        if isinstance(value, str) and 0 < len(value) <= 256:
            return value
        if (
            isinstance(value, list)
            and 0 < len(value) <= MAX_STOP
            and all(isinstance(item, str) and 0 < len(item) <= 256 for item in value)
        ):
            return value
        raise ValidationError(f"Must be a string or a list of 1..{MAX_STOP} strings.")


class SamplingSchema(Schema):
    """Sampling settings: passed to the provider (AGENT_PROVIDER=openai); the offline agent has
    none to set and ignores them."""

    temperature = fields.Float(allow_none=True, validate=validate.Range(0, 2))
    top_p = fields.Float(allow_none=True, validate=validate.Range(0, 1))
    max_tokens = fields.Integer(allow_none=True, strict=True, validate=validate.Range(1, 10**6))
    max_completion_tokens = fields.Integer(
        allow_none=True, strict=True, validate=validate.Range(1, 10**6)
    )
    stop = Stop(
        allow_none=True,
        metadata={
            "oneOf": [
                {"type": "string", "minLength": 1, "maxLength": 256},
                {
                    "type": "array",
                    "minItems": 1,
                    "maxItems": MAX_STOP,
                    "items": {"type": "string", "minLength": 1, "maxLength": 256},
                },
            ]
        },
    )
    seed = fields.Integer(
        allow_none=True, strict=True, validate=validate.Range(-(2**63 - 1), 2**63 - 1)
    )
    presence_penalty = fields.Float(allow_none=True, validate=validate.Range(-2, 2))
    frequency_penalty = fields.Float(allow_none=True, validate=validate.Range(-2, 2))


def _only(*values: Any, **doc: Any) -> dict[str, Any]:
    """Documented as taking only `values` (what generated clients and fuzzers should send);
    the view answers anything else with 400 `unsupported_parameter`."""
    return {"metadata": {"enum": list(values), **doc}}


_NO_TOOLS = {"metadata": {"maxItems": 0, "description": "Client-side tools: 400 if any."}}
_TOOL_CHOICE = _only("none", "auto", description="Client-side tools: 400 for other values.")


class UnsupportedFieldsSchema(Schema):
    """Fields OpenAI's clients send that chatsvc cannot honour beyond their neutral values:
    accepted at those, 400 `unsupported_parameter` otherwise (the view checks)."""

    tools = fields.List(fields.Dict(), **_NO_TOOLS)
    functions = fields.List(fields.Dict(), **_NO_TOOLS)
    tool_choice = fields.Raw(**_TOOL_CHOICE)
    function_call = fields.Raw(**_TOOL_CHOICE)
    parallel_tool_calls = fields.Boolean(metadata={"description": "Ignored."})
    n = fields.Integer(strict=True, **_only(1, description="Only 1; 400 otherwise."))
    logprobs = fields.Boolean(allow_none=True, **_only(False, description="400 if true."))
    top_logprobs = fields.Integer(allow_none=True, **_only(0, description="400 if > 0."))
    response_format = fields.Dict(
        metadata={
            "description": 'Only `{"type": "text"}`; 400 otherwise.',
            "properties": {"type": {"type": "string", "enum": ["text"]}},
            "required": ["type"],
            "additionalProperties": False,
        }
    )
    user = fields.String(validate=validate.Length(max=256), metadata={"description": "Ignored."})
    store = fields.Boolean(
        allow_none=True, metadata={"description": "Ignored: every turn is stored."}
    )


class ChatCompletionRequestSchema(SamplingSchema, UnsupportedFieldsSchema):
    model = fields.String(
        required=True, validate=validate.Length(1, 128), metadata={"enum": list(MODELS)}
    )
    messages = fields.List(
        fields.Nested(ChatMessageSchema),
        required=True,
        validate=validate.Length(1, MAX_MESSAGES),
        metadata={"description": "The whole context; the last one is the user's new message."},
    )
    stream = fields.Boolean(load_default=False)
    stream_options = fields.Nested(StreamOptionsSchema, allow_none=True)
    metadata = MetadataField(
        allow_none=True,
        metadata={"description": "`conversation_id`: store the turn in that conversation."},
    )


class InputItemSchema(Schema):
    """A message item of `input` (`{"type": "message"?, "role", "content"}`)."""

    type = fields.String(validate=validate.OneOf(["message"]))
    role = fields.String(
        required=True, validate=validate.OneOf(ROLES), metadata={"enum": list(ACCEPTED_ROLES)}
    )
    content = Content(required=True, metadata=_CONTENT_DOC)
    id = fields.String(metadata={"description": "Ignored."})
    status = fields.String(metadata={"description": "Ignored."})


_ITEM_DOC = {
    "type": "object",
    "required": ["role", "content"],
    "properties": {
        "type": {"type": "string", "enum": ["message"]},
        "role": {"type": "string", "enum": list(ACCEPTED_ROLES)},
        "content": _CONTENT_DOC,
        "id": {"type": "string"},
        "status": {"type": "string"},
    },
    "additionalProperties": False,
}


class Input(fields.Field):
    """`input`: a string (the user's message) or a list of message items."""

    def _deserialize(self, value: Any, attr: Any, data: Any, **kwargs: Any) -> Any:
        if isinstance(value, str):
            return [{"role": "user", "content": Content()._deserialize(value, attr, data)}]
        if not isinstance(value, list) or not 1 <= len(value) <= MAX_MESSAGES:
            raise ValidationError(f"Must be a string or a list of 1..{MAX_MESSAGES} items.")
        return _ITEMS.load(value)


_ITEMS = InputItemSchema(many=True)


class ResponseRequestSchema(Schema):
    temperature = fields.Float(allow_none=True, validate=validate.Range(0, 2))
    top_p = fields.Float(allow_none=True, validate=validate.Range(0, 1))
    model = fields.String(
        required=True, validate=validate.Length(1, 128), metadata={"enum": list(MODELS)}
    )
    input = Input(
        required=True,
        metadata={
            "oneOf": [
                {"type": "string", "pattern": TEXT_PATTERN, "maxLength": MAX_MESSAGE_CHARS},
                {"type": "array", "minItems": 1, "maxItems": MAX_MESSAGES, "items": _ITEM_DOC},
            ],
            "description": "The user's message, or message items (the last one the user's).",
        },
    )
    instructions = fields.String(allow_none=True, validate=validate.Length(max=32_000))
    previous_response_id = fields.String(allow_none=True, validate=validate.Length(1, 128))
    conversation = fields.Raw(
        allow_none=True,
        metadata={
            "description": 'A conversation id (or `{"id"}`) to continue.',
            "oneOf": [
                {"type": "string", "minLength": 1, "maxLength": 36},
                {
                    "type": "object",
                    "required": ["id"],
                    "properties": {"id": {"type": "string", "minLength": 1, "maxLength": 36}},
                },
            ],
        },
    )
    store = fields.Boolean(load_default=True, **_only(True, description="400 if false."))
    stream = fields.Boolean(load_default=False)
    max_output_tokens = fields.Integer(
        allow_none=True, strict=True, validate=validate.Range(16, 10**6)
    )
    metadata = MetadataField(allow_none=True)
    tools = fields.List(fields.Dict(), **_NO_TOOLS)
    tool_choice = fields.Raw(**_TOOL_CHOICE)
    parallel_tool_calls = fields.Boolean(metadata={"description": "Ignored."})
    user = fields.String(validate=validate.Length(max=256), metadata={"description": "Ignored."})
    text = fields.Dict(
        metadata={
            "description": 'Only `{"format": {"type": "text"}}`; 400 otherwise.',
            "properties": {
                "format": {
                    "type": "object",
                    "properties": {"type": {"type": "string", "enum": ["text"]}},
                    "required": ["type"],
                    "additionalProperties": False,
                }
            },
            "additionalProperties": False,
        }
    )
    truncation = fields.String(
        validate=validate.OneOf(["auto", "disabled"]), metadata={"description": "Ignored."}
    )
    top_logprobs = fields.Integer(allow_none=True, **_only(0, description="400 if > 0."))

    @validates_schema
    def _one_thread(self, data: dict[str, Any], **kwargs: Any) -> None:
        if data.get("previous_response_id") and data.get("conversation"):
            raise ValidationError(
                "Send previous_response_id or conversation, not both.", "conversation"
            )


# Answers (for the document; the views build plain dicts in OpenAI's shapes) --------------


class ModelSchema(Schema):
    id = fields.String(required=True, metadata={"enum": list(MODELS)})
    object = fields.String(required=True, metadata={"enum": ["model"]})
    created = fields.Integer(required=True)
    owned_by = fields.String(required=True)
    description = fields.String()


class ModelListSchema(Schema):
    object = fields.String(required=True, metadata={"enum": ["list"]})
    data = fields.List(fields.Nested(ModelSchema), required=True)


class CompletionUsageSchema(Schema):
    prompt_tokens = fields.Integer(required=True)
    completion_tokens = fields.Integer(required=True)
    total_tokens = fields.Integer(required=True)


class AssistantMessageSchema(Schema):
    role = fields.String(required=True, metadata={"enum": ["assistant"]})
    content = fields.String(required=True)
    refusal = fields.String(allow_none=True)
    annotations = fields.List(fields.Dict())


class ChoiceSchema(Schema):
    index = fields.Integer(required=True)
    message = fields.Nested(AssistantMessageSchema, required=True)
    finish_reason = fields.String(required=True)
    logprobs = fields.Dict(allow_none=True)


class ChatCompletionSchema(Schema):
    id = fields.String(required=True)
    object = fields.String(required=True, metadata={"enum": ["chat.completion"]})
    created = fields.Integer(required=True)
    model = fields.String(required=True)
    choices = fields.List(fields.Nested(ChoiceSchema), required=True)
    usage = fields.Nested(CompletionUsageSchema, required=True)
    sources = fields.List(
        fields.Nested(SourceSchema),
        required=True,
        metadata={"description": "chatsvc's citations (an extra field OpenAI clients ignore)."},
    )


class ResponseSchema(Schema):
    id = fields.String(required=True, metadata={"description": "The assistant message's id."})
    object = fields.String(required=True, metadata={"enum": ["response"]})
    created_at = fields.Integer(required=True)
    status = fields.String(required=True)
    model = fields.String(required=True)
    output = fields.List(fields.Dict(), required=True)
    usage = fields.Dict(allow_none=True)
    error = fields.Dict(allow_none=True)
    conversation = fields.Dict(allow_none=True)
    previous_response_id = fields.String(allow_none=True)
    instructions = fields.String(allow_none=True)
    sources = fields.List(fields.Nested(SourceSchema))

    class Meta:
        unknown = INCLUDE


class OpenAIErrorBodySchema(Schema):
    message = fields.String(required=True)
    type = fields.String(required=True)
    code = fields.String(required=True, metadata={"description": "The contract's §1 code."})
    param = fields.String(allow_none=True, required=True)


class OpenAIErrorSchema(Schema):
    """OpenAI's error envelope."""

    error = fields.Nested(OpenAIErrorBodySchema, required=True)
