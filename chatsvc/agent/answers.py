"""Extractive answers for the offline agent: the sentences of the retrieved passages that best
support the question, each cited as [n]; "I don't know" when nothing relevant came back."""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ..text import stem, stems

DONT_KNOW = "I don't know: I found nothing about that in the knowledge base."
MAX_SENTENCES = 3
MIN_COVERAGE = 0.75  # see _weighed; measured with bench/knowledge.py
MAX_CHARS = 700
SENTENCE_END = re.compile(r"(?<=[.!?])(?<!e\.g\.)(?<!i\.e\.)\s+(?=[A-Z0-9`\"'(*_\[])")
TABLE_RULE = re.compile(r"^\|?\s*:?-{2,}")
LIST_MARK = re.compile(r"^([-*+]|\d+[.)])\s+")


@dataclass(frozen=True)
class _Sentence:
    hit: int  # index of the passage it comes from
    position: int
    text: str
    stems: frozenset[str]


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


def extractive_answer(
    question: str, hits: list[dict[str, Any]], weights: dict[str, float] | None = None
) -> tuple[str, list[dict[str, Any]]]:
    """(answer, sources): sources are the hits cited, in the order the answer cites them.
    `weights` (the search's inverse document frequency of each query word) make the check of
    whether a passage answers at all weigh rare words over common ones."""
    wanted = stems(question)
    framed = frozenset(term for term in wanted if term not in FRAMING)
    wanted = framed or wanted
    if not wanted:
        return DONT_KNOW, []
    if weights and not any(map(_weighed(wanted, weights), hits)):
        return DONT_KNOW, []
    relevant = [n for n, hit in enumerate(hits) if _counted(wanted)(hit)]
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


def _counted(wanted: frozenset[str]) -> Callable[[dict[str, Any]], bool]:
    """A passage supports the answer when it holds half the question's words, or more."""
    needed = max(1, math.ceil(len(wanted) / 2))
    return lambda hit: len(wanted & _held(hit)) >= needed


def _weighed(wanted: frozenset[str], weights: dict[str, float]) -> Callable[[dict[str, Any]], bool]:
    """Whether the knowledge base answers at all: one passage must hold MIN_COVERAGE of the
    question's words, each weighed by its rarity in the documents (the others then only need
    half the words, so that two passages may answer two halves of a question). Half the words
    by count alone was met by chance at 100k passages: a wrong document cited for a third of
    paraphrased questions (issue 21; bench/knowledge.py). A word no passage holds weighs
    nothing: in a small knowledge base most words are absent, and absence says little."""
    weight: dict[str, float] = {}
    for word, value in weights.items():
        weight[stem(word)] = max(weight.get(stem(word), 0.0), value)
    top = max(weight.values(), default=1.0)
    total = sum(weight.get(term, top) for term in wanted)
    if total <= 0:  # every word is everywhere (or nowhere): weighing tells nothing
        return _counted(wanted)
    return lambda hit: (
        sum(weight.get(term, top) for term in wanted & _held(hit)) >= MIN_COVERAGE * total
    )


def _held(hit: dict[str, Any]) -> frozenset[str]:
    return stems(f"{hit.get('title', '')} {hit.get('section', '')} {hit.get('snippet', '')}")


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
