"""P7's chatsvc alone at one C beyond its capacity (issue 22: 2,000 streams offered): the
admitted streams' gap and TTFD, the turns refused, the server's CPU per delta, and what the
workers counted in /metrics (refusals by reason).

    python -m bench.refusals [--concurrency 2000] [--seconds 15] [--runs 1]

Production settings on two gevent workers (BENCH_WORKERS), SQLite (or BENCH_DATABASE_URL), the
P7 fake model (100 tokens 50 ms apart). The load clients honour Retry-After up to
BENCH_RETRY_CAP_S (bench/streams.py). One JSON line per run.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
from datetime import timedelta
from functools import partial

from chatsvc.auth import create_token

from . import harness, streams
from .__main__ import (
    BENCH_SECRET,
    P7_FIRST_TOKEN_MS,
    P7_INTERVAL_MS,
    P7_TOKENS,
    P7_USER,
    Bench,
    _read_cpu,
    _wait_quiet,
)


def refused(port: int) -> dict[str, float]:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    connection.request("GET", "/metrics")
    text = connection.getresponse().read().decode()
    connection.close()
    counts = {}
    for line in text.splitlines():
        if line.startswith("chatsvc_turns_refused_total{"):
            reason = line.split('reason="', 1)[1].split('"', 1)[0]
            counts[reason] = float(line.rsplit(" ", 1)[1])
    return counts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--concurrency", type=int, default=2000)
    parser.add_argument("--seconds", type=float, default=15.0, help="the steady window")
    parser.add_argument("--runs", type=int, default=1)
    args = parser.parse_args()
    bench = Bench(quick=False)
    try:
        llm = harness.start_fake_llm(0, P7_FIRST_TOKEN_MS, P7_TOKENS, P7_INTERVAL_MS)
        bench.started.append(llm)
        token = create_token(P7_USER, secret=BENCH_SECRET, ttl=timedelta(hours=3))
        svc = bench.chatsvc(llm, JWT_SECRET=BENCH_SECRET)
        run = partial(streams.measure, "chatsvc", svc.port, tokens=P7_TOKENS, token=token,
                      user=P7_USER, ramp_s=P7_TOKENS * P7_INTERVAL_MS / 1000)  # fmt: skip
        run(20, steady_s=1.0)  # a booting worker's first turns are slow
        _wait_quiet(svc)
        for _ in range(args.runs):
            before = refused(svc.port)
            cpu: dict = {}
            tally = run(args.concurrency, steady_s=args.seconds,
                        at_window=partial(_read_cpu, cpu, svc, llm))  # fmt: skip
            figures = streams.summary(tally)
            figures["server_us_per_delta"] = round(
                (cpu["end"][0] - cpu["start"][0]) * 1e6 / max(1, tally.window_deltas), 1
            )
            after = refused(svc.port)
            figures["refused_by_reason"] = {k: after[k] - before.get(k, 0) for k in after}
            figures["retry_cap_s"] = streams.RETRY_CAP_S
            figures["load"] = os.getloadavg()
            print(json.dumps(figures), flush=True)
            _wait_quiet(svc)
    finally:
        bench.stop_all()


if __name__ == "__main__":
    main()
