"""The soak's fake model: tests/fakellm.py's server answering by what it is asked."""

from __future__ import annotations

import collections
import random
import re

from tests import fakellm

AGENT_TIMEOUT_S = 3.0
ADD = re.compile(r"add a task for \[(k[0-9a-f]{12})\]")
MODEL_FAULTS = ("model_500", "model_429", "model_stall", "tool_then_fail")


class SoakModel(fakellm.FakeLLM):
    """The fake OpenAI server of tests/fakellm.py, answering by what it is asked instead of a
    script: "add a task for [key]" → add_task titled with every such key in the message; a
    knowledge question → search_knowledge; then a text answer. `mode` switches faults;
    `chunk_delay` spaces a streamed answer's chunks (a client leaving mid-stream then leaves a
    turn that is still running)."""

    def __init__(self, chunk_delay: float = 0.0) -> None:
        super().__init__()
        # a client that gave up on a stalled answer is expected here, not a traceback
        self._server.handle_error = lambda request, address: None
        self.mode = "ok"
        self.chunk_delay = chunk_delay
        self.calls = collections.Counter()

    def next_response(self, body, headers, peer=("", 0)):  # noqa: ANN001, ANN201
        messages = body.get("messages", [])
        last = messages[-1] if messages else {}
        users = [m for m in messages if m.get("role") == "user"]
        asked = str(users[-1].get("content") or "") if users else ""
        mode = self.mode
        with self._lock:
            self.calls[mode] += 1
        if mode == "model_500":
            return fakellm.fail(500)
        if mode == "model_429":
            return fakellm.fail(429, retry_after="1")
        if mode == "model_stall":
            return fakellm.slow(AGENT_TIMEOUT_S + 2)
        if last.get("role") == "tool":
            if mode == "tool_then_fail":
                return fakellm.fail(random.choice((500, 502)))
            return fakellm.say(f"done: {asked[:60]}", chunk_delay=self.chunk_delay)
        keys = ADD.findall(asked)
        if keys:
            return fakellm.call(("add_task", {"title": "soak " + " ".join(keys)}))
        if "look up" in asked:
            return fakellm.call(("search_knowledge", {"query": "idempotency retry"}))
        return fakellm.say(f"fake: {asked[:60]}", chunk_delay=self.chunk_delay)
