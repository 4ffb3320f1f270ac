"""The words of a user's search: runs of letters and digits. Quotes, `*`, `:`, parentheses and
the bare operators of FTS5 and websearch (AND, OR, NOT, NEAR) are not words, so no search text
is ever read as full-text query syntax by either database."""

from __future__ import annotations

import re

WORD = re.compile(r"[^\W_]+")
OPERATORS = frozenset({"AND", "OR", "NOT", "NEAR"})
MAX_WORDS = 16
MAX_WORD_CHARS = 64


def words(text: str) -> list[str]:
    """The distinct words of `text`, lower-cased, at most MAX_WORDS of them."""
    found: list[str] = []
    for raw in WORD.findall(text):
        word = raw.lower()
        if raw not in OPERATORS and len(word) <= MAX_WORD_CHARS and word not in found:
            found.append(word)
    return found[:MAX_WORDS]
