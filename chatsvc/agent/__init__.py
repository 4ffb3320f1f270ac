"""Agents behind one port: the offline `local` agent and any OpenAI-compatible model."""

from __future__ import annotations

from typing import Any

from .base import Agent
from .local import LocalAgent


def build_agent(config: dict[str, Any]) -> Agent:
    """The agent AGENT_PROVIDER names, built from config (never at import time)."""
    if config["AGENT_PROVIDER"] == "openai":
        from .openai import OpenAIAgent

        return OpenAIAgent.from_config(config)
    return LocalAgent()
