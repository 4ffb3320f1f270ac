"""The tools an agent may call, bound to the turn's user — never to an id the model supplies."""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from sqlalchemy.orm import Session, sessionmaker

from ..errors import NotFound
from ..services import knowledge
from ..services import tasks as task_service
from .base import ToolCall

log = logging.getLogger(__name__)

Handler = Callable[[Session, dict[str, Any]], dict[str, Any]]


class ToolArgumentError(ValueError):
    """The model called a tool with arguments that do not fit its schema."""


@dataclass(frozen=True)
class Tool:
    name: str
    description: str
    parameters: dict[str, Any]
    handler: Handler
    cites: bool = False  # its result lists passages ("results") an answer may cite

    def spec(self) -> dict[str, Any]:
        """The OpenAI-style function declaration the model sees."""
        return {
            "type": "function",
            "function": {
                "name": self.name,
                "description": self.description,
                "parameters": self.parameters,
            },
        }


class ToolBox:
    """The tools of one turn. Each call is its own short unit of work.

    It also keeps the turn's citations: every passage a citing tool returned gets a number
    (`ref`, unique in the turn) that an answer cites as "[n]"; `sources(text)` turns an answer
    into the contract's `sources`, so every agent gets citations without logic of its own."""

    def __init__(self, sessions: sessionmaker, tools: list[Tool]) -> None:
        self._sessions = sessions
        self._tools = {tool.name: tool for tool in tools}
        self.hits: list[dict[str, Any]] = []  # passages seen this turn, in order, with `ref`
        self._chosen: list[dict[str, Any]] | None = None

    @property
    def names(self) -> list[str]:
        return list(self._tools)

    def specs(self) -> list[dict[str, Any]]:
        return [tool.spec() for tool in self._tools.values()]

    def call(self, name: str, arguments: dict[str, Any] | str | None) -> ToolCall:
        """Run a tool; a bad call comes back as an error result for the model, never raises."""
        parameters: dict[str, Any] = {}
        tool = self._tools.get(name)
        try:
            parameters = _decode(arguments)
            if tool is None:
                raise ToolArgumentError(
                    f"unknown tool {name!r}; available: {', '.join(self.names)}"
                )
            _check(tool.parameters, parameters)
            with self._sessions() as session:
                result = tool.handler(session, parameters)
        except ToolArgumentError as exc:
            result = {"error": "invalid_arguments", "detail": str(exc)}
        except NotFound:
            result = {"error": "task_not_found", "task_id": parameters.get("task_id")}
        result = _fit(result)
        if tool is not None and tool.cites:
            self._number(result.get("results", []))
        return ToolCall(tool=name, parameters=parameters, result=result)

    def _number(self, results: list[dict[str, Any]]) -> None:
        refs = {hit["chunk_id"]: hit["ref"] for hit in self.hits}
        for hit in results:
            if hit["chunk_id"] not in refs:
                refs[hit["chunk_id"]] = len(self.hits) + 1
                self.hits.append({**hit, "ref": refs[hit["chunk_id"]]})
            hit["ref"] = refs[hit["chunk_id"]]

    def choose_sources(self, sources: list[dict[str, Any]]) -> None:
        """An agent that picks its citations itself says which (possibly none)."""
        self._chosen = [_source(hit) for hit in sources]

    def sources(self, answer: str) -> list[dict[str, Any]]:
        """The citations of an answer: what the agent chose; else the passages the answer cites
        as [n], in the order cited; else, when it cites none, every passage it was shown."""
        if self._chosen is not None:
            return self._chosen
        by_ref = {hit["ref"]: hit for hit in self.hits}
        cited: list[int] = []
        for group in CITATION.findall(answer):
            for ref in (int(n) for n in re.findall(r"\d+", group)):
                if ref in by_ref and ref not in cited:
                    cited.append(ref)
        chosen = [by_ref[ref] for ref in cited] or self.hits
        return [_source(hit) for hit in chosen[:MAX_SOURCES]]


# The largest tool result (characters of JSON) a turn sends to the model and stores; a list
# that does not fit (tasks, passages) is cut from its end and the result says `truncated`.
MAX_TOOL_RESULT_CHARS = 16_000
MAX_SOURCES = 10  # citations in one answer (a turn may be shown 5 rounds × 10 passages)
_REF_ROOM = 16  # per item: the `ref` a citing tool's passages get after the cut


def _fit(result: dict[str, Any]) -> dict[str, Any]:
    def size(value: Any) -> int:
        return len(json.dumps(value, ensure_ascii=False))

    total = size(result)
    key = next((k for k, v in result.items() if isinstance(v, list)), None)
    if key is None or total + _REF_ROOM * len(result[key]) <= MAX_TOOL_RESULT_CHARS:
        return result
    budget = MAX_TOOL_RESULT_CHARS - (total - size(result[key])) - len(', "truncated": true')
    kept: list[Any] = []
    for item in result[key]:
        budget -= size(item) + 2 + _REF_ROOM
        if budget < 0:
            break
        kept.append(item)
    return {**result, key: kept, "truncated": True}


CITATION = re.compile(r"\[(\d+(?:\s*,\s*\d+)*)\]")
SOURCE_FIELDS = ("document_id", "title", "url", "chunk_id", "snippet", "score")


def _source(hit: dict[str, Any]) -> dict[str, Any]:
    return {name: hit.get(name) for name in SOURCE_FIELDS}


