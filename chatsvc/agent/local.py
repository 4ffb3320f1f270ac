"""The offline agent: deterministic, no network. It reads everyday task requests and uses the
same tools a model would; anything else it answers from the knowledge base or says it does not
know.

How it reads a message: the earliest trigger phrase decides what is asked (add, list, complete,
delete, change; a question about tasks lists them). Dates ("by Friday", "on 3 March") are read
against the user's own day (`Turn.timezone`) and priorities ("urgent", "low priority") are
taken out of the text before what is left becomes a title or a reference to a task. A task is
found by its number, its quoted title, or words of its title, inflected or partial ("the grocery
task" finds "Buy groceries"). Every pattern is a scan of literal alternatives or is anchored so
that it fails or succeeds once per position: a message is read in linear time."""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import date, timedelta
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
from .when import DATE, end_of_week, find_date, today_in

MODEL = "local"
MAX_LISTED_TASKS = 50  # tasks named in one answer; the rest are counted
MAX_NEW_TASKS = 10  # tasks one message may add

# Each intent's trigger phrases; the earliest trigger in the message decides.
INTENTS: list[tuple[str, re.Pattern[str]]] = [
    ("add", re.compile(
        r"\b(add|create|new task|new todo|new to-do|new reminder|remind me|remember to"
        r"|i need to remember|put|stick|pop|note to self"
        r"|jot down|make a note|todo:|to-do:|schedule|write down)\b")),
    ("implied", re.compile(
        r"\b((?:i|we)(?:['’]ll| will)? (?:really |still |also |just )?"
        r"(?:need|have|want|ought|got|must|should|gotta)(?: really)?(?: to)?(?: remember to)?"
        r"|i['’]?ve got to|i['’]?m going to have to"
        r"|don['’]?t (?:let me )?forget(?: to)?"
        r"|must remember to|need to|have to|got to|gotta)\b")),
    ("list", re.compile(r"\b(show|list|display|view|see my|my tasks|my todos?|what'?s on)\b")),
    ("complete", re.compile(
        r"\b(done|complete|completed|finish|finished|mark|tick|ticked|check off|checked off"
        r"|cross off|crossed off|knock off|(?:has|have) been \w+ed)\b")),
    ("delete", re.compile(
        r"\b(delete|remove|cancel|drop|scrap|forget about|get rid of|never ?mind|erase"
        r"|don['’]?t need to|no need to|no longer need to|not doing|off my list|off the list)\b")),
    ("update", re.compile(
        r"\b(change|update|rename|edit|modify|move|push|postpone|reschedule|bump|delay|set"
        r"|make|bring forward|is due|are due|due date|can wait|hold off)\b")),
]  # fmt: skip
# "I called mum", "I've paid the electricity bill": a past deed at the start completes a task.
DEED = re.compile(
    r"^(?:(?:ok|okay|so|yay|well),?\s+)?(?:i(?:['’]ve| have)?\s+)?(?:just\s+|already\s+"
    r"|finally\s+)?"
    r"(bought|called|rang|paid|walked|did|got|picked up|sent|emailed|booked|cleaned|took out"
    r"|fed|washed|posted|returned|fixed|wrote|handed in|submitted|renewed|watered|sorted"
    r"|sorted out|dealt with|handled)\b(?!\s+to\b)",
    re.I,
)
# "electricity bill paid", "flights booked!": the deed said after the task.
DEED_AFTER = re.compile(
    r"\b(bought|called|paid|walked|booked|sorted|sent|posted|cleaned|fixed|handled|renewed"
    r"|returned|submitted|watered|fed|washed)\W{0,3}$"
)
QUESTION = re.compile(
    r"^\s*(what|which|how|why|where|who|when|do i|have i|did i|is there|are there|is anything"
    r"|anything|any|am i|what's|whats|got anything)\b"
)
TASKISH = re.compile(
    r"\b(tasks?|todos?|to-dos?|pending|completed|finished|left|remaining|outstanding|my list"
    r"|what['’]?s on|on for|planned|scheduled|do i have|have i got|did i (?:get|finish|complete|do)"
    r"|due|overdue|late|urgent|priority|important|to do|on my plate|agenda|behind)\b"
)
HOW_MANY = re.compile(r"\bhow many\b|\bcount\b|\bnumber of\b")
OVERDUE = re.compile(r"\b(overdue|late|past due|behind|missed)\b")
THIS_WEEK = re.compile(r"\b(this week|the week|end of (?:the |this )?week)\b")
URGENT_ASK = re.compile(r"\b(urgent|high[- ]priority|important|top priority)\b")
SEARCH_ASK = re.compile(
    r"\b(?:find|search for|search|look for|look up|about|mentioning|called|named|with the word)"
    r"\s+(?:my\s+)?(?:tasks?\s+|todos?\s+)?(?:for\s+|about\s+|with\s+)?",
    re.I,
)
_LEVELS = (
    r"(?:(?P<normal>(?:isn['’]?t|aren['’]?t|is not|are not|no longer) urgent(?: any ?more)?"
    r"|not urgent any ?more|normal priority|medium priority|regular priority)"
    r"|(?P<high>urgent(?:ly)?|asap|a\.s\.a\.p|high[- ]priority|top priority|high prio"
    r"|important|priority high|critical)"
    r"|(?P<low>low[- ]priority|not urgent|low prio|no rush|whenever|someday|some day"
    r"|priority low|not important)"
    r")"
)
PRIORITY = re.compile(
    r"\b(?:(?:and\s+)?(?:it['’]?s|it is|this is|that['’]?s|mark it|make it|set it|as|with|at"
    r"|to)\s+)?(?:(?:an?|the)\s+)?" + _LEVELS + r"(?!\w)",
    re.I,
)
ADD_TRIGGER = re.compile(
    r"^.*?\b(add|create|new todo|new to-do|put|stick|pop"
    r"|remind me(?: to| about| that i (?:need|have) to)?"
    r"|i need to remember to|remember to|note to self:?|jot down|make a note to|make a note of"
    r"|todo:|to-do:|schedule|write down)\b:?\s*",
    re.I | re.S,
)
IMPLIED_TRIGGER = re.compile(INTENTS[1][1].pattern + r"\s*", re.I)
ADD_FILLER = re.compile(
    r"^(?:(?:to|on|onto) (?:my|the) (?:[\w-]+ )?list\s*:?\s*)?"
    r"(?:(?:a|an|the)\s+)?(?:new\s+)?(?:(?:task|todo|to-do|item|reminder)\b\s*)?"
    r"(?:(?:to|called|named|titled|for|that says|saying)\b\s*|[:-]\s*)?",
    re.I,
)
COUNTED = re.compile(
    r"^(?:(?:two|three|four|five|six|seven|eight|nine|ten|\d{1,2}|a few|some|these|the"
    r"|following|both)\s+)+(?:new\s+)?(?:tasks|things|items|todos|to-dos|reminders)\b"
    r"(?:\s+to\s+my\s+list)?\s*(?::|-)?\s*|^(?:these|the following|following)\s*:\s*",
    re.I,
)
# "push the report back a day", "bring it forward two weeks": a due date moved by so much.
SHIFT = re.compile(
    r"\b(?:(back|forward|out|on)\s+)?(?:by\s+)?(a|an|one|two|three|four|five|six|seven|\d{1,3}"
    r"|a couple of)\s+(days?|weeks?)\b",
    re.I,
)
WEAK_TRIGGERS = frozenset(["make", "set", "move", "push", "bump", "delay", "drop", "edit",
                           "change", "update", "modify"])  # fmt: skip
