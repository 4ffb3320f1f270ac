"""`make fuzz`: Hypothesis searches for text that makes the chunker or the local agent's parser
slow, and reports the worst time per kB it found (contract §1, "Bounded work": < 50 ms/kB).

    python -m bench.fuzz [--minutes 10] [--max-ms-per-kb 50] [--max-chars N] [--out DIR]

Inputs are built from runs of short units repeated many times (a run of `#`, of spaces, of
unclosed quotes…) between Markdown-ish pieces, up to the service's limits: 2 MiB documents,
MAX_MESSAGE_CHARS messages. Superlinear code shows as a cost per kB that grows with the size,
which Hypothesis is asked to maximise (`target`). Half the time goes to each target; the
chunker gets inputs of up to 8 kB and up to 2 MiB. Each target's worst input is written to
--out. Exits 1 when the worst input exceeds the bound.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from hypothesis import HealthCheck, given, settings, target
from hypothesis import strategies as st

from chatsvc.agent.base import Turn
from chatsvc.agent.local import LocalAgent
from chatsvc.config import Config
from chatsvc.services import chunking
from chatsvc.services.toolbox import Tool, ToolBox, knowledge_tools, task_tools

DOCUMENT_CHARS = Config.MAX_DOCUMENT_BYTES
MESSAGE_CHARS = Config.MAX_MESSAGE_CHARS
MARKUP = "#*_[]()`~>-|!:.?,'\"“”‘’«»\\<>=+ \t\n"
WORDS = [
    "add", "create", "remind me to", "rename", "change", "to", "into", "as", "with description",
    "with the note:", "task", "number", "no.", "#", "delete", "done", "complete", "list", "show",
    "my tasks", "pending", "what", "how", "hello", "e.g.", "i.e.", "1.", "- ", "| a |", "```",
    "~~~", "# h", "## h", "###### h", "\n\n", "\n", " ", "\t", "“", "”", "‘", "’", "'", '"',
]  # fmt: skip
EXAMPLES_PER_ROUND = 50


@dataclass
class Worst:
    ms_per_kb: float = 0.0
    size: int = 0
    sample: str = ""
    examples: int = 0
    text: str = ""  # the worst input itself, written out to be replayed

    def record(self, text: str, work: Callable[[], object]) -> float:
        """Time `work` on `text`; a new worst is timed twice more and the fastest run counts,
        since a shared machine's noise only ever adds time."""
        self.examples += 1
        kb = max(1.0, len(text.encode()) / 1024)
        ms_per_kb = _seconds(work) * 1e3 / kb
        if ms_per_kb > self.ms_per_kb:
            ms_per_kb = min(ms_per_kb, *(_seconds(work) * 1e3 / kb for _ in range(2)))
        if ms_per_kb > self.ms_per_kb:
            self.ms_per_kb, self.size, self.sample = ms_per_kb, len(text), _describe(text)
            self.text = text
        return ms_per_kb


def _seconds(work: Callable[[], object]) -> float:
    started = time.perf_counter()
    work()
    return time.perf_counter() - started


def _describe(text: str) -> str:
    """A short, readable picture of an input: its first runs."""
    runs: list[str] = []
    position = 0
    while position < len(text) and len(runs) < 6:
        end = position
        while end < len(text) and text[end] == text[position]:
            end += 1
        runs.append(f"{text[position]!r}×{end - position}" if end - position > 3 else "")
        if end - position <= 3:
            runs[-1] = repr(text[position:end])
        position = end
    return " ".join(runs) + (" …" if position < len(text) else "")


