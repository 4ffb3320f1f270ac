"""EXPERIMENT (issue 21, helper kbpara2): a thesaurus built from the corpus itself, by the
co-occurrence of words within passages, written to a JSON file that knowledge.find's
EXPAND="assoc" knob reads (THESAURUS_FILE). One pass over the passages, bounded:

- words: letters only, 3..64 characters, not stop words; vocabulary: words held by at least
  MIN_DF passages and at most MAX_DF (a word in a tenth of the corpus says little);
- each passage contributes its PER_PASSAGE rarest vocabulary words (idf order), so a passage
  counts at most PER_PASSAGE * (PER_PASSAGE - 1) / 2 pairs: linear in the passages;
- association of a and b: cosine of their passage sets, n(a, b) / sqrt(df(a) df(b)), with
  n(a, b) >= MIN_PAIR; each word keeps its KEEP best associates.

    THESAURUS=MIN_DF,MAX_DF_FRACTION,PER_PASSAGE,MIN_PAIR,KEEP python -m bench.kbthesaurus SQLITE_FILE OUT.json

then THESAURUS_FILE=OUT.json python -m bench.kbpara_variants URL "EXPAND=assoc,EXPANSION_WEIGHT=0.3"
"""

import json
import math
import os
import sqlite3
import sys
import time

from chatsvc.services.knowledge import _words
from chatsvc.text import STOPWORDS

MIN_DF, MAX_DF_FRACTION, PER_PASSAGE, MIN_PAIR, KEEP = (
    int(v) if v.isdigit() else float(v)
    for v in os.environ.get("THESAURUS", "3,0.1,20,3,12").split(",")
)


def main(path: str, out: str) -> None:
    started = time.process_time()
    db = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    rows = db.execute(
        "SELECT s.path || ' ' || c.text FROM chunks c JOIN sections s ON s.id = c.section_id"
    )
    passages: list[list[str]] = []
    df: dict[str, int] = {}
    seen: set[int] = set()
    for (body,) in rows:
        held = {
            w
            for w in _words(body.casefold())
            if w.isalpha() and 3 <= len(w) <= 64 and w not in STOPWORDS
        }
        key = hash(frozenset(held))
        if key in seen:  # a text repeated across documents (boilerplate) counts once
            continue
        seen.add(key)
        passages.append(list(held))
        for w in held:
            df[w] = df.get(w, 0) + 1
    total = len(passages)
    top = MAX_DF_FRACTION * total
    vocab = sorted(w for w, n in df.items() if MIN_DF <= n <= top)
    index = {w: n for n, w in enumerate(vocab)}
    size = len(vocab)
    print(f"{total} passages, {len(df)} words, vocabulary {size}", flush=True)
    pairs: dict[int, int] = {}
    for held in passages:
        ids = sorted((index[w] for w in held if w in index), key=lambda i: df[vocab[i]])
        ids = sorted(ids[:PER_PASSAGE])
        for x, a in enumerate(ids):
            base = a * size
            for b in ids[x + 1 :]:
                key = base + b
                pairs[key] = pairs.get(key, 0) + 1
    print(f"{len(pairs)} pairs counted, {time.process_time() - started:.1f} s CPU", flush=True)
    best: dict[int, list[tuple[float, int]]] = {}
    for key, n in pairs.items():
        if n < MIN_PAIR:
            continue
        a, b = divmod(key, size)
        cos = n / math.sqrt(df[vocab[a]] * df[vocab[b]])
        best.setdefault(a, []).append((cos, b))
        best.setdefault(b, []).append((cos, a))
    thesaurus = {
        vocab[a]: [[vocab[b], round(c, 4)] for c, b in sorted(found, reverse=True)[:KEEP]]
        for a, found in best.items()
    }
    with open(out, "w") as f:
        json.dump({"passages": total, "df": {w: df[w] for w in thesaurus}, "assoc": thesaurus}, f)
    print(f"{len(thesaurus)} words kept, {time.process_time() - started:.1f} s CPU", flush=True)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
