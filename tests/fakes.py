"""Test doubles that record and script (no mock.patch)."""

from __future__ import annotations

import re
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

from chatsvc.agent.base import (
    Agent,
    AgentEvent,
    Reply,
    ReplyDone,
    TextDelta,
    ToolCallDone,
    Tools,
    Turn,
)

Step = Reply | Exception | Callable[[Turn, Tools], Reply]


@dataclass
class ScriptedAgent(Agent):
    """Answers from a queue of steps: a Reply, an exception to raise, or a function of the turn.
    Records every turn it was given. With no steps left it echoes the message."""

    steps: list[Step] = field(default_factory=list)
    turns: list[Turn] = field(default_factory=list)
    name: str = "scripted"

    def stream(self, turn: Turn, tools: Tools, *, watched: bool = True) -> Iterator[AgentEvent]:
        self.turns.append(turn)
        step = self.steps.pop(0) if self.steps else Reply(f"echo: {turn.message}", self.name)
        if isinstance(step, Exception):
            raise step
        reply = step(turn, tools) if callable(step) else step
        for piece in re.findall(r"\S+\s*|\s+", reply.text):
            yield TextDelta(piece)
        for call in reply.tool_calls:
            yield ToolCallDone(call)
        yield ReplyDone(reply)


class GatedAgent(Agent):
    """Blocks each run until `release()` — to hold a turn in flight while a test looks."""

    name = "gated"

    def __init__(self) -> None:
        self.entered = threading.Event()
        self.gate = threading.Event()

    def release(self) -> None:
        self.gate.set()

    def stream(self, turn: Turn, tools: Tools, *, watched: bool = True) -> Iterator[AgentEvent]:
        self.entered.set()
        if not self.gate.wait(timeout=10):
            raise TimeoutError("GatedAgent was never released")
        yield TextDelta("released")
        yield ReplyDone(Reply("released", self.name))