_COUNTS = {"a": 1, "an": 1, "one": 1, "two": 2, "three": 3, "four": 4, "five": 5, "six": 6,
           "seven": 7, "a couple of": 2}  # fmt: skip
# `(?<!\s)\s+`: a run of spaces is tried from its start only, not again from each space in it
# (which made a long run quadratic).
WITH_DESCRIPTION = re.compile(
    r"(?<!\s)\s+with (?:the )?(?:description|note|details)(?::\s*|\s+)", re.I
)
ON_LIST = re.compile(
    r"(?<!\s)\s+(?:to|on|in|onto) (?:my|the) (?:[\w-]+ )?(?:list|tasks|todos?)\b", re.I
)
# `(?<!\s)`: a separator is tried from the start of a run of spaces only (see WITH_DESCRIPTION).
LIST_SEPARATOR = re.compile(r"(?<!\s)\s*[,;]\s*|\n+")
LAST_SEPARATOR = re.compile(r"(?<!\s)\s+(?:and|&|plus)\s+", re.I)
UPDATE_TARGET = re.compile(
    r"^(?P<ref>.*?)(?<!\s)\s+(?:to|into|as|until|till)\s+(?P<new>.+)$", re.I | re.S
)
GREETING = re.compile(
    r"^\s*(hi|hello|hey|hiya|help|good (morning|afternoon|evening))\b[\s!.?]*$", re.I
)
THANKS = re.compile(r"^\s*(thanks|thank you|thx|cheers|ta|great|perfect|ok|okay)\b[\s!.]*$", re.I)
# Paired quotes; a single quote opens/closes only outside a word, so apostrophes ("mom's") don't.
# A quotation never contains another opening quote of its kind: each opening quote then scans
# only up to the next one, so an unclosed run of them costs linear, not quadratic, time.
QUOTED = re.compile(
    r"\"([^\"]+)\"|“([^“”]+)”|«([^«»]+)»|(?<!\w)['‘]((?:(?!(?<!\w)['‘]).)+?)['’](?!\w)"
)
TASK_NUMBER = re.compile(r"(?:\btask\s*(?:number\s*|no\.?\s*)?#?|#|\bnumber\s+)(\d+)\b", re.I)
BARE_NUMBER = re.compile(r"\b(\d+)\b")
WORD = re.compile(r"[\w'’-]+")
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
        "it's",
        "its",
        "this",
        "that",
        "these",
        "those",
        "task",
        "tasks",
        "todo",
        "todos",
        "to-do",
        "please",
        "done",
        "complete",
        "completed",
        "finish",
        "finished",
        "mark",
        "marked",
        "delete",
        "remove",
        "cancel",
        "change",
        "update",
        "rename",
        "i",
        "i'm",
        "im",
        "i've",
        "ive",
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
        "ones",
        "item",
        "thing",
        "things",
        "about",
        "off",
        "check",
        "tick",
        "ticked",
        "cross",
        "crossed",
        "knock",
        "get",
        "rid",
        "forget",
        "never",
        "mind",
        "nevermind",
        "need",
        "needs",
        "don't",
        "dont",
        "do",
        "anymore",
        "longer",
        "no",
        "not",
        "just",
        "already",
        "finally",
        "now",
        "all",
        "yeah",
        "yes",
        "ok",
        "okay",
        "so",
        "move",
        "push",
        "postpone",
        "reschedule",
        "bump",
        "delay",
        "set",
        "make",
        "bring",
        "forward",
        "back",
        "due",
        "date",
        "priority",
        "high",
        "low",
        "urgent",
        "important",
        "really",
        "also",
        "still",
        "thanks",
        "thank",
        "erase",
        "scrap",
        "drop",
        "edit",
        "modify",
        "from",
        "by",
        "until",
        "till",
        "up",
        "out",
        "list",
        "called",
        "named",
        "entry",
        "reminder",
        "what",
        "which",
        "there",
    ]
)
LEVEL_WORDS = {"low": "low", "normal": "normal", "medium": "normal", "high": "high",
               "urgent": "high"}  # fmt: skip
