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
