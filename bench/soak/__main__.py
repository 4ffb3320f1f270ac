"""The chaos soak (issue 23): `python -m bench.soak [--topology single|cluster] [--seconds 300]`.

Topologies (topology.py): `single`, gunicorn with 2 gevent workers; `cluster`, two such
instances behind nginx round robin (bench/cluster.py), the event log and cancels in Redis. Both
reach PostgreSQL through a TCP proxy this process controls, use a redis-server of their own,
and the OpenAI provider pointed at an in-process fake model whose faults are switched at run
time (model.py).

Traffic (clients.py): N users mix JSON and streamed turns (some leave mid-stream; on the
cluster they come back with Last-Event-ID on the turn's events), knowledge sessions and task
REST calls. Every chat POST carries an Idempotency-Key and is retried with the same key after a
5xx, a 409 or a dropped connection (bounded, with backoff).

Faults at random times: SIGKILL a worker (cluster: or a whole instance, restarted), cut the
database proxy, kill Redis (restarted), the model failing (500, 429), stalling past
AGENT_TIMEOUT_SECONDS, or calling add_task and then failing the request that follows. Then
everything heals, `flask sessions cleanup` runs, and the invariants are checked through the API
and the database (verify.py). Counts are printed, the VERDICT line last; the exit status is 1
on FAIL. Every process, the soak's own database and the temporary directory are removed at the
end (the service's logs stay in bench/out/).

The database: SOAK_DATABASE_URL or TEST_DATABASE_URL names a PostgreSQL server; the soak
creates a database of its own there (`soak_<random>`) and drops it afterwards.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import random
import shutil
import signal
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

import requests

from bench.soak.clients import Tally, User
from bench.soak.topology import ALL_FAULTS, FAULTS, Database, Topology, start
from bench.soak.verify import INVARIANTS, cleanup, verify

TURN_STALE_S = 10  # the soaks ran with 10 s; --stale-seconds changes it
CLUSTER_PORT = 22080  # nginx; the instances on the next two ports


def chaos(
    topology: Topology, seconds: float, count: int, only: list[str], tally: Tally, rng, stop
) -> None:  # noqa: ANN001
    """`count` faults at random times within the first 80 % of the run, kinds in turn (every
    kind at least once when count allows), the order shuffled; one at a time (a fault whose
    time comes while another lasts starts after it)."""
    kinds = list(only or FAULTS[topology.name])
    plan = [kinds[i % len(kinds)] for i in range(count)]
    rng.shuffle(plan)
    started = time.monotonic()
    times = sorted(rng.uniform(0.1 * seconds, 0.8 * seconds) for _ in plan)
    for at, fault in zip(times, plan, strict=True):
        if stop.wait(max(0.0, started + at - time.monotonic())):
            return
        print(f"  t={time.monotonic() - started:5.1f}s fault: {fault}", flush=True)
        tally.faults[fault] += 1
        if fault in ("kill_redis", "kill_worker", "kill_instance"):  # see User.log_lost
            with tally.lock:
                tally.events_lost.append((time.monotonic(), fault))
        try:
            topology.fault(fault, rng, stop)
        except Exception as error:  # e.g. an instance that did not come back
            tally.violation("fault_failed", f"{fault}: {error!r}")


def wait_for_pending(topology: Topology, seconds: float) -> None:
    """Until no reply is pending (every turn ended, or was failed as stale by a reader), for
    at most `seconds`: then cleanup fails what a killed worker left, once its lease lapsed."""
    deadline = time.monotonic() + seconds
    with Database.connect(topology.database.url) as db:
        while time.monotonic() < deadline:
            pending = db.execute("SELECT count(*) FROM messages WHERE status = 'pending'")
            if not pending.fetchone()[0]:
                return
            time.sleep(0.5)


def watch_health(base: str, tally: Tally, stop: threading.Event) -> None:
    """/health/live answers 200 throughout (a connection a killed worker dropped is counted,
    not a violation: the kernel had queued it on that worker's socket)."""
    http = requests.Session()
    while not stop.wait(0.5):
        tally.count("health probes")
        try:
            response = http.get(f"{base}/health/live", timeout=5)
        except requests.RequestException:
            tally.count("health probes dropped")
            continue
        if response.status_code != 200:
            tally.violation("health_live", f"/health/live {response.status_code}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.soak", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--topology", choices=sorted(FAULTS), default="single")
    parser.add_argument("--seconds", type=float, default=300)
    parser.add_argument("--users", type=int, default=20)
    parser.add_argument("--faults", type=int, help="how many (default: one per 15 s, >= 4)")
    parser.add_argument(
        "--only", action="append", choices=ALL_FAULTS, help="these fault kinds only"
    )
    parser.add_argument(
        "--fault-scale", type=float, default=1.0,
        help="each fault lasts this share of its full length (cut_db 3-6 s, kill_redis 2-5 s,"
        " model faults 4-8 s, kill_instance 3-6 s; default 1): a short run with every fault",
    )  # fmt: skip
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument(
        "--stale-seconds", type=int, default=TURN_STALE_S, help="the service's TURN_STALE_SECONDS"
    )
    parser.add_argument(
        "--port", type=int, default=CLUSTER_PORT,
        help=f"cluster: nginx's port, the instances on the next two (default {CLUSTER_PORT})",
    )  # fmt: skip
    parser.add_argument(
        "--keep-database", action="store_true",
        help="keep the soak's database afterwards (its name is printed), to look into a failure",
    )  # fmt: skip
    args = parser.parse_args(argv)
    url = os.environ.get("SOAK_DATABASE_URL") or os.environ.get("TEST_DATABASE_URL")
    if not url or not url.startswith("postgresql"):
        print("set SOAK_DATABASE_URL (or TEST_DATABASE_URL) to a PostgreSQL URL", file=sys.stderr)
        return 2
    if not 0 < args.fault_scale <= 1:
        parser.error("--fault-scale must be more than 0 and at most 1")
    wrong = set(args.only or ()) - set(FAULTS[args.topology])
    if wrong:
        parser.error(f"the {args.topology} topology has no fault {', '.join(sorted(wrong))}")
    seed = args.seed if args.seed is not None else random.randrange(1 << 30)
    rng = random.Random(seed)
    faults = args.faults if args.faults is not None else max(4, round(args.seconds / 15))
    run = uuid.uuid4().hex[:6]
    # Ctrl-C even when started with SIGINT ignored (a background job); a SIGTERM (a CI
    # timeout) unwinds the same way, so that everything below is cleaned up
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, lambda signum, frame: signal.default_int_handler(signum, frame))
    tmp = Path(tempfile.mkdtemp(prefix="chatsvc-soak-"))
    tally = Tally()
    started = time.monotonic()
    try:
        topology = start(args.topology, tmp, url, args.stale_seconds, args.port)
        topology.database.keep = args.keep_database
        topology.fault_scale = args.fault_scale
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    phases = {"setup": time.monotonic()}
    stop_event = threading.Event()
    try:
        print(
            f"soak {run} ({args.topology}): {args.users} users, {args.seconds:.0f} s, {faults}"
            f" faults (scale {args.fault_scale:g}), seed {seed}; service {topology.url}, logs "
            + ", ".join(str(log) for log in topology.logs),
            flush=True,
        )
        users = [
            User(i, topology.url, run, topology.env["JWT_SECRET"], tally, stop_event,
                 resumes=args.topology == "cluster")
            for i in range(args.users)
        ]  # fmt: skip
        for user in users:
            user.start()
        chaos_thread = threading.Thread(
            target=chaos,
            args=(topology, args.seconds, faults, args.only or [], tally, rng, stop_event),
            daemon=True,
        )
        chaos_thread.start()
        health = threading.Thread(
            target=watch_health, args=(topology.url, tally, stop_event), daemon=True
        )
        health.start()
        stop_event.wait(args.seconds)
        # every planned fault runs to its end, under traffic: one that started late (the
        # faults before it ran long) stretches the run rather than being dropped
        chaos_thread.join(timeout=120)
        stop_event.set()
        chaos_thread.join(timeout=90)
        # heal: everything back, then let the clients finish their retries
        with topology.lock:
            topology.heal()
        for user in users:
            user.join(timeout=120)
        stuck = [user.name for user in users if user.is_alive()]
        if stuck:
            tally.violation("client_stuck", ", ".join(stuck))
        phases["traffic"] = time.monotonic()
        # turns a killed worker left pending are failed by cleanup once stale
        wait_for_pending(topology, args.stale_seconds + 1)
        phases["stale wait"] = time.monotonic()
        print(f"  cleanup: {cleanup(topology)}", flush=True)
        verify(topology, tally)
        phases["checks"] = time.monotonic()
    finally:
        stop_event.set()
        # a second Ctrl-C must not leave half of it running
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        topology.stop()
        shutil.rmtree(tmp, ignore_errors=True)
        phases["stop"] = time.monotonic()
    for log in topology.logs:
        log_errors(log)
    marks = [("", started), *phases.items()]
    spans = zip(marks, marks[1:], strict=False)
    print("phases: " + ", ".join(f"{name} {b - a:.0f} s" for (_, a), (name, b) in spans))
    return report(tally, time.monotonic() - started, topology.model.calls, topology.name)


def log_errors(log: Path) -> None:
    """What the service logged at level error or above, most frequent first (for diagnosis)."""
    found = collections.Counter()
    for line in log.read_text(errors="replace").splitlines():
        if not line.startswith("{"):
            continue
        try:
            entry = json.loads(line)
        except ValueError:
            continue
        if entry.get("level") in ("error", "critical"):
            first = (str(entry.get("message")).splitlines() or [""])[0]
            found[f"{entry.get('logger')}: {first[:80]}"] += 1
    for message, n in found.most_common(6):
        print(f"service log error x{n} ({log.stem}): {message}")


def report(tally: Tally, elapsed: float, calls: collections.Counter, topology: str) -> int:
    print(f"elapsed: {elapsed:.0f} s")
    for name in sorted(tally.counts):
        print(f"{name}: {tally.counts[name]}")
        for example in tally.examples.get(name, []):
            print(f"    e.g. {example}")
    print("faults: " + ", ".join(f"{kind}={tally.faults[kind]}" for kind in FAULTS[topology]))
    print("model requests: " + ", ".join(f"{mode}={n}" for mode, n in sorted(calls.items())))
    spans = sorted(tally.conflict_spans)
    if spans:
        print(f"keys that met 409: {len(spans)}, longest from first to last 409: {spans[-1]:.1f} s")
    print("statuses: " + ", ".join(f"{s}={n}" for s, n in sorted(tally.statuses.items(), key=str)))
    for name in INVARIANTS:
        print(f"violations {name}: {tally.violations[name]}")
        for example in tally.examples.get(name, []):
            print(f"    e.g. {example}")
    if not tally.ok:
        tally.violation("no_traffic", "no turn succeeded at all")
        print("violations no_traffic: 1")
    failed = sum(tally.violations.values())
    print(f"VERDICT: {'FAIL' if failed else 'PASS'}", flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:  # Ctrl-C or SIGTERM: cleaned up on the way out
        print("VERDICT: INTERRUPTED", flush=True)
        sys.exit(130)
