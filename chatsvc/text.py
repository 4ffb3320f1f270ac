"""Words in user text, shared by search (services) and the offline agent: depends on nothing."""

from __future__ import annotations

import re

# Words that say nothing about what a question is about; FTS5 has no stop list of its own.
_STOP = (
    "a an the and or not no nor but if then else of to in on at by for with from into onto about "
    "as is are was were be been being am do does did done doing have has had having can could "
    "shall should will would may might must i me my mine we us our you your he him his she her it "
    "its they them their this that these those there here what which who whom whose when where "
    "why how all any each some such than too very so just also only own same other again more "
    "most near"
)
STOPWORDS = frozenset(_STOP.split())
TERM = re.compile(r"[^\W_]+")
LETTERS_OR_DIGITS = re.compile(r"[^\W\d_]+|\d+")  # "sha256" → "sha", "256"
SUFFIXES = ("ations", "ation", "ings", "ing", "ies", "ied", "es", "ed", "ly", "e", "s")


def stem(word: str) -> str:
    """A crude English stem: enough to match "limits" with "limit", "configuring" with
    "configure"."""
    for suffix in SUFFIXES:
        if word.endswith(suffix) and len(word) - len(suffix) >= 3:
            return word[: -len(suffix)]
    return word


def stems(text: str) -> frozenset[str]:
    """The stems of the words of a text, stop words left out."""
    return frozenset(stem(w) for w in TERM.findall(text.casefold()) if w not in STOPWORDS)
