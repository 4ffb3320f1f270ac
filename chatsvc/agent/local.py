"""The offline agent: deterministic, no network. It reads everyday task requests and uses the
same tools a model would; anything else it answers from the knowledge base or says it does not
know."""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from .answers import extractive_answer
from .base import (
    Agent,
    AgentEvent,
    Reply,
    ReplyDone,
    TextDelta,
    ToolCall,
    ToolCallDone,
    Tools,
    Turn,
)

MODEL = "local"
MAX_LISTED_TASKS = 50  # tasks named in one answer; the rest are counted

# Each intent's trigger words; the earliest trigger in the message decides.
INTENTS: list[tuple[str, re.Pattern[str]]] = [
    ("add", re.compile(
        r"\b(add|create|new task|remind me to|remember to|i need to remember|put)\b")),
    ("list", re.compile(r"\b(show|list|display|view|see my|my tasks|my todos?)\b")),
    ("complete", re.compile(r"\b(done|complete|completed|finish|finished|mark|tick|check off)\b")),
    ("delete", re.compile(r"\b(delete|remove|cancel|drop|forget about|get rid of)\b")),
    ("update", re.compile(r"\b(change|update|rename|edit|modify)\b")),
]  # fmt: skip
QUESTION = re.compile(r"^\s*(what|which|how|why|where|when|who|do i|have i|is there|are there)\b")
TASKISH = re.compile(
    r"\b(tasks?|todos?|to-dos?|pending|completed|finished|left|remaining|outstanding|my list)\b"
)
ADD_TRIGGER = re.compile(
    r"^.*?\b(add|create|put|remind me to|i need to remember to|remember to)\b\s*", re.I | re.S
)
ADD_FILLER = re.compile(
    r"^(?:(?:a|an|the)\s+)?(?:new\s+)?(?:(?:task|todo|to-do|item|reminder)\b\s*)?"
    r"(?:(?:to|called|named|titled)\b\s*|:\s*)?",
    re.I,
)
# `(?<!\s)\s+`: a run of spaces is tried from its start only, not again from each space in it
# (which made a long run quadratic).
WITH_DESCRIPTION = re.compile(
    r"(?<!\s)\s+with (?:the )?(?:description|note|details)(?::\s*|\s+)", re.I
)
ON_LIST = re.compile(r"(?<!\s)\s+(to|on|in) (my|the) (task |todo |to-do )?(list|tasks)\b", re.I)
UPDATE_TARGET = re.compile(r"^(?P<ref>.*?)(?<!\s)\s+(?:to|into|as)\s+(?P<new>.+)$", re.I | re.S)
GREETING = re.compile(r"^\s*(hi|hello|hey|help|good (morning|afternoon|evening))\b[\s!.?]*$", re.I)
# Paired quotes; a single quote opens/closes only outside a word, so apostrophes ("mom's") don't.
# A quotation never contains another opening quote of its kind: each opening quote then scans
# only up to the next one, so an unclosed run of them costs linear, not quadratic, time.
QUOTED = re.compile(
    r"\"([^\"]+)\"|“([^“”]+)”|«([^«»]+)»|(?<!\w)['‘]((?:(?!(?<!\w)['‘]).)+?)['’](?!\w)"
)
TASK_NUMBER = re.compile(r"(?:\btask\s*(?:number\s*|no\.?\s*)?#?|#|\bnumber\s+)(\d+)\b", re.I)
BARE_NUMBER = re.compile(r"\b(\d+)\b")
STOPWORDS = frozenset(
    [
        "a",
        "an",
        "the",
        "my",
        "to",
        "of",
        "for",
        "and",
        "or",
        "on",
        "in",
        "at",
        "with",
        "as",
        "is",
        "it",
        "this",
        "that",
        "task",
        "tasks",
        "todo",
        "please",
        "done",
        "complete",
        "completed",
        "finish",
        "finished",
        "mark",
        "delete",
        "remove",
        "cancel",
        "change",
        "update",
        "rename",
        "i",
        "me",
        "have",
        "has",
        "had",
        "be",
        "was",
        "were",
        "are",
        "can",
        "you",
        "should",
        "would",
        "could",
        "which",
        "one",
        "item",
    ]
)

HELP = (
    'I can manage your tasks: add one ("add a task to buy milk"), list them ("what\'s '
    'pending?"), complete ("task 2 is done"), change ("rename task 2 to buy oat milk") '
    'or delete them ("remove task 3").'
)


