"""Agents behind one port: the offline `local` agent and any OpenAI-compatible model."""

from __future__ import annotations

from typing import Any

from flask import Flask, current_app
from sqlalchemy.orm import sessionmaker

from .base import Agent
from .local import LocalAgent
from .tools import ToolBox, knowledge_tools, task_tools


def build_agent(config: dict[str, Any]) -> Agent:
    """The agent AGENT_PROVIDER names, built from config (never at import time)."""
    if config["AGENT_PROVIDER"] == "openai":
        from .openai import OpenAIAgent

        return OpenAIAgent.from_config(config)
    return LocalAgent()


def init_app(app: Flask, agent: Agent | None) -> None:
    app.extensions["chatsvc.agent"] = agent or build_agent(app.config)


def current_agent() -> Agent:
    return current_app.extensions["chatsvc.agent"]


def toolbox(sessions: sessionmaker, user_id: str | None) -> ToolBox:
    """The tools of a turn: task tools only when the turn has a user; knowledge search always."""
    tasks = task_tools(user_id) if user_id is not None else []
    return ToolBox(sessions, [*tasks, *knowledge_tools()])