_VERBS_SHARED = frozenset(
    ["buy", "get", "call", "email", "text", "pick", "order", "book", "pay", "clean", "wash", "fix"]
)

HELP = (
    'I can manage your tasks: add one ("add a task to buy milk by Friday"), list them ("what\'s '
    'due this week?"), complete ("task 2 is done"), change ("move the report task to next '
    'Monday") or delete them ("remove task 3").'
)
UNSURE = (
    "Sorry, I'm not sure what you'd like me to do with that. "
    'You could say "add a task to call mum tomorrow", "what\'s overdue?" or "task 2 is done".'
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
        run = _Run(tools, today_in(turn.timezone))
        text = run.answer(turn.message.strip())
        for piece in re.findall(r"\S+\s*|\s+", text):
            yield TextDelta(piece)
        for call in run.calls:
            yield ToolCallDone(call)
        yield ReplyDone(Reply(text=text, model=MODEL, tool_calls=run.calls, cited=run.cited))


class _Unclear(Exception):
    """The message names something that cannot be (a day that does not exist): ask kindly."""


class _Run:
    """One turn's reasoning: records the tool calls it makes."""

    def __init__(self, tools: Tools, today: date) -> None:
        self.tools = tools
        self.today = today
        self.calls: list[ToolCall] = []
        self.cited: tuple[int, ...] | None = None  # the passages a knowledge answer rests on

    def call(self, name: str, **arguments: Any) -> dict[str, Any]:
        call = self.tools.call(name, arguments)
        self.calls.append(call)
        return call.result

    def answer(self, message: str) -> str:
        if GREETING.match(message):
            return "Hello! " + (HELP if "add_task" in self.tools.names else _KNOWLEDGE_HELP)
        if THANKS.match(message):
            return "You're welcome! Anything else?"
        intent = _intent(message) if "add_task" in self.tools.names else None
        if intent is None:
            return self.knowledge(message)
        try:
            return getattr(self, intent)(message)
        except _Unclear as unclear:
            return f"{unclear} Which day did you mean? For example: “by Friday” or “on 3 March”."

    # Task intents -------------------------------------------------------------------------

    def add(self, message: str, trigger: re.Pattern[str] = ADD_TRIGGER) -> str:
        quoted = _quotes(message)
        outside = QUOTED.sub(" ", message) if quoted else message
        due, outside = self._date(outside)
        priority, outside = _priority(outside)
        if quoted:
            titles, description = [quoted[0].strip()], ""
        else:
            titles, description = _new_task_texts(outside, trigger)
        if not titles:
            return "What should the task say? For example: “add a task to buy milk”."
        extra: dict[str, Any] = {"description": description} if description else {}
        if due is not None:
            extra["due_date"] = due.isoformat()
        if priority is not None:
            extra["priority"] = priority
        added, failed = [], []
        for title in titles[:MAX_NEW_TASKS]:
            result = self.call("add_task", title=title, **extra)
            if "error" in result:
                failed.append(f"“{title}”: {result.get('detail', result['error'])}")
            else:
                added.append(f"task {result['task_id']}: “{result['title']}”")
        when = f", due {_say_date(due, self.today)}" if due is not None else ""
        urgency = f", {priority} priority" if priority is not None else ""
        parts = []
        if added:
            parts.append(f"Added {_join(added)}{when}{urgency}.")
        if failed:
            parts.append(f"I couldn't add {_join(failed)}.")
        if len(titles) > MAX_NEW_TASKS:
            parts.append(f"I add at most {MAX_NEW_TASKS} tasks at a time; the rest were left out.")
        return " ".join(parts)

    def implied(self, message: str) -> str:
        return self.add(message, IMPLIED_TRIGGER)

    def list(self, message: str) -> str:
        lowered = message.lower()
        arguments: dict[str, Any] = {"status": "all"}
        if re.search(
            r"\b(pending|open|left|remaining|to do|todo|outstanding|unfinished|still|due"
            r"|overdue|on my plate|need to)\b", lowered
        ):  # fmt: skip
            arguments["status"] = "pending"
        elif re.search(r"\b(completed|done|finished|ticked off)\b", lowered):
            arguments["status"] = "completed"
        label = ""
        if OVERDUE.search(lowered):
            arguments.update(status="pending", due_before=(self.today - timedelta(days=1)))
            label = "overdue "
        elif THIS_WEEK.search(lowered):
            arguments.update(status="pending", due_before=end_of_week(self.today))
            label = "due this week, "
        elif "next week" in lowered:  # a question about next week means all of it
            arguments.update(status="pending", due_before=end_of_week(self.today + timedelta(7)))
            label = "due by the end of next week, "
        else:
            due, _ = self._date(message)
            if due is not None:
                arguments.update(status="pending", due_before=due)
                label = f"due by {_say_date(due, self.today)}, "
        search = SEARCH_ASK.search(message)
        if search:
            words = [w for w in WORD.findall(message[search.end() :]) if w.lower() not in STOPWORDS]
            if words:
                arguments["q"] = " ".join(words)
        urgent = bool(URGENT_ASK.search(lowered))
        if urgent and arguments["status"] == "all":
            arguments["status"] = "pending"
        if "due_before" in arguments:
            arguments["due_before"] = arguments["due_before"].isoformat()
        result = self.call("list_tasks", **arguments)
        tasks = result.get("tasks", [])
        if urgent:
            tasks = [t for t in tasks if t.get("priority") == "high"]
            label = "urgent " + label
        status = arguments["status"]
        kind = {"all": "", "pending": "pending ", "completed": "completed "}[status]
        about = f" matching “{arguments['q']}”" if "q" in arguments else ""
        described = f"{kind}tasks {label[:-2]}" if label.endswith(", ") else f"{label}{kind}tasks"
        if not tasks:
            return f"You have no {described}{about}."
        if HOW_MANY.search(lowered):
            noun = described.replace("tasks", "task", 1) if len(tasks) == 1 else described
            return f"You have {len(tasks)}{'+' if result.get('truncated') else ''} {noun}{about}."
        lines = [_line(t, status) for t in tasks[:MAX_LISTED_TASKS]]
        more = len(tasks) - len(lines)
        if result.get("truncated"):
            lines.append("… and more: the list was cut. Ask for pending or completed ones.")
        elif more:
            lines.append(f"… and {more} more.")
        count = f"{len(tasks)}{'+' if result.get('truncated') else ''}"
        if len(tasks) == 1:
            described = described.replace("tasks", "task", 1)
        return f"You have {count} {described}{about}:\n" + "\n".join(lines)

    def complete(self, message: str) -> str:
        if PRIORITY.search(message) and not re.search(
            r"\b(done|complete|completed|finish|finished)\b", message, re.I
        ):
            return self.update(message)  # "mark task 3 as urgent"
        return self._on_task(
            _without_trigger(message, "complete"),
            "complete_task", "Marked task {task_id} “{title}” as done.",
        )  # fmt: skip

    def deed(self, message: str) -> str:
        found = DEED.search(message)
        rest = message[found.end() :] if found else message
        return self._on_task(rest, "complete_task", "Marked task {task_id} “{title}” as done.")

    def delete(self, message: str) -> str:
        return self._on_task(
            _without_trigger(message, "delete"), "delete_task", "Deleted task {task_id} “{title}”."
        )

    def update(self, message: str) -> str:
        done = "Updated task {task_id} “{title}”"
        priority, rest = _priority(message)
        quoted = _quotes(rest)
        match = UPDATE_TARGET.search(rest)
        if len(quoted) >= 2:
            reference, new_text = f"“{quoted[0]}”", quoted[1]
        elif match:
            reference, new_text = match["ref"], _strip_quotes(match["new"].strip().rstrip(".!?"))
        else:
            reference, new_text = rest, ""
        changes: dict[str, Any] = {}
        level = LEVEL_WORDS.get(new_text.lower().strip())
        due, left = self._date(new_text) if new_text else (None, "")
        if level and re.search(r"\bpriorit", reference, re.I):
            priority = level  # "change the priority of task 2 to low"
        elif due is not None and not _words(left):
            changes["due_date"] = due.isoformat()
        elif new_text.strip():
            about_description = re.search(r"\b(description|details|notes?)\b", reference, re.I)
            changes["description" if about_description else "title"] = new_text.strip()
        if not changes:
            due, reference = self._date(reference)
            if due is not None:
                changes["due_date"] = due.isoformat()
        shift = SHIFT.search(reference) if not changes and priority is None else None
        if shift:
            count = shift[2].lower()
            days = int(count) if count.isdigit() else _COUNTS[count]
            days *= 7 if shift[3].lower().startswith("week") else 1
            days *= -1 if (shift[1] or "").lower() == "forward" else 1
            reference = _cut(reference, *shift.span())
            return self._on_task(_without_trigger(reference, "update"), "update_task",
                                 done + ", now due {due}.", shift=days)  # fmt: skip
        if priority is not None:
            changes["priority"] = priority
        if not changes:
            return "What should it change to? For example: “rename task 2 to buy oat milk”."
        reference = re.sub(
            r"\b(the )?(description|details|notes?|title|name|due date|deadline|priority)"
            r" (of|for|on)\b", "", reference, flags=re.I,
        )  # fmt: skip
        reference = _without_trigger(reference, "update")
        if "due_date" in changes:
            done += f", now due {_say_date(date.fromisoformat(changes['due_date']), self.today)}"
        if "priority" in changes:
            done += f", {priority} priority"
        return self._on_task(reference, "update_task", done + ".", **changes)

    def _on_task(
        self, message: str, tool: str, done: str, shift: int | None = None, **extra: Any
    ) -> str:
        ref = _task_reference(message)
        if ref is None:
            return "Which task do you mean? Give its number (“task 2”) or words from its title."
        task_id, candidates = self._resolve(ref)
        if task_id is None:
            return self._not_found(ref, candidates)
        if task_id < 0:  # several fit equally well
            listing = " or ".join(f"{t['task_id']} “{t['title']}”" for t in candidates[:5])
            return f"I'm not sure which one you mean: {listing}? Tell me its number."
        task = next((t for t in candidates if t["task_id"] == task_id), None)
        if tool == "complete_task" and task is not None and task["completed"]:
            return f"Task {task_id} “{task['title']}” is already done."
        if shift is not None:  # moved from its due date (from today when it has none)
            if task is None:
                listed = self.call("list_tasks", status="all")["tasks"]
                task = next((t for t in listed if t["task_id"] == task_id), None)
                if task is None:
                    return self._not_found(ref, [])
            start = date.fromisoformat(task["due_date"]) if task.get("due_date") else self.today
            due = start + timedelta(days=shift)
            extra["due_date"] = due.isoformat()
            done = done.replace("{due}", _say_date(due, self.today))
        result = self.call(tool, task_id=task_id, **extra)
        if result.get("error") == "task_not_found":
            return self._not_found(ref, [])
        if "error" in result:
            return f"I couldn't do that: {result.get('detail', result['error'])}."
        return done.format(**result)

    def _resolve(self, ref: TaskRef) -> tuple[int | None, list[dict[str, Any]]]:
        """The task a reference means; (-1, the candidates) when several fit equally well."""
        if ref.number is not None:
            return ref.number, []
        tasks = self.call("list_tasks", status="all")["tasks"]
        wanted = (ref.words or "").lower()
        exact = [t for t in tasks if t["title"].lower() == wanted]
        if exact:
            return exact[0]["task_id"], tasks
        words = _words(wanted)
        scored = [(_score(words, t["title"]), t) for t in tasks]
        best = max((score for score, _ in scored), default=0)
        if best <= 0:
            return None, tasks
        top = [t for score, t in scored if score == best]
        pending = [t for t in top if not t["completed"]]
        if len(pending) > 1:
            return -1, pending
        return (pending or top)[0]["task_id"], tasks

    def _not_found(self, ref: TaskRef, tasks: list[dict[str, Any]]) -> str:
        text = f"Sorry, I couldn't find {ref.describe()} in your tasks."
        if tasks:
            listing = ", ".join(f"{t['task_id']} “{t['title']}”" for t in tasks[:10])
            return f"{text} You have: {listing}."
        return text + " Say “show my tasks” to see them."

    def _date(self, text: str) -> tuple[date | None, str]:
        """The date the text names and the text without it; _Unclear for a day that is not."""
        found = find_date(text, self.today)
        if found is None:
            return None, text
        if found.problem:
            raise _Unclear(f"Sorry, {found.problem}.")
        return found.day, _cut(text, found.start, found.end)

    # Everything else ----------------------------------------------------------------------

    def knowledge(self, message: str) -> str:
        if "search_knowledge" not in self.tools.names:
            return (
                "I don't know the answer to that. "
                + (HELP if "add_task" in self.tools.names else "").strip()
            )
        result = self.call("search_knowledge", query=message, k=3)
        text, cited = extractive_answer(message, result.get("results", []), result.get("weights"))
        self.cited = tuple(hit["ref"] for hit in cited if "ref" in hit)
        if not cited and "add_task" in self.tools.names:
            text = f"{text} {HELP}"
        return text


_KNOWLEDGE_HELP = "Ask me a question and I'll answer from the knowledge base, with sources."


def _intent(message: str) -> str | None:
    lowered = message.lower().replace("’", "'")
    taskish = TASKISH.search(lowered) or TASK_NUMBER.search(lowered)
    if QUESTION.match(lowered):
        if taskish and not re.match(r"\s*(how|why)\b(?! many| much)", lowered):
            return "list"
        return None
    if DEED.search(lowered):
        return "deed"
    found = [(m.start(), order, name, m[1]) for order, (name, rx) in enumerate(INTENTS)
             if (m := rx.search(lowered))]  # fmt: skip
    # "make", "set", "move"… are everyday verbs: they change a task only when the message
    # speaks of a task, a date or a priority ("explain how to set up a heap" does not).
    backed = (taskish or PRIORITY.search(lowered) or DATE.search(lowered)
              or SHIFT.search(lowered) or QUOTED.search(lowered))  # fmt: skip
    found = [f for f in found if backed or f[3] not in WEAK_TRIGGERS]
    if found:
        return min(found)[2]
    if DEED_AFTER.search(lowered):
        return "deed"
    if PRIORITY.search(lowered) and taskish:
        return "update"  # "task 3 is urgent"
    if taskish and lowered.rstrip().endswith("?"):
        return "list"
    return None


def _priority(text: str) -> tuple[str | None, str]:
    found = PRIORITY.search(text)
    if found is None:
        return None, text
    return found.lastgroup or "normal", _cut(text, found.start(), found.end())


def _cut(text: str, start: int, end: int) -> str:
    """The text without [start, end), one space where it was."""
    return f"{text[:start].rstrip()} {text[end:].lstrip()}".strip()


def _new_task_texts(message: str, trigger: re.Pattern[str]) -> tuple[list[str], str]:
    text = trigger.sub("", message.strip(), count=1)
    counted = COUNTED.match(text)
    if counted:
        text = text[counted.end() :]
    elif trigger is ADD_TRIGGER:  # "add a task to …"; an implied add keeps its words ("the bins")
        text = ADD_FILLER.sub("", text, count=1)
    title, *rest = WITH_DESCRIPTION.split(text, maxsplit=1)
    description = rest[0].strip().rstrip(".") if rest else ""
    listed = ON_LIST.search(title) is not None
    title = ON_LIST.sub("", title)
    title = _tidy(title)
    pieces = _split_list(title, counted is not None or listed)
    titles = [t for t in (_tidy(p) for p in pieces) if t]
    return titles, description


def _split_list(text: str, likely: bool) -> list[str]:
    """ "milk, eggs and bread" → three; "call mom's dentist and dad's doctor" stays one, unless
    the message said it holds several ("add three tasks: …", "… to my shopping list")."""
    parts = [p.strip() for p in LIST_SEPARATOR.split(text) if p.strip()]
    if len(parts) < 2 and not likely:
        return [text]
    last = LAST_SEPARATOR.split(parts[-1]) if parts else []
    if len(parts) >= 2 or likely:
        parts = parts[:-1] + [p for p in last if p.strip()]
    parts = [re.sub(r"^(?:and|&|plus|also)\s+", "", p, flags=re.I) for p in parts]
    if len(parts) < 2:
        return [text]
    if len(parts) == 2 and not likely and "," in text and " and " not in text:
        return [text]  # "call Bob, he owes me money": one task with a comma
    verb = parts[0].split()[0].lower() if parts[0].split() else ""
    if (
        verb in _VERBS_SHARED and len(parts[0].split()) > 1
        and all(len(p.split()) <= 2 and p.split()[0].lower() not in _VERBS_SHARED
                for p in parts[1:])
    ):  # fmt: skip
        parts = [parts[0]] + [f"{parts[0].split()[0]} {p}" for p in parts[1:]]
    return parts


def _tidy(text: str) -> str:
    text = re.sub(r"^(?:to|that|about|and)\s+", "", text.strip(), flags=re.I)
    return text.strip().strip(",;:-").strip().rstrip(".!?").strip()


def _without_trigger(message: str, intent: str) -> str:
    """The message without its trigger phrase, so "I called…" or "move…" are no title words."""
    pattern = dict(INTENTS)[intent]
    found = pattern.search(message.lower())
    if found is None:
        return message
    return f"{message[: found.start()]} {message[found.end() :]}"


def _task_reference(message: str) -> TaskRef | None:
    quoted = _quotes(message)
    if quoted:
        return TaskRef(words=quoted[0].strip())
    number = TASK_NUMBER.search(message)
    if number:
        return TaskRef(number=int(number.group(1)))
    words = " ".join(w for w in WORD.findall(message) if w.lower() not in STOPWORDS)
    # A bare number is the task's only when nothing else is said ("delete 3"); in "I finished
    # call 3 clients" it is part of a title.
    number = BARE_NUMBER.fullmatch(words)
    if number:
        return TaskRef(number=int(number.group(1)))
    return TaskRef(words=words) if words else None


def _words(text: str) -> set[str]:
    return {w for w in WORD.findall(text.lower().replace("’", "'")) if w not in STOPWORDS}


def _score(wanted: set[str], title: str) -> int:
    """How many words of a reference name words of the title, inflected or cut short."""
    have = _words(title)
    return sum(1 for word in wanted if any(_alike(word, other) for other in have))


def _alike(a: str, b: str) -> bool:
    """Same word, another form of it ("grocery"/"groceries", "walking"/"walk"), or cut short
    ("appt" is not, "dent" is not: at least three letters and most of the longer word)."""
    if a == b:
        return True
    a, b = a.removesuffix("'s"), b.removesuffix("'s")
    shared = 0
    for x, y in zip(a, b, strict=False):
        if x != y:
            break
        shared += 1
    shorter, longer = min(len(a), len(b)), max(len(a), len(b))
    return (shared == shorter and shared >= 3) or (shared >= 5 and shared >= 0.6 * longer)


def _line(task: dict[str, Any], status: str) -> str:
    extra = []
    if task.get("due_date"):
        extra.append(f"due {task['due_date']}")
    if task.get("priority"):
        extra.append(f"{task['priority']} priority")
    if task["completed"] and status == "all":
        extra.append("done")
    return f"{task['task_id']}. {task['title']}" + (f" ({', '.join(extra)})" if extra else "")


def _say_date(day: date, today: date) -> str:
    if day == today:
        return "today"
    if day == today + timedelta(days=1):
        return "tomorrow"
    return f"{day.strftime('%A')} {day.day} {day.strftime('%B')} {day.year}".replace(
        f" {today.year}", "" if day.year == today.year else f" {day.year}"
    )


def _join(items: list[str]) -> str:
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]


def _quotes(text: str) -> list[str]:
    """The quoted passages of a message, verbatim, in order."""
    return [_unquote(match) for match in QUOTED.finditer(text)]


def _unquote(match: re.Match[str]) -> str:
    return next(group for group in match.groups() if group is not None)


def _strip_quotes(text: str) -> str:
    quoted = QUOTED.fullmatch(text)
    return _unquote(quoted) if quoted else text
