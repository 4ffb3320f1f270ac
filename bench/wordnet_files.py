"""Minimal reader of WordNet's database files (index.POS, data.POS, POS.exc)."""

from __future__ import annotations

from pathlib import Path

POS = {"n": "noun", "v": "verb", "a": "adj", "r": "adv"}
RULES = {
    "n": [
        ("s", ""),
        ("ses", "s"),
        ("xes", "x"),
        ("zes", "z"),
        ("ches", "ch"),
        ("shes", "sh"),
        ("men", "man"),
        ("ies", "y"),
    ],
    "v": [
        ("s", ""),
        ("ies", "y"),
        ("es", "e"),
        ("es", ""),
        ("ed", "e"),
        ("ed", ""),
        ("ing", "e"),
        ("ing", ""),
    ],
    "a": [("er", ""), ("est", ""), ("er", "e"), ("est", "e")],
    "r": [],
}


class WordNet:
    def __init__(self, root: Path):
        self.index = {p: {} for p in POS}
        self.synsets = {p: {} for p in POS}
        self.exc = {p: {} for p in POS}
        for p, name in POS.items():
            for line in (root / f"index.{name}").open(encoding="utf-8"):
                if line.startswith(" "):
                    continue
                f = line.split()
                if len(f) < 4 or not f[2].isdigit():
                    continue
                lemma, n_syn, n_ptr = f[0], int(f[2]), int(f[3])
                offsets = f[4 + n_ptr + 2 :]
                self.index[p][lemma] = [int(o) for o in offsets[:n_syn]]
            for line in (root / f"data.{name}").open(encoding="utf-8"):
                if line.startswith(" "):
                    continue
                f = line.split()
                if len(f) < 5 or not f[0].isdigit():
                    continue
                off, wcnt = int(f[0]), int(f[3], 16)
                words = [f[4 + 2 * i].lower() for i in range(wcnt)]
                self.synsets[p][off] = [w.split("(")[0] for w in words]
            exc = root / f"{name}.exc"
            if exc.exists():
                for line in exc.open(encoding="utf-8"):
                    f = line.split()
                    if len(f) >= 2:
                        self.exc[p].setdefault(f[0], f[1])

    def lemmas(self, word: str, p: str) -> list[str]:
        out = []
        for cand in [word, self.exc[p].get(word)] + [
            word[: -len(s)] + r for s, r in RULES[p] if word.endswith(s)
        ]:
            if cand and cand in self.index[p] and cand not in out:
                out.append(cand)
        return out

    def synonyms(self, word: str, senses: int | None = 1) -> list[str]:
        found = []
        for p in POS:
            for lemma in self.lemmas(word, p):
                for off in self.index[p][lemma][:senses]:
                    for w in self.synsets[p][off]:
                        if w != lemma and w != word and w not in found:
                            found.append(w)
        return found
