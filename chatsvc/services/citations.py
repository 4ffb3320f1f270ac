"""A turn's citations, numbered in one place: every passage a citing tool returns gets a `ref`
(unique in the turn) that an answer cites as "[n]"; the answer's sources follow from it."""

from __future__ import annotations

import re
from typing import Any

CITATION = re.compile(r"\[(\d{1,4}(?:[ \t]{0,4},[ \t]{0,4}\d{1,4}){0,31})\]")
SOURCE_FIELDS = ("document_id", "title", "url", "chunk_id", "snippet", "score")
MAX_SOURCES = 10  # citations in one answer (a turn may be shown 5 rounds × 10 passages)


class Citations:
    def __init__(self) -> None:
        self.passages: list[dict[str, Any]] = []  # in the order first seen, each with its `ref`
        self._refs: dict[str, int] = {}

    def number(self, results: list[dict[str, Any]]) -> None:
        """Give each passage of a tool's result its ref (in place: the model sees it)."""
        for hit in results:
            ref = self._refs.get(hit["chunk_id"])
            if ref is None:
                ref = self._refs[hit["chunk_id"]] = len(self.passages) + 1
                self.passages.append({**hit, "ref": ref})
            hit["ref"] = ref

    def sources(self, answer: str, cited: tuple[int, ...] | None = None) -> list[dict[str, Any]]:
        """The contract's `sources` of an answer: the passages it cites, in the order cited —
        the refs the agent named (`cited`), else the answer's "[n]" marks; an answer that marks
        none (a model that forgot to) is grounded on every passage it was shown."""
        by_ref = {hit["ref"]: hit for hit in self.passages}
        if cited is None:
            marked = [int(n) for group in CITATION.findall(answer) for n in group.split(",")]
            chosen = _unique(ref for ref in marked if ref in by_ref) or list(by_ref)
        else:
            chosen = _unique(ref for ref in cited if ref in by_ref)
        return [
            {name: by_ref[ref].get(name) for name in SOURCE_FIELDS} for ref in chosen[:MAX_SOURCES]
        ]


def _unique(refs: Any) -> list[int]:
    seen: list[int] = []
    for ref in refs:
        if ref not in seen:
            seen.append(ref)
    return seen
