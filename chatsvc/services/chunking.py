"""Split a document into passages that follow its structure: Markdown sections, then
paragraphs and sentences within a bounded size, with a small overlap between neighbours.

Every step runs in time linear in the document's size: headings are read without regular
expressions, and the splitter (whose cost grows with the square of the text it is given when
that text has no paragraph or sentence breaks: 160 kB of "_" took 3.9 s) only ever sees pieces
of at most `BLOCK_CHARS`."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from functools import lru_cache

from semantic_text_splitter import MarkdownSplitter

# Characters per passage: filled up to the lower bound, never above the upper one.
CAPACITY = (400, 1000)
OVERLAP = 150
# The longest piece of a section handed to the splitter at once (≈1 ms per kB at worst).
BLOCK_CHARS = 4000
# Characters split between two cooperative pauses (≈30 ms of work at worst; see pause()).
PAUSE_CHARS = 64 * 1024
# Caps on what every passage of a section repeats in search results and citations.
MAX_HEADING_CHARS = 200  # one heading's name
MAX_SECTION_CHARS = 300  # the whole path, title included
# Headings read per document; later heading lines are text of the last section. Each section
# ends in a passage of its own, however short: 2 MiB of "# h" lines made 89 000 rows.
MAX_SECTIONS = 2000
SEPARATOR = " › "
ELLIPSIS = "…"
FENCES = ("```", "~~~")


@dataclass(frozen=True)
class Section:
    """A run of a document under one heading path (e.g. "Configuration › Rate limits")."""

    path: str
    passages: list[str] = field(default_factory=list)


def split(title: str, text: str) -> list[Section]:
    """The document's sections in order, each with its passages; never empty."""
    sections: list[Section] = []
    unpaused = 0
    for path, body in _sections(text):
        passages: list[str] = []
        for block in blocks(body, BLOCK_CHARS):
            passages.extend(_passages(block))
            unpaused += len(block)
            if unpaused >= PAUSE_CHARS:
                pause()
                unpaused = 0
        if passages:
            sections.append(Section(section_path([title, *path]), passages))
    return sections or [Section(section_path([title]), [title])]


def pause() -> None:
    """Let other requests run. Splitting and storing a large document is CPU work that never
    waits; under gunicorn's gevent worker (where `time` is monkey-patched) this switches to
    them, so the worker keeps answering while a 2 MiB document is ingested. The sleep is not 0:
    gevent may resume a zero sleep before its loop has polled for I/O (new connections)."""
    time.sleep(0.001)


def section_path(names: list[str]) -> str:
    """The heading path shown with a passage: each name and the whole capped."""
    kept = [cap(name, MAX_HEADING_CHARS) for name in _dedupe(names)]
    return cap(SEPARATOR.join(kept), MAX_SECTION_CHARS)


def cap(text: str, limit: int) -> str:
    """The text, cut to at most `limit` characters (ending in "…" when cut)."""
    return text if len(text) <= limit else text[: limit - 1].rstrip() + ELLIPSIS


def blocks(text: str, limit: int) -> list[str]:
    """The text in consecutive pieces of at most `limit` characters, each cut at the last
    paragraph break in its second half, else the last line break, else the last space, else
    at the limit. Each cut scans at most `limit` characters and advances by at least half of
    it, so the whole is linear."""
    pieces: list[str] = []
    start = 0
    while len(text) - start > limit:
        end = start + limit
        low = start + limit // 2
        for mark in ("\n\n", "\n", " "):
            cut = text.rfind(mark, low, end)
            if cut > 0:
                end = cut + len(mark)
                break
        pieces.append(text[start:end])
        start = end
    pieces.append(text[start:])
    return [piece for piece in pieces if piece.strip()]


def _passages(block: str) -> list[str]:
    """The block's passages. A "word" longer than a passage (no space in over 1000 characters)
    is cut at the limit instead: the splitter then falls back to characters and slows down with
    the square of what surrounds it (a 1065-character word after 2932 tabs: 0.7 s)."""
    limit = CAPACITY[1]
    if max(map(len, block.split()), default=0) <= limit:
        return _splitter().chunks(block)
    pieces = (block[start : start + limit].strip() for start in range(0, len(block), limit))
    return [piece for piece in pieces if piece]


@lru_cache(maxsize=1)
def _splitter() -> MarkdownSplitter:
    return MarkdownSplitter(CAPACITY, overlap=OVERLAP)


def _sections(text: str) -> list[tuple[list[str], str]]:
    """(heading path, body) for each run of text between headings; fenced code is not scanned
    for headings, nor anything after the first `MAX_SECTIONS` headings. Trailing whitespace and
    repeated blank lines are dropped."""
    sections: list[tuple[list[str], str]] = []
    path: list[tuple[int, str]] = []
    lines: list[str] = []
    fenced = False

    def close() -> None:
        body = "\n".join(lines).strip()
        if body:
            sections.append(([name for _, name in path], body))
        lines.clear()

    headings = 0
    for line in text.splitlines():
        line = line.rstrip()
        if not line and not (lines and lines[-1]):
            # One blank line says all that many do; the splitter is quadratic in a trailing
            # run of them (4000 newlines after a word took 0.6 s).
            continue
        if line.lstrip().startswith(FENCES):
            fenced = not fenced
        heading = None if fenced or headings == MAX_SECTIONS else _heading(line)
        if heading is None:
            lines.append(line)
            continue
        headings += 1
        close()
        level, name = heading
        path = [(lvl, known) for lvl, known in path if lvl < level] + [(level, name)]
    close()
    return sections


def _heading(line: str) -> tuple[int, str] | None:
    """(level, name) of an ATX heading line ("## Name ##"), else None."""
    if not line.startswith("#"):
        return None
    rest = line.lstrip("#")
    level = len(line) - len(rest)
    if level > 6 or not rest.startswith((" ", "\t")):
        return None
    name = rest.strip(" \t").rstrip(" \t#")
    return (level, cap(name, MAX_HEADING_CHARS)) if name else None


def _dedupe(names: list[str]) -> list[str]:
    """A document titled like its first heading need not say it twice."""
    kept: list[str] = []
    for name in names:
        if not kept or kept[-1].casefold() != name.casefold():
            kept.append(name)
    return kept