@dataclass(frozen=True)
class TaskRef:
    number: int | None = None
    words: str | None = None

    def describe(self) -> str:
        return f"task {self.number}" if self.number is not None else f"“{self.words}”"


class LocalAgent(Agent):
    """Understands task requests by pattern; streams its answer in word-sized pieces."""

    name = MODEL

    def stream(self, turn: Turn, tools: Tools, *, watched: bool = True) -> Iterator[AgentEvent]:
        run = _Run(tools)
        text = run.answer(turn.message.strip())
        for piece in re.findall(r"\S+\s*|\s+", text):
            yield TextDelta(piece)
        for call in run.calls:
            yield ToolCallDone(call)
        yield ReplyDone(Reply(text=text, model=MODEL, tool_calls=run.calls, cited=run.cited))


class _Run:
    """One turn's reasoning: records the tool calls it makes."""

    def __init__(self, tools: Tools) -> None:
        self.tools = tools
        self.calls: list[ToolCall] = []
        self.cited: tuple[int, ...] | None = None  # the passages a knowledge answer rests on

    def call(self, name: str, **arguments: Any) -> dict[str, Any]:
        call = self.tools.call(name, arguments)
        self.calls.append(call)
        return call.result

    def answer(self, message: str) -> str:
        if GREETING.match(message):
            return "Hello! " + (HELP if "add_task" in self.tools.names else _KNOWLEDGE_HELP)
        intent = _intent(message) if "add_task" in self.tools.names else None
        if intent is None:
            return self.knowledge(message)
        return getattr(self, intent)(message)

    # Task intents -------------------------------------------------------------------------

    def add(self, message: str) -> str:
        title, description = _new_task_text(message)
        if not title:
            return "What should the task say? For example: “add a task to buy milk”."
        result = self.call(
            "add_task", title=title, **({"description": description} if description else {})
        )
        if "error" in result:
            return f"I couldn't add that task: {result.get('detail', result['error'])}."
        return f"Added task {result['task_id']}: “{result['title']}”."

    def list(self, message: str) -> str:
        lowered = message.lower()
        status = "all"
        if re.search(
            r"\b(pending|open|left|remaining|to do|todo|outstanding|unfinished)\b", lowered
        ):
            status = "pending"
        elif re.search(r"\b(completed|done|finished)\b", lowered):
            status = "completed"
        result = self.call("list_tasks", status=status)
        tasks = result["tasks"]
        label = {"all": "", "pending": "pending ", "completed": "completed "}[status]
        if not tasks:
            return f"You have no {label}tasks."
        lines = [
            f"{t['task_id']}. {t['title']}"
            + (" (done)" if t["completed"] and status == "all" else "")
            for t in tasks[:MAX_LISTED_TASKS]
        ]
        more = len(tasks) - len(lines)
        if result.get("truncated"):
            lines.append("… and more: the list was cut. Ask for pending or completed ones.")
        elif more:
            lines.append(f"… and {more} more.")
        count = f"{len(tasks)}{'+' if result.get('truncated') else ''}"
        noun = "task" if len(tasks) == 1 else "tasks"
        return f"You have {count} {label}{noun}:\n" + "\n".join(lines)

    def complete(self, message: str) -> str:
        return self._on_task(message, "complete_task", "Marked task {task_id} “{title}” as done.")

    def delete(self, message: str) -> str:
        return self._on_task(message, "delete_task", "Deleted task {task_id} “{title}”.")

    def update(self, message: str) -> str:
        quoted = _quotes(message)
        match = UPDATE_TARGET.search(message)
        if len(quoted) >= 2:
            reference, new_text = f"“{quoted[0]}”", quoted[1]
        elif match:
            reference, new_text = match["ref"], _strip_quotes(match["new"].strip().rstrip(".!"))
        else:
            return "What should it change to? For example: “rename task 2 to buy oat milk”."
        about_description = re.search(r"\b(description|details|notes?)\b", reference, re.I)
        reference = re.sub(r"\b(the )?(description|details|notes?|title|name) of\b", "", reference)
        field = "description" if about_description else "title"
        done = "Updated task {task_id} “{title}”."
        return self._on_task(reference, "update_task", done, **{field: new_text.strip()})

    def _on_task(self, message: str, tool: str, done: str, **extra: Any) -> str:
        ref = _task_reference(message)
        if ref is None:
            return "Which task do you mean? Give its number (“task 2”) or words from its title."
        task_id, candidates = self._resolve(ref)
        if task_id is None:
            return self._not_found(ref, candidates)
        result = self.call(tool, task_id=task_id, **extra)
        if result.get("error") == "task_not_found":
            return self._not_found(ref, [])
        if "error" in result:
            return f"I couldn't do that: {result.get('detail', result['error'])}."
        return done.format(**result)

    def _resolve(self, ref: TaskRef) -> tuple[int | None, list[dict[str, Any]]]:
        if ref.number is not None:
            return ref.number, []
        tasks = self.call("list_tasks", status="all")["tasks"]
        wanted = _words(ref.words or "")
        exact = [t for t in tasks if t["title"].lower() == (ref.words or "").lower()]
        scored = sorted(
            ((len(wanted & _words(t["title"])), t) for t in tasks),
            key=lambda pair: (-pair[0], pair[1]["completed"], pair[1]["task_id"]),
        )
        best = exact[:1] or [t for score, t in scored[:1] if score > 0]
        return (best[0]["task_id"] if best else None), tasks

    def _not_found(self, ref: TaskRef, tasks: list[dict[str, Any]]) -> str:
        text = f"Sorry, I couldn't find {ref.describe()} in your tasks."
        if tasks:
            listing = ", ".join(f"{t['task_id']} “{t['title']}”" for t in tasks[:10])
            return f"{text} You have: {listing}."
        return text + " Say “show my tasks” to see them."

    # Everything else ----------------------------------------------------------------------

    def knowledge(self, message: str) -> str:
        if "search_knowledge" not in self.tools.names:
            return (
                "I don't know the answer to that. "
                + (HELP if "add_task" in self.tools.names else "").strip()
            )
        result = self.call("search_knowledge", query=message, k=3)
        text, cited = extractive_answer(message, result.get("results", []))
        self.cited = tuple(hit["ref"] for hit in cited if "ref" in hit)
        if not cited and "add_task" in self.tools.names:
            text = f"{text} {HELP}"
        return text


