"""Split a document into passages that follow its structure: Markdown sections, then
paragraphs and sentences within a bounded size, with a small overlap between neighbours."""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import lru_cache

from semantic_text_splitter import MarkdownSplitter

# Characters per passage: filled up to the lower bound, never above the upper one.
CAPACITY = (400, 1000)
OVERLAP = 150
HEADING = re.compile(r"^(#{1,6})[ \t]+(.+?)[ \t#]*$")
FENCE = re.compile(r"^\s*(```|~~~)")


@dataclass(frozen=True)
class Passage:
    heading: str  # the section path, e.g. "Configuration › Rate limits"
    text: str


@lru_cache(maxsize=1)
def _splitter() -> MarkdownSplitter:
    return MarkdownSplitter(CAPACITY, overlap=OVERLAP)


def split(title: str, text: str) -> list[Passage]:
    """The document's passages in order; each carries the headings it sits under."""
    passages: list[Passage] = []
    for path, body in _sections(text):
        heading = " › ".join(_dedupe([title, *path]))
        passages.extend(Passage(heading, piece) for piece in _splitter().chunks(body))
    return passages or [Passage(title, title)]


def _sections(text: str) -> list[tuple[list[str], str]]:
    """(heading path, body) for each run of text between headings; fenced code is not scanned
    for headings."""
    sections: list[tuple[list[str], str]] = []
    path: list[tuple[int, str]] = []
    lines: list[str] = []
    fenced = False

    def close() -> None:
        body = "\n".join(lines).strip()
        if body:
            sections.append(([name for _, name in path], body))
        lines.clear()

    for line in text.splitlines():
        if FENCE.match(line):
            fenced = not fenced
        match = None if fenced else HEADING.match(line)
        if match is None:
            lines.append(line)
            continue
        close()
        level = len(match.group(1))
        path = [(lvl, name) for lvl, name in path if lvl < level] + [(level, match.group(2))]
    close()
    return sections


def _dedupe(names: list[str]) -> list[str]:
    """A document titled like its first heading need not say it twice."""
    kept: list[str] = []
    for name in names:
        if not kept or kept[-1].casefold() != name.casefold():
            kept.append(name)
    return kept
