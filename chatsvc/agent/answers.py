"""Extractive answers for the offline agent: the sentences of the retrieved passages that best
support the question, each cited as [n]; "I don't know" when nothing relevant came back."""

from __future__ import annotations

import math
import re
from collections import Counter
from dataclasses import dataclass
from typing import Any

from ..text import STOPWORDS, TERM

DONT_KNOW = "I don't know: I found nothing about that in the knowledge base."
MAX_SENTENCES = 3
MAX_CHARS = 700
SUFFIXES = ("ations", "ation", "ings", "ing", "ies", "ied", "es", "ed", "ly", "e", "s")
SENTENCE_END = re.compile(r"(?<=[.!?])(?<!e\.g\.)(?<!i\.e\.)\s+(?=[A-Z0-9`\"'(*_\[])")
TABLE_RULE = re.compile(r"^\|?\s*:?-{2,}")
LIST_MARK = re.compile(r"^([-*+]|\d+[.)])\s+")


@dataclass(frozen=True)
class _Sentence:
    hit: int  # index of the passage it comes from
    position: int
    text: str
    stems: frozenset[str]


def stem(word: str) -> str:
    """A crude English stem: enough to match "limits" with "limit", "configuring" with
    "configure"."""
    for suffix in SUFFIXES:
        if word.endswith(suffix) and len(word) - len(suffix) >= 3:
            return word[: -len(suffix)]
    return word


# How people frame a question ("how long do … last", "what happens when …"): words that say what
# kind of answer is wanted, not what it is about. They are left out of what a passage must match
# unless nothing else is left.
FRAMING = frozenset(
    stem(word)
    for word in """long last lasts much many often take takes happen happens work works mean
    means tell know explain best way exactly actually really anything something need get use
    make does did can could would should there thing things before after usually normally
    typically kind sort supposed""".split()  # noqa: SIM905
)


def stems(text: str) -> frozenset[str]:
    return frozenset(stem(w) for w in TERM.findall(text.casefold()) if w not in STOPWORDS)


def extractive_answer(
    question: str, hits: list[dict[str, Any]]
) -> tuple[str, list[dict[str, Any]]]:
    """(answer, sources): sources are the hits cited, in the order the answer cites them."""
    wanted = stems(question)
    framed = frozenset(term for term in wanted if term not in FRAMING)
    wanted = framed or wanted
    if not wanted:
        return DONT_KNOW, []
    needed = max(1, math.ceil(len(wanted) / 2))
    relevant = [
        n for n, hit in enumerate(hits)
        if len(wanted & stems(f"{hit.get('title', '')} {hit.get('snippet', '')}")) >= needed
    ]  # fmt: skip
    sentences = [s for n in relevant for s in _sentences(n, hits[n]["snippet"])]
    weights = _weights(wanted, sentences)
    # A sentence under a heading that names the question's subject counts that heading too.
    sections = [stems(hit.get("section", "")) & wanted for hit in hits]
    scored = sorted(
        ((sum(weights[t] for t in (s.stems | sections[s.hit]) & wanted), s) for s in sentences),
        key=lambda pair: (-pair[0], pair[1].hit, pair[1].position),
    )
    best = scored[0][0] if scored else 0
    chosen: list[_Sentence] = []
    for score, sentence in scored:
        if score <= 0 or score < best / 2 or len(chosen) == MAX_SENTENCES:
            break
        if sum(len(s.text) for s in chosen) + len(sentence.text) > MAX_CHARS and chosen:
            continue
        chosen.append(sentence)
    if not chosen:
        return DONT_KNOW, []
    chosen.sort(key=lambda s: (s.hit, s.position))
    order: list[int] = []
    parts: list[str] = []
    for sentence in chosen:
        if sentence.hit not in order:
            order.append(sentence.hit)
        # The passage's own number in the turn (`ref`, given by the toolbox), as any model cites.
        ref = hits[sentence.hit].get("ref", order.index(sentence.hit) + 1)
        parts.append(f"{sentence.text} [{ref}]")
    return " ".join(parts), [hits[n] for n in order]


def _weights(wanted: frozenset[str], sentences: list[_Sentence]) -> dict[str, float]:
    """Rarer question words count more (an inverse frequency over the candidate sentences)."""
    total = len(sentences) or 1
    counts = Counter(term for s in sentences for term in s.stems & wanted)
    return {term: 1.0 + math.log(total / (1 + counts[term]) + 1) for term in wanted}


def _sentences(hit: int, passage: str) -> list[_Sentence]:
    found: list[_Sentence] = []
    for block in _blocks(passage):
        for text in SENTENCE_END.split(block):
            text = text.strip()
            if len(text) >= 12:
                found.append(_Sentence(hit, len(found), text, stems(text)))
    return found


def _blocks(passage: str) -> list[str]:
    """Paragraphs, list items and table rows as plain lines of text; code fences dropped."""
    blocks: list[str] = []
    paragraph: list[str] = []
    fenced = False

    def close() -> None:
        if paragraph:
            blocks.append(" ".join(paragraph))
            paragraph.clear()

    for line in passage.splitlines():
        stripped = line.strip()
        if stripped.startswith(("```", "~~~")):
            close()
            fenced = not fenced
            continue
        if fenced or TABLE_RULE.match(stripped):
            continue
        if not stripped or stripped.startswith("#"):
            close()
        elif stripped.startswith("|"):
            close()
            cells = [c.strip() for c in stripped.strip("|").split("|") if c.strip()]
            blocks.append(" — ".join(cells))
        elif mark := LIST_MARK.match(stripped):
            close()
            paragraph.append(stripped[mark.end() :])
        else:
            paragraph.append(stripped)
    close()
    return blocks