_KNOWLEDGE_HELP = "Ask me a question and I'll answer from the knowledge base, with sources."


def _intent(message: str) -> str | None:
    lowered = message.lower()
    taskish = TASKISH.search(lowered) or TASK_NUMBER.search(lowered)
    if QUESTION.match(lowered):
        return "list" if taskish and not re.search(r"\b(how|why)\b", lowered[:8]) else None
    found = [(m.start(), order, name) for order, (name, rx) in enumerate(INTENTS)
             if (m := rx.search(lowered))]  # fmt: skip
    return min(found)[2] if found else None


def _new_task_text(message: str) -> tuple[str, str]:
    quoted = _quotes(message)
    if quoted:
        return quoted[0].strip(), ""
    text = re.sub(ADD_TRIGGER, "", message.strip(), count=1)
    text = re.sub(ADD_FILLER, "", text, count=1)
    title, *rest = WITH_DESCRIPTION.split(text, maxsplit=1)
    description = rest[0] if rest else ""
    title = ON_LIST.sub("", title)
    return title.strip().rstrip(".!?").strip(), description.strip().rstrip(".")


def _task_reference(message: str) -> TaskRef | None:
    quoted = _quotes(message)
    if quoted:
        return TaskRef(words=quoted[0].strip())
    number = TASK_NUMBER.search(message)
    if number:
        return TaskRef(number=int(number.group(1)))
    words = " ".join(w for w in re.findall(r"[\w'-]+", message) if w.lower() not in STOPWORDS)
    # A bare number is the task's only when nothing else is said ("delete 3"); in "I finished
    # call 3 clients" it is part of a title.
    number = BARE_NUMBER.fullmatch(words)
    if number:
        return TaskRef(number=int(number.group(1)))
    return TaskRef(words=words) if words else None


def _words(text: str) -> set[str]:
    return {w for w in re.findall(r"[\w'-]+", text.lower()) if w not in STOPWORDS}


def _quotes(text: str) -> list[str]:
    """The quoted passages of a message, verbatim, in order."""
    return [_unquote(match) for match in QUOTED.finditer(text)]


def _unquote(match: re.Match[str]) -> str:
    return next(group for group in match.groups() if group is not None)


def _strip_quotes(text: str) -> str:
    quoted = QUOTED.fullmatch(text)
    return _unquote(quoted) if quoted else text
