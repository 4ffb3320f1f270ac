"""The agent port: plain dataclasses in, plain dataclasses (or events) out.

No vendor type crosses this module; adapters translate their errors into `AgentError`s.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol


@dataclass(frozen=True)
class ToolCall:
    tool: str
    parameters: dict[str, Any]
    result: dict[str, Any]

    def as_dict(self) -> dict[str, Any]:
        return {"tool": self.tool, "parameters": self.parameters, "result": self.result}


@dataclass(frozen=True)
class HistoryMessage:
    """A stored message as the model sees it again: an assistant's tool calls come with it."""

    role: str
    content: str
    tool_calls: tuple[ToolCall, ...] = ()


@dataclass(frozen=True)
class Turn:
    """What the agent gets: who asks (None for an anonymous session), the context, the ask."""

    user_id: str | None
    conversation_id: str
    message: str
    history: tuple[HistoryMessage, ...] = ()
    timezone: str = "UTC"  # the user's IANA zone: what "today" and "tomorrow" mean to them
    # A client's own system message (the OpenAI-compatible API), said after the agent's prompt.
    instructions: str = ""
    # Sampling settings a client asked for (temperature, top_p, max_tokens, stop, seed…): an
    # adapter that talks to a model passes them on; the offline agent has none to set.
    sampling: Mapping[str, Any] = field(default_factory=dict)


@dataclass
class Usage:
    prompt_tokens: int = 0
    completion_tokens: int = 0
    total_tokens: int = 0

    def add(self, other: Usage) -> None:
        self.prompt_tokens += other.prompt_tokens
        self.completion_tokens += other.completion_tokens
        self.total_tokens += other.total_tokens

    def as_dict(self) -> dict[str, int]:
        return {
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "total_tokens": self.total_tokens,
        }


@dataclass
class Reply:
    """The agent's answer. `cited` names the passages (by the `ref` a citing tool gave them) the
    answer is grounded on, when the agent knows; None leaves it to the "[n]" marks in `text`."""

    text: str
    model: str
    tool_calls: list[ToolCall] = field(default_factory=list)
    usage: Usage = field(default_factory=Usage)
    cited: tuple[int, ...] | None = None


# Events of a streamed run, in the order the contract sends them.
@dataclass(frozen=True)
class TextDelta:
    text: str


@dataclass(frozen=True)
class ToolCallDone:
    call: ToolCall


@dataclass(frozen=True)
class ReplyDone:
    reply: Reply


AgentEvent = TextDelta | ToolCallDone | ReplyDone


class Tools(Protocol):
    """What a turn lets the agent do: the services bind each tool to the turn's user and run
    every call as its own unit of work. A bad call comes back as an error result, never raises."""

    @property
    def names(self) -> list[str]: ...

    def specs(self) -> list[dict[str, Any]]:
        """OpenAI-style function declarations of the tools."""
        ...

    def call(self, name: str, arguments: dict[str, Any] | str | None) -> ToolCall: ...


class Agent(ABC):
    """Runs one turn: events in (the turn, its tools), events out."""

    name = "agent"

    @abstractmethod
    def stream(self, turn: Turn, tools: Tools, *, watched: bool = True) -> Iterator[AgentEvent]:
        """Yield text deltas and tool calls as they happen, then exactly one ReplyDone.
        Unwatched (a JSON response) nobody sees the pieces arrive, so an adapter may fetch its
        answer in one piece; the events are the same."""

    def close(self) -> None:
        """Release clients and sockets; called when the worker exits."""
        return None


def estimate_tokens(text: str) -> int:
    """About four ASCII characters a token, one a token for other scripts, plus a message's
    framing: close enough to real tokenizers and needs no download."""
    ascii_chars = sum(1 for char in text if char.isascii())
    return ascii_chars // 4 + (len(text) - ascii_chars) + 4


class AgentError(Exception):
    """The agent could not answer. `code` says how (the services map it to the contract)."""

    code = "upstream_error"
    detail = "The language model failed to answer."

    def __init__(self, detail: str | None = None, *, retry_after: int | None = None) -> None:
        super().__init__(detail or self.detail)
        self.detail = detail or self.detail
        self.retry_after = retry_after


class UpstreamError(AgentError):
    """The provider failed (5xx, dropped connection) or answered something that is no answer."""


class UpstreamBusy(AgentError):
    code = "upstream_busy"
    detail = "The language model is rate-limiting this service; retry later."


class UpstreamTimeout(AgentError):
    code = "upstream_timeout"
    detail = "The language model did not answer in time."