def knowledge_tools() -> list[Tool]:
    """`search_knowledge`: open to every turn, with or without a user."""

    def search_knowledge(session: Session, args: dict[str, Any]) -> dict[str, Any]:
        hits = knowledge.search(session, args["query"], args.get("k", 5))
        return {"query": args["query"], "results": [hit.as_dict() for hit in hits]}

    parameters = _object(
        {
            "query": {"type": "string", "minLength": 1, "maxLength": 500,
                      "description": "Keywords or a question."},
            "k": {"type": "integer", "minimum": 1, "maximum": knowledge.MAX_K,
                  "description": "How many passages to return (default 5)."},
        },
        ["query"],
    )  # fmt: skip
    description = (
        "Search the knowledge base (the service's documents) with full-text search. Returns "
        "passages with a `ref` number; answer only from them and cite each passage you use as "
        "[ref], e.g. [1]. If nothing relevant comes back, say you do not know."
    )
    return [Tool("search_knowledge", description, parameters, search_knowledge, cites=True)]


def task_tools(user_id: str) -> list[Tool]:
    """The five task tools, closed over the turn's user."""

    def add_task(session: Session, args: dict[str, Any]) -> dict[str, Any]:
        task = task_service.create_task(
            session, user_id, args["title"].strip(), args.get("description", "")
        )
        return {"task_id": task.task_id, "status": "created", "title": task.title}

    def list_tasks(session: Session, args: dict[str, Any]) -> dict[str, Any]:
        found = task_service.list_tasks(session, user_id, args.get("status", "all"))
        return {
            "tasks": [
                {"task_id": t.task_id, "title": t.title, "completed": t.completed} for t in found
            ]
        }

    def complete_task(session: Session, args: dict[str, Any]) -> dict[str, Any]:
        task = task_service.update_task(session, user_id, args["task_id"], completed=True)
        return {"task_id": task.task_id, "status": "completed", "title": task.title}

    def update_task(session: Session, args: dict[str, Any]) -> dict[str, Any]:
        if "title" not in args and "description" not in args:
            raise ToolArgumentError("give a new title or description")
        task = task_service.update_task(
            session,
            user_id,
            args["task_id"],
            title=args.get("title"),
            description=args.get("description"),
        )
        return {"task_id": task.task_id, "status": "updated", "title": task.title}

    def delete_task(session: Session, args: dict[str, Any]) -> dict[str, Any]:
        task = task_service.delete_task(session, user_id, args["task_id"])
        return {"task_id": task.task_id, "status": "deleted", "title": task.title}

    task_id = {
        "type": "integer",
        "minimum": 1,
        "maximum": 2**31 - 1,
        "description": "The task's number.",
    }
    title = {"type": "string", "minLength": 1, "maxLength": 200}
    description = {"type": "string", "maxLength": 1000}
    return [
        Tool("add_task", "Add a task to the user's list.",
             _object({"title": title, "description": description}, ["title"]), add_task),
        Tool("list_tasks", "List the user's tasks, optionally only pending or completed ones.",
             _object({"status": {"type": "string", "enum": list(task_service.STATUSES)}}, []),
             list_tasks),
        Tool("complete_task", "Mark one of the user's tasks as completed.",
             _object({"task_id": task_id}, ["task_id"]), complete_task),
        Tool("update_task", "Change the title or description of one of the user's tasks.",
             _object({"task_id": task_id, "title": title, "description": description},
                     ["task_id"]), update_task),
        Tool("delete_task", "Delete one of the user's tasks.",
             _object({"task_id": task_id}, ["task_id"]), delete_task),
    ]  # fmt: skip


def _object(properties: dict[str, Any], required: list[str]) -> dict[str, Any]:
    return {
        "type": "object",
        "properties": properties,
        "required": required,
        "additionalProperties": False,
    }


def _decode(arguments: dict[str, Any] | str | None) -> dict[str, Any]:
    if arguments is None or arguments == "":
        return {}
    if isinstance(arguments, str):
        try:
            arguments = json.loads(arguments)
        except ValueError as exc:
            raise ToolArgumentError("arguments are not valid JSON") from exc
    if not isinstance(arguments, dict):
        raise ToolArgumentError("arguments must be a JSON object")
    return arguments


_TYPES: dict[str, tuple[type, ...]] = {"string": (str,), "integer": (int,), "number": (int, float)}


def _check(schema: dict[str, Any], arguments: dict[str, Any]) -> None:
    """Validate the subset of JSON Schema our tools use."""
    properties = schema["properties"]
    for name in schema["required"]:
        if name not in arguments:
            raise ToolArgumentError(f"missing required argument {name!r}")
    for name, value in arguments.items():
        rule = properties.get(name)
        if rule is None:
            raise ToolArgumentError(f"unexpected argument {name!r}")
        expected = _TYPES[rule["type"]]
        if isinstance(value, bool) or not isinstance(value, expected):
            raise ToolArgumentError(f"{name} must be of type {rule['type']}")
        if "enum" in rule and value not in rule["enum"]:
            raise ToolArgumentError(f"{name} must be one of {', '.join(rule['enum'])}")
        if isinstance(value, str):
            length = len(value.strip())
            if length < rule.get("minLength", 0) or len(value) > rule.get("maxLength", 10**9):
                raise ToolArgumentError(f"{name} has a length outside the allowed range")
        if isinstance(value, int) and not rule.get("minimum", value) <= value <= rule.get(
            "maximum", value
        ):
            raise ToolArgumentError(f"{name} is out of range")