def texts(limit: int, vocabulary: list[str]) -> st.SearchStrategy[str]:
    """Pieces of markup and words, each repeated up to thousands of times, cut at `limit`."""
    unit = st.one_of(
        st.sampled_from(vocabulary),
        st.text(alphabet=MARKUP + "aZ1é", min_size=1, max_size=6),
    )
    run = st.tuples(unit, st.integers(min_value=1, max_value=limit))
    return st.lists(run, min_size=1, max_size=8).map(
        lambda runs: "".join(piece * min(count, limit // len(piece) + 1) for piece, count in runs)[
            :limit
        ]
    )


class _NoDatabase:
    """The toolbox's unit of work, with nothing behind it: the fake tools need no session."""

    @contextmanager
    def transaction(self) -> Iterator[None]:
        yield None


def _fake_box() -> Callable[[str], ToolBox]:
    """A ToolBox whose task and search tools answer without a database, so only the agent's
    own parsing and answering is timed."""
    real = {tool.name: tool for tool in task_tools("fuzz") + knowledge_tools()}
    tasks = [{"task_id": n, "title": f"buy milk {n}", "completed": n % 2 == 0} for n in (1, 2, 3)]

    def answer(name: str, hits: list[dict]) -> Callable:
        def handler(session, args):
            if name == "list_tasks":
                return {"tasks": tasks}
            if name == "search_knowledge":
                return {"query": args["query"], "results": hits}
            return {"task_id": args.get("task_id", 1), "status": "ok", "title": "buy milk"}

        return handler

    def box(passage: str) -> ToolBox:
        hits = [
            {"document_id": "d", "title": "T", "url": None, "chunk_id": f"d:{n}",
             "snippet": passage[n * 1000 : (n + 1) * 1000], "score": 1.0, "section": passage[:300]}
            for n in range(3)
        ]  # fmt: skip
        tools = [
            Tool(t.name, t.description, t.parameters, t.arguments, answer(t.name, hits), t.cites)
            for t in real.values()
        ]
        return ToolBox(_NoDatabase(), tools)  # type: ignore[arg-type]

    return box


def fuzz_chunker(worst: Worst, max_chars: int = DOCUMENT_CHARS) -> None:
    # Small inputs too: many more of them fit in the time, and the splitter's slow cases show
    # within a single 4 kB piece.
    @settings(**SETTINGS)
    @given(st.one_of(texts(min(max_chars, 8000), WORDS), texts(max_chars, WORDS)))
    def run(text: str) -> None:
        target(worst.record(text, lambda: chunking.split("fuzz", text)), label="ms per kB")

    run()


def fuzz_agent(worst: Worst) -> None:
    box = _fake_box()
    agent = LocalAgent()

    @settings(**SETTINGS)
    @given(texts(MESSAGE_CHARS, WORDS), texts(3000, WORDS), st.booleans())
    def run(message: str, passage: str, user: bool) -> None:
        message = message.strip() or "x"
        turn = Turn(user_id="fuzz" if user else None, conversation_id="c", message=message)

        def answer() -> list:
            return list(agent.stream(turn, box(passage)))

        # Per kB of what the agent reads: the message and the passages it retrieved.
        target(worst.record(message + passage, answer), label="ms per kB")

    run()


SETTINGS = {
    "max_examples": EXAMPLES_PER_ROUND,
    "deadline": None,
    "database": None,
    "suppress_health_check": list(HealthCheck),
}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--max-ms-per-kb", type=float, default=50.0)
    parser.add_argument("--max-chars", type=int, default=DOCUMENT_CHARS, help="chunker inputs")
    parser.add_argument("--out", default=tempfile.gettempdir(), help="where worst inputs go")
    args = parser.parse_args()
    results = {"chunker (chunking.split)": Worst(), "local agent (parse + answer)": Worst()}
    runs = (lambda w: fuzz_chunker(w, args.max_chars), fuzz_agent)
    for (name, worst), fuzz, label in zip(results.items(), runs, ("chunker", "agent"), strict=True):
        ends = time.monotonic() + args.minutes * 30
        while time.monotonic() < ends:
            fuzz(worst)
        saved = Path(args.out) / f"chatsvc-fuzz-worst-{label}.txt"
        saved.write_text(worst.text)
        print(f"{name}: {worst.examples} inputs, worst {worst.ms_per_kb:.2f} ms/kB "
              f"({worst.size} chars: {worst.sample}; saved in {saved})", flush=True)  # fmt: skip
    missed = [name for name, worst in results.items() if worst.ms_per_kb > args.max_ms_per_kb]
    for name in missed:
        print(f"MISSED: {name} above {args.max_ms_per_kb} ms/kB")
    if not missed:
        print(f"met: every input under {args.max_ms_per_kb} ms/kB")
    return 1 if missed else 0


if __name__ == "__main__":
    sys.exit(main())
