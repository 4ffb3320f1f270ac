"""`make bench`: chatsvc under gunicorn (production worker class) against a fake LLM, next to a
floor (a bare Flask endpoint under the same settings). Prints a table per scenario and writes
bench/RESULTS.md.

    python -m bench [--only P1,P3] [--quick]

BENCH_DATABASE_URL selects PostgreSQL (its tables are created by migrations if missing);
otherwise a fresh SQLite file is used.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import platform
import resource
import shutil
import statistics
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import timedelta
from functools import partial
from pathlib import Path
from typing import TypeVar

from chatsvc.auth import create_token

from . import harness, resume, seed, streams
from .harness import Service, Settings

T = TypeVar("T")
FLOORS = ("floor", "sdk-floor")  # no database, so no pool to report


@dataclass
class Row:
    scenario: str
    what: str
    requests: int
    rps: float
    p50: float
    p95: float
    p99: float
    errors: int
    rss_mb: float
    pool_max: int | str = "-"
    note: str = ""


@dataclass
class Report:
    rows: list[Row] = field(default_factory=list)
    verdicts: list[str] = field(default_factory=list)
    tables: list[str] = field(default_factory=list)  # scenarios with columns of their own

    def add(self, row: Row) -> None:
        self.rows.append(row)
        print(table([row]), flush=True)

    def table(self, text: str) -> None:
        self.tables.append(text)
        print(text, flush=True)

    def verdict(self, text: str) -> None:
        self.verdicts.append(text)
        print("  → " + text, flush=True)


def table(rows: list[Row]) -> str:
    head = (
        "| scenario | what | requests | req/s | p50 ms | p95 ms | p99 ms | errors "
        "| peak RSS/worker MB | pool max | note |"
    )
    line = "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---|"
    body = [
        f"| {r.scenario} | {r.what} | {r.requests} | {r.rps:.1f} | {r.p50:.1f} | {r.p95:.1f} | "
        f"{r.p99:.1f} | {r.errors} | {r.rss_mb:.0f} | {r.pool_max} | {r.note} |"
        for r in rows
    ]
    return "\n".join([head, line, *body])


def wrk_row(scenario: str, what: str, result: dict, service: Service | None, note: str = "") -> Row:
    rss = max((peak for _, peak in service.rss_mb().values()), default=0.0) if service else 0.0
    pool = pool_high_water(service) if service and service.name not in FLOORS else "-"
    cpu = ", ".join(f"{name} {ms:.2f}" for name, ms in result["cpu_ms"].items())
    note = "; ".join(part for part in (note, f"CPU ms/request: {cpu}") if part)
    return Row(
        scenario, what, result["requests"], result["rps"], result["p50_ms"], result["p95_ms"],
        result["p99_ms"], result["errors"], rss, pool, note,
    )  # fmt: skip


def pool_high_water(service: Service) -> int | str:
    """The database pool's high-water mark, from the service's own /metrics."""
    try:
        with harness.urllib.request.urlopen(service.url + "/metrics", timeout=5) as response:
            text = response.read().decode()
    except OSError:
        return "?"
    values = [
        float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith("chatsvc_db_pool_checked_out_max")
    ]
    return int(max(values)) if values else "?"


class Bench:
    def __init__(self, quick: bool, events: str = "database") -> None:
        self.quick = quick
        self.events = [mode.strip() for mode in events.split(",") if mode.strip()]
        self.report = Report()
        self.workers = int(os.environ.get("BENCH_WORKERS", "2"))
        self.database_url, self.tmp = harness.temporary_sqlite()
        self.database_url = os.environ.get("BENCH_DATABASE_URL", self.database_url)
        self.started: list[Service] = []

    def seconds(self, full: float) -> float:
        return max(3.0, full / 4) if self.quick else full

    def chatsvc(self, llm: Service, name: str = "chatsvc", **extra: str) -> Service:
        env = harness.chatsvc_env(Settings(self.workers, self.database_url, extra), llm, self.tmp)
        harness.migrate(env)
        service = harness.start_chatsvc(env, name)
        self.started.append(service)
        return service

    def llm(
        self, latency_ms: float, first_token_ms: float | None = None, words: int = 0
    ) -> Service:
        service = harness.start_fake_llm(latency_ms, first_token_ms, words)
        self.started.append(service)
        return service

    def stop_all(self) -> None:
        while self.started:
            self.started.pop().stop()

    # Scenarios ------------------------------------------------------------------------------

    def p1_overhead(self) -> None:
        """Turns with a 0 ms model at c=16, next to two floors: the bare endpoint, and the bare
        endpoint making one completion through the `openai` SDK (the most any turn that asks
        the model through the SDK can reach on this machine)."""
        floor = harness.start_floor(self.workers)
        self.started.append(floor)
        base = harness.wrk(floor.url, connections=16, duration_s=self.seconds(10), watch=(floor,))
        self.report.add(wrk_row("P1", "floor: bare Flask, c=16", base, floor))
        llm = self.llm(0)
        sdk_floor = harness.start_floor(self.workers, llm)
        self.started.append(sdk_floor)
        harness.wrk(sdk_floor.url, connections=16, duration_s=2)  # warm-up
        sdk = harness.wrk(
            sdk_floor.url, connections=16, duration_s=self.seconds(10), watch=(sdk_floor, llm)
        )
        sdk_ratio = sdk["rps"] / base["rps"]
        self.report.add(
            wrk_row("P1", "floor + one SDK call, LLM 0 ms, c=16", sdk, sdk_floor,
                    f"{sdk_ratio:.0%} of floor")
        )  # fmt: skip
        sdk_floor.stop()
        svc = self.chatsvc(llm)
        harness.wrk(svc.url, connections=16, duration_s=2)  # warm-up
        result = harness.wrk(svc.url, connections=16, duration_s=self.seconds(10), watch=(svc, llm))
        ratio = result["rps"] / base["rps"]
        note = (
            f"overhead p50 {result['overhead_p50_ms']:.1f} ms, "
            f"p99 {result['overhead_p99_ms']:.1f} ms; {ratio:.0%} of floor, "
            f"{result['rps'] / sdk['rps']:.0%} of floor + SDK call"
        )
        self.report.add(wrk_row("P1", "chatsvc turn, LLM 0 ms, c=16", result, svc, note))
        self.report.verdict(
            f"P1 overhead p50 {result['overhead_p50_ms']:.1f} ms (target ≤ 5), p99 "
            f"{result['overhead_p99_ms']:.1f} ms (≤ 20); throughput {ratio:.0%} of floor (≥ 40%), "
            f"where one SDK call and nothing else reaches {sdk_ratio:.0%}"
        )
        self.stop_all()

    def p2_slow_turns(self) -> None:
        """500 turns in flight in steady state: each connection's first turn starts at its own
        moment within one LLM latency, as independent users' would, and the rate counts the
        whole seconds after the ramp. (Counting every response inside a fixed window instead
        caps any server at 9 of 10 two-second turns per connection, 90 % of ideal: the fake
        alone scores 224/s that way.) The same load on the fake alone is the floor; 500 turns
        arriving in the same instant are their own row."""
        latency_ms, inflight = 2000, 500
        ideal = inflight / (latency_ms / 1000)
        ramp_s = 2 * latency_ms / 1000 + 1  # the staggered starts, a first turn, a margin
        duration_s = max(ramp_s + 6, self.seconds(25))
        load = {"connections": inflight, "timeout_s": 15, "stagger_ms": latency_ms}
        drain_s = latency_ms / 1000 + 1  # turns a finished wrk cut off are done by then
        llm = self.llm(latency_ms)
        alone = harness.wrk(llm.url, duration_s=duration_s, watch=(llm,), **load)
        alone["rps"], seconds = harness.steady_rps(alone, ramp_s)
        note = f"steady rate over {seconds} s; {alone['rps'] / ideal:.0%} of ideal; the floor"
        self.report.add(wrk_row("P2", f"fake LLM alone, {inflight} in flight", alone, None, note))

        svc = self.chatsvc(llm)
        harness.wrk(svc.url, duration_s=3, **load)  # warm-up
        time.sleep(drain_s)
        result = harness.wrk(svc.url, duration_s=duration_s, watch=(svc, llm), **load)
        window_rps = result["rps"]
        result["rps"], seconds = harness.steady_rps(result, ramp_s)
        note = (
            f"steady rate over {seconds} s; {result['rps'] / ideal:.0%} of ideal "
            f"{ideal:.0f}/s, {result['rps'] / alone['rps']:.0%} of the fake alone "
            f"(whole run {window_rps:.0f}/s)"
        )
        self.report.add(
            wrk_row("P2", f"{inflight} in flight, LLM {latency_ms} ms", result, svc, note)
        )

        time.sleep(drain_s)
        burst = harness.wrk(
            svc.url, connections=inflight, duration_s=self.seconds(20), timeout_s=15,
            watch=(svc, llm),
        )  # fmt: skip
        note = "all first turns in the same instant; every response in the run counted"
        self.report.add(wrk_row("P2", f"burst: {inflight} arriving at once", burst, svc, note))
        self.report.verdict(
            f"P2 {result['rps']:.0f} turns/s = {result['rps'] / ideal:.0%} of ideal (≥ 90%), "
            f"errors {result['errors']} (0), p99 {result['p99_ms']:.0f} ms (≤ 2300); the fake "
            f"alone {alone['rps']:.0f}/s, p99 {alone['p99_ms']:.0f} ms; a burst of {inflight} "
            f"at once: p99 {burst['p99_ms']:.0f} ms, errors {burst['errors']}"
        )
        self.stop_all()

    def p3_long_history(self) -> None:
        """Short and long conversations take turns, round after round, so that drift on a
        shared machine falls on both; each figure is the median over the rounds."""
        llm = self.llm(0)
        svc = self.chatsvc(llm)
        conversations = {
            "10 messages": seed.conversation(self.database_url, "bench-short", 10),
            "10 000 messages": seed.conversation(self.database_url, "bench-long", 10_000),
        }
        runs: dict[str, list[dict]] = {label: [] for label in conversations}
        for round_number in range(5):
            for label, (user, conversation) in conversations.items():
                env = {"BENCH_USER": user, "CONVERSATION": conversation}
                if round_number == 0:
                    harness.wrk(svc.url, connections=1, duration_s=1, threads=1, env=env)
                runs[label].append(
                    harness.wrk(
                        svc.url, connections=1, threads=1, duration_s=self.seconds(4), env=env,
                        watch=(svc, llm),
                    )
                )  # fmt: skip
        medians = {label: _median_run(results) for label, results in runs.items()}
        for label, result in medians.items():
            note = f"median of {len(runs[label])} interleaved rounds"
            self.report.add(wrk_row("P3", f"turns on {label}, c=1", result, svc, note))
        ratio = medians["10 000 messages"]["p50_ms"] / medians["10 messages"]["p50_ms"]
        self.report.verdict(f"P3 long/short p50 latency = {ratio:.2f} (target ≤ 1.2)")
        self.stop_all()

    def p4_memory(self) -> None:
        svc = self.chatsvc(self.llm(0))
        harness.wrk(svc.url, connections=16, duration_s=3)
        before = {pid: rss for pid, (rss, _) in svc.rss_mb().items()}
        turns = 2_000 if self.quick else 20_000
        done, result = 0, None
        while done < turns:
            result = harness.wrk(svc.url, connections=16, duration_s=5)
            done += result["requests"]
        after = svc.rss_mb()
        growth = max((after[pid][0] / before[pid] - 1) for pid in before if pid in after)
        note = f"{done} turns; RSS growth {growth:+.1%}"
        self.report.add(wrk_row("P4", "memory over many turns, c=16", result, svc, note))
        peak = max(peak for _, peak in after.values())
        self.report.verdict(
            f"P4 peak RSS/worker {peak:.0f} MB (≤ 150), "
            f"growth {growth:+.1%} over {done} turns (≤ 10%)"
        )
        self.stop_all()

    def p5_streaming(self) -> None:
        """The first delta through chatsvc, next to the fake's own first chunk asked for
        directly (same concurrency), and split per turn by the fake's trace: what chatsvc spent
        before its provider request left, the fake's own time to its first chunk (its timer
        and HTTP add 1-2 ms to the nominal first token; chatsvc cannot remove that), and what
        chatsvc spent from that chunk to the client's `delta`. Once per event-log store asked
        for (`--events`), each with the server's CPU per delta over long answers."""
        first_token_ms, count = 50, 40 if self.quick else 200
        llm = self.llm(200, first_token_ms)
        long = self.llm(0, 0, words=LONG_WORDS)
        alone = _spread(first_chunk_ms(llm, count, concurrency=4))
        self.report.add(
            Row("P5", f"fake LLM alone: first chunk, first token {first_token_ms} ms", count, 0.0,
                *alone, 0, 0.0, note="the floor of this scenario")
        )  # fmt: skip
        first_delta: dict[str, float] = {}
        long_services: dict[str, Service] = {}
        for mode in self.events:
            extra = events_env(mode)
            if extra is None:
                self.report.verdict(f"P5 log {mode}: not measured (set BENCH_REDIS_URL)")
                continue
            svc = self.chatsvc(llm, **extra)
            first_delta[mode] = self._p5_one(svc, llm, mode, first_token_ms, alone, count)
            self._stop(svc)
            long_services[mode] = self.chatsvc(long, name=f"chatsvc-{mode}", **extra)
        # CPU per delta: the stores' servers side by side, measured in interleaved rounds and
        # compared by their medians (one run after another moved ±25 % with the machine).
        rounds, turns = (2, 30) if self.quick else (P5_CPU_ROUNDS, 150)
        for svc in long_services.values():
            cpu_per_delta(svc, 20, concurrency=4)  # warm-up
        cpu_runs: dict[str, list[float]] = {mode: [] for mode in long_services}
        for _ in range(rounds):
            for mode, svc in long_services.items():
                cpu_runs[mode].append(cpu_per_delta(svc, turns, concurrency=4))
        measured: dict[str, tuple[float, float]] = {}
        for mode, svc in long_services.items():
            cpu = statistics.median(cpu_runs[mode])
            spread = ", ".join(f"{run * 1000:.1f}" for run in cpu_runs[mode])
            self.report.verdict(
                f"P5 (log: {mode}) server CPU per delta {cpu * 1000:.1f} µs, median of {rounds} "
                f"interleaved rounds of {turns} turns ({spread}; {LONG_WORDS} deltas a turn, "
                "the turn's own costs included; a Redis server's CPU is not counted)"
            )
            self._stop(svc)
            measured[mode] = (first_delta[mode], cpu)
        base = measured.get("memory")
        for mode, (p95, cpu) in measured.items():
            if base is None or mode == "memory":
                continue
            self.report.verdict(
                f"P5 log {mode} vs memory (no store): first delta p95 {p95 - base[0]:+.1f} ms "
                f"(≤ +5), CPU per delta {cpu / base[1] - 1:+.1%} (≤ +10%)"
            )
        self.stop_all()

    def _stop(self, service: Service) -> None:
        service.stop()
        self.started.remove(service)

    def _p5_one(
        self, svc: Service, llm: Service, mode: str, first_token_ms: int,
        alone: tuple[float, float, float], count: int,
    ) -> float:  # fmt: skip
        turns = first_delta_split(svc, llm, count, concurrency=4)
        p50, p95, worst = _spread([turn.total for turn in turns])
        note = f"+{p50 - alone[0]:.1f} ms p50, +{p95 - alone[1]:.1f} ms p95 over the fake alone"
        self.report.add(
            Row("P5", f"chatsvc (log: {mode}): first delta, first token {first_token_ms} ms",
                count, 0.0, p50, p95, worst, 0, 0.0, note=note)
        )  # fmt: skip
        own = _spread([turn.own for turn in turns])
        before, fake, after = (
            _spread([getattr(turn, part) for turn in turns]) for part in ("before", "fake", "after")
        )
        note = (
            "per turn, first delta − the fake's own first chunk for it; p50/p95: before the "
            f"provider request {before[0]:.1f}/{before[1]:.1f} ms, the fake {fake[0]:.1f}/"
            f"{fake[1]:.1f} ms, its first chunk → delta {after[0]:.1f}/{after[1]:.1f} ms"
        )
        self.report.add(
            Row("P5", f"chatsvc's own part of it (log: {mode})", count, 0.0, *own, 0, 0.0,
                note=note)
        )  # fmt: skip
        self.report.verdict(
            f"P5 (log: {mode}) first delta p95 {p95:.1f} ms = first token + "
            f"{p95 - first_token_ms:.1f} ms (≤ +10); per turn chatsvc's own part p95 "
            f"{own[1]:.1f} ms (≤ 10) around the fake's p95 {fake[1]:.1f} ms; the fake alone "
            f"p95 {alone[1]:.1f} ms"
        )
        return p95

    def p6_openai_facade(self) -> None:
        """The OpenAI-compatible facade next to chatsvc's own route, on one server: the same
        turn (a new conversation of one signed-in user, a 0 ms model, c=16) sent as the `openai`
        SDK sends it to /v1/chat/completions and as POST /api/{user}/chat, in alternating runs
        (P1-style); then, P5-style, a streamed turn's first content chunk on /v1 next to the
        first `delta` event on /api, each split by the fake's trace."""
        token = create_token(BENCH_USER, secret=BENCH_SECRET, ttl=timedelta(hours=3))
        routes = {
            "POST /api/{user}/chat": {"TOKEN": token, "BENCH_USER": BENCH_USER},
            "POST /v1/chat/completions (SDK-shaped)": {
                "TOKEN": token, "BENCH_USER": BENCH_USER, "V1": "1",
            },
        }  # fmt: skip
        llm = self.llm(0)
        svc = self.chatsvc(llm, JWT_SECRET=BENCH_SECRET)
        for env in routes.values():
            harness.wrk(svc.url, connections=16, duration_s=2, env=env)  # warm-up
        runs: dict[str, list[dict]] = {name: [] for name in routes}
        for _ in range(3):
            for name, env in routes.items():
                runs[name].append(
                    harness.wrk(svc.url, connections=16, duration_s=self.seconds(6), env=env,
                                watch=(svc, llm))
                )  # fmt: skip
        (api_name, api_runs), (v1_name, v1_runs) = runs.items()
        api, v1 = _median_run(api_runs), _median_run(v1_runs)
        extra = v1["cpu_ms"]["chatsvc"] / api["cpu_ms"]["chatsvc"] - 1
        self.report.add(wrk_row("P6", f"{api_name}, LLM 0 ms, c=16", api, svc, "3 runs, medians"))
        note = f"chatsvc CPU {extra:+.1%} a turn vs /api"
        self.report.add(wrk_row("P6", f"{v1_name}, LLM 0 ms, c=16", v1, svc, note))
        svc.stop()

        first_token_ms, count = 50, 40 if self.quick else 200
        slow = self.llm(200, first_token_ms)
        streaming = self.chatsvc(slow, JWT_SECRET=BENCH_SECRET)
        spreads = {}
        for name, route in (("/api first delta", _api_stream), ("/v1 first chunk", _v1_stream)):
            turns = first_delta_split(streaming, slow, count, 4, route=partial(route, token))
            total, own = _spread([t.total for t in turns]), _spread([t.own for t in turns])
            spreads[name] = (total, own)
            note = f"chatsvc's own part p50/p95 {own[0]:.1f}/{own[1]:.1f} ms"
            self.report.add(
                Row("P6", f"{name}, first token {first_token_ms} ms", count, 0.0, *total, 0, 0.0,
                    note=note)
            )  # fmt: skip
        (api_total, api_own), (v1_total, v1_own) = spreads.values()
        self.report.verdict(
            f"P6 chatsvc CPU a turn: /v1 {v1['cpu_ms']['chatsvc']:.2f} ms vs /api "
            f"{api['cpu_ms']['chatsvc']:.2f} ms = {extra:+.1%} (target ≤ +10%); throughput "
            f"{v1['rps']:.0f} vs {api['rps']:.0f} turns/s; first streamed text p95: /v1 chunk "
            f"{v1_total[1]:.1f} ms, /api delta {api_total[1]:.1f} ms (chatsvc's own part p95 "
            f"{v1_own[1]:.1f} vs {api_own[1]:.1f} ms)"
        )
        self.stop_all()

    def p7_streams(self) -> None:
        """C concurrent streamed turns (bench/streams.py) on chatsvc (event log on, its
        configured store), on the FastAPI peer (bench/peer/) and on the fake model read
        directly (the floor), all against one fake that streams P7_TOKENS tokens
        P7_INTERVAL_MS apart: at each C, TTFD and gap p99, failures and refusals apart, and the
        CPU per delta of the server, the fake and the load client over the steady window."""
        levels = P7_QUICK_LEVELS if self.quick else P7_LEVELS
        llm = harness.start_fake_llm(0, P7_FIRST_TOKEN_MS, P7_TOKENS, P7_INTERVAL_MS)
        self.started.append(llm)
        token = create_token(P7_USER, secret=BENCH_SECRET, ttl=timedelta(hours=3))
        results = {"fake alone": self._p7_levels("fake", llm, llm, levels, token)}
        svc = self.chatsvc(llm, JWT_SECRET=BENCH_SECRET)
        results["chatsvc"] = self._p7_levels("chatsvc", svc, llm, levels, token)
        self._stop(svc)
        peer = harness.start_peer(self.workers, llm, self.tmp, BENCH_SECRET)
        self.started.append(peer)
        results["peer"] = self._p7_levels("peer", peer, llm, levels, token)
        self.stop_all()
        self.report.table(p7_table(results, levels))
        for name in ("chatsvc", "peer"):
            self.report.verdict(p7_verdict(name, results[name]))

    def _p7_levels(
        self, kind: str, service: Service, llm: Service, levels: tuple[int, ...], token: str
    ) -> dict[int, dict]:
        """One target at every C, from the lowest; the server idle between levels."""
        steady_s = 6.0 if self.quick else 15.0
        ramp_s = P7_TOKENS * P7_INTERVAL_MS / 1000  # one answer: the starts spread over it
        run = partial(streams.measure, kind, service.port, tokens=P7_TOKENS, token=token,
                      user=P7_USER, ramp_s=ramp_s)  # fmt: skip
        if kind != "fake":  # a booting worker's first turns are slow (the SDK's first use)
            run(20, steady_s=1.0)
            _wait_quiet(service)
        found = {}
        for concurrency in levels:
            cpu: dict[str, tuple[float, float]] = {}
            read_cpu = partial(_read_cpu, cpu, service, llm)
            tally = run(concurrency, steady_s=steady_s, at_window=read_cpu)
            figures = streams.summary(tally)
            deltas = max(1, tally.window_deltas)
            figures["server_us"] = (cpu["end"][0] - cpu["start"][0]) * 1e6 / deltas
            figures["fake_us"] = (cpu["end"][1] - cpu["start"][1]) * 1e6 / deltas
            found[concurrency] = figures
            print(f"  P7 {kind} C={concurrency}: {p7_line(figures, kind)}", flush=True)
            _wait_quiet(service)
        return found

    def p8_resume(self) -> None:
        """Issue 17's resume latency: P8_STREAMS streamed turns of long, slow answers; each
        client drops its connection once every turn is streaming, waits half a second and resumes
        with Last-Event-ID (bench/resume.py). Per event-log store asked for (`--events`;
        database is the default store)."""
        llm = harness.start_fake_llm(0, P7_FIRST_TOKEN_MS, P8_TOKENS, P8_INTERVAL_MS)
        self.started.append(llm)
        token = create_token(P7_USER, secret=BENCH_SECRET, ttl=timedelta(hours=3))
        ramp_s = 5.0
        drop_after = int(ramp_s * 1000 / P8_INTERVAL_MS)  # the last turn started by then
        for mode in [m for m in self.events if m != "memory"] or ["database"]:
            extra = events_env(mode)
            if extra is None:
                self.report.verdict(f"P8 log {mode}: not measured (set BENCH_REDIS_URL)")
                continue
            svc = self.chatsvc(llm, JWT_SECRET=BENCH_SECRET, **extra)
            plan = resume.ResumePlan(
                svc.port, P8_STREAMS, time.monotonic() + 0.5, ramp_s, token, P7_USER,
                drop_after=drop_after, spread=20,
            )  # fmt: skip
            found = resume.measure(plan).summary()
            kinds = ", ".join(f"{k} {n}" for k, n in found["failure_kinds"].items())
            note = (
                f"{found['ok']} of {P8_STREAMS} exactly once, in order, text = stored reply; "
                f"{found['failures']} failed{f' ({kinds})' if kinds else ''}; "
                f"{found['events_after_resume']} events after the resumes; the turns' own first "
                f"delta p50/p95 {found['ttfd_p50_ms']:.0f}/{found['ttfd_p95_ms']:.0f} ms; worst "
                f"resume {found['resume_max_ms']:.0f} ms"
            )
            self.report.add(
                Row("P8", f"resume with {P8_STREAMS} streaming (log: {mode})",
                    found["resumes"], 0.0, found["resume_p50_ms"], found["resume_p95_ms"],
                    found["resume_p99_ms"], found["failures"], 0.0, note=note)
            )  # fmt: skip
            state = "met" if found["resume_p95_ms"] <= 20 and found["failures"] == 0 else "MISSED"
            self.report.verdict(
                f"P8 (log: {mode}) resume → first missed event p50/p95 "
                f"{found['resume_p50_ms']:.1f}/{found['resume_p95_ms']:.1f} ms (p95 ≤ 20) with "
                f"{P8_STREAMS} turns streaming; {found['ok']}/{P8_STREAMS} exactly once and in "
                f"order with the stored text (all): {state}"
            )
            self._stop(svc)
        self.stop_all()


P5_CPU_ROUNDS = 5  # interleaved rounds of the CPU-per-delta comparison between log stores
LONG_WORDS = 200  # chunks of the long answers P5 measures the CPU per delta with


def events_env(mode: str) -> dict[str, str] | None:
    """chatsvc's settings for an event-log store: memory (this process only, no I/O: the
    log's cost apart from its store), database, redis (BENCH_REDIS_URL or TEST_REDIS_URL)."""
    if mode == "memory":
        return {"TURN_EVENTS_STORE": "memory"}
    if mode == "database":
        return {"TURN_EVENTS_STORE": "database"}
    if mode == "redis":
        url = os.environ.get("BENCH_REDIS_URL") or os.environ.get("TEST_REDIS_URL")
        return {"EVENTS_REDIS_URL": url} if url else None
    raise SystemExit(f"--events: unknown store {mode!r} (memory, database, redis)")


def cpu_per_delta(service: Service, count: int, concurrency: int) -> float:
    """The server's CPU milliseconds (master and workers) per delta, over `count` streamed
    turns of LONG_WORDS deltas (a service whose fake answers that long)."""
    headers = {"Content-Type": "application/json", "Accept": "text/event-stream"}
    run = f"{time.monotonic_ns():x}"
    started = service.cpu_seconds()
    _timed(
        lambda n: _first_line_ms(
            service.port, f"/api/bench-long-{n}/chat",
            json.dumps({"message": f"long please {run}-{n}"}), headers, b"event: delta",
        ),
        count, concurrency,
    )  # fmt: skip
    return (service.cpu_seconds() - started) * 1000 / (count * LONG_WORDS)


# P7: streams at scale (issue 22) --------------------------------------------------------------

P7_TOKENS, P7_INTERVAL_MS, P7_FIRST_TOKEN_MS = 100, 50, 50  # a 5 s answer at 20 tokens/s
P7_LEVELS, P7_QUICK_LEVELS = (100, 250, 500, 1000, 2000), (100, 500)
P7_USER = "bench-p7"
# P8: 500 live turns of 20 s answers at 5 tokens/s (slow: P7 measures the CPU at 20/s; here
# the server must not be saturated, or the resume waits for CPU, not for the log).
P8_STREAMS, P8_TOKENS, P8_INTERVAL_MS = 500, 100, 200
# Holding the cadence: gap p99 at most two token intervals, TTFD p99 ≤ 1 s, no failure.
P7_GAP_MS, P7_TTFD_MS = 2 * P7_INTERVAL_MS, 1000
P7_GOAL_STREAMS, P7_GOAL_US = 1000, 100  # issue 22's goals: 1,000 streams, ≤ 100 µs a delta


def _read_cpu(into: dict, service: Service, llm: Service, moment: str) -> None:
    into[moment] = (service.cpu_seconds(), llm.cpu_seconds())


def _wait_quiet(service: Service, deadline_s: float = 40.0) -> None:
    """Until the server's CPU over half a second is under 5 % (the turns a level left, e.g.
    those whose client timed out, have ended), at most `deadline_s`."""
    deadline = time.monotonic() + deadline_s
    while time.monotonic() < deadline:
        before = service.cpu_seconds()
        time.sleep(0.5)
        if service.cpu_seconds() - before < 0.025:
            return


def p7_holds(figures: dict) -> bool:
    return (
        figures["gap_p99_ms"] <= P7_GAP_MS and figures["ttfd_p99_ms"] <= P7_TTFD_MS
        and figures["failures"] == 0
    )  # fmt: skip


def p7_line(figures: dict, kind: str) -> str:
    kinds = ", ".join(f"{k} {n}" for k, n in figures["failure_kinds"].items())
    server = "" if kind == "fake" else f"server {figures['server_us']:.0f} µs/delta, "
    return (
        f"{figures['turns']} turns, {figures['ok']} ok, {figures['refused']} refused, "
        f"{figures['failures']} failed{f' ({kinds})' if kinds else ''}; TTFD p50/p99 "
        f"{figures['ttfd_p50_ms']:.0f}/{figures['ttfd_p99_ms']:.0f} ms, gap p50/p99 "
        f"{figures['gap_p50_ms']:.1f}/{figures['gap_p99_ms']:.1f} ms; {server}fake "
        f"{figures['fake_us']:.0f} µs/delta, client {figures['client_us_per_delta']:.0f} µs/delta "
        f"({figures['processes']} process(es), loop lag p99 {figures['client_lag_p99_ms']:.1f} ms)"
    )


def p7_table(results: dict[str, dict[int, dict]], levels: tuple[int, ...]) -> str:
    """Side by side: the fake read directly, chatsvc, the peer; a cell per target and C."""
    head = (
        "| C | fake alone gap / TTFD p99 | chatsvc gap p99 | chatsvc TTFD p99 | chatsvc µs "
        "CPU/delta | chatsvc failed / refused | peer gap p99 | peer TTFD p99 | peer µs CPU/delta "
        "| peer failed / refused | client µs/delta (lag p99) |"
    )
    rows = [head, "|---:|---|---:|---:|---:|---|---:|---:|---:|---|---|"]
    for c in levels:
        fake, ours, peer = (results[name][c] for name in ("fake alone", "chatsvc", "peer"))
        cells = [f"{c}", f"{fake['gap_p99_ms']:.0f} / {fake['ttfd_p99_ms']:.0f} ms"]
        for figures in (ours, peer):
            cells += [
                f"{figures['gap_p99_ms']:.0f} ms", f"{figures['ttfd_p99_ms']:,.0f} ms",
                f"{figures['server_us']:.0f}",
                f"{figures['failures']} / {figures['refused']} of {figures['turns']}",
            ]  # fmt: skip
        client = max(ours, peer, key=lambda f: f["client_us_per_delta"])
        cells.append(f"{client['client_us_per_delta']:.0f} ({client['client_lag_p99_ms']:.0f} ms)")
        rows.append("| " + " | ".join(cells) + " |")
    return "\n".join(["### P7: concurrent streamed turns", "", *rows])


def p7_verdict(name: str, found: dict[int, dict]) -> str:
    held = [c for c, figures in found.items() if p7_holds(figures)]
    capacity = f"holds the cadence up to C={max(held)}" if held else "holds the cadence at no C"
    goal = found.get(P7_GOAL_STREAMS)
    if goal is None:
        target = f"C={P7_GOAL_STREAMS} not run (--quick)"
    else:
        state = "met" if p7_holds(goal) and goal["server_us"] <= P7_GOAL_US else "MISSED"
        target = (
            f"at C={P7_GOAL_STREAMS}: gap p99 {goal['gap_p99_ms']:.0f} ms (≤ {P7_GAP_MS}), TTFD "
            f"p99 {goal['ttfd_p99_ms']:,.0f} ms (≤ {P7_TTFD_MS}), {goal['failures']} failed (0), "
            f"{goal['server_us']:.0f} µs CPU/delta (≤ {P7_GOAL_US}): {state}"
        )
    return f"P7 {name} {capacity} (gap p99 ≤ {P7_GAP_MS} ms, TTFD p99 ≤ 1 s, 0 failed); {target}"


BENCH_USER = "bench-v1"
BENCH_SECRET = "bench-secret-" + "x" * 32  # P6's servers sign and check its token with it


def _api_stream(token: str, number: int, message: str) -> StreamedTurn:
    """A streamed turn on /api as the demo page sends it: its first text is `event: delta`."""
    headers = {"Content-Type": "application/json", "Accept": "text/event-stream"}
    if token:
        headers["Authorization"] = f"Bearer {token}"
        path = f"/api/{BENCH_USER}/chat"
    else:
        path = f"/api/bench-stream-{number}/chat"
    return StreamedTurn(path, json.dumps({"message": message}), headers, b"event: delta")


def _v1_stream(token: str, number: int, message: str) -> StreamedTurn:
    """The same turn as the openai SDK streams it: its first text is the first chunk with
    content (the one before it, sent as the turn starts, carries the role only)."""
    body = {"messages": [{"content": message, "role": "user"}], "model": "todo", "stream": True}
    headers = {"Content-Type": "application/json", "Authorization": f"Bearer {token}"}
    return StreamedTurn(
        "/v1/chat/completions", json.dumps(body), headers, b"data: ", b'"delta": {"content": "'
    )


def _median_run(results: list[dict]) -> dict:
    """Several wrk runs as one: requests and time added up, every other figure the median."""
    merged = {
        key: statistics.median(r[key] for r in results) for key in ("p50_ms", "p95_ms", "p99_ms")
    }
    merged["requests"] = sum(r["requests"] for r in results)
    merged["errors"] = sum(r["errors"] for r in results)
    merged["rps"] = merged["requests"] / sum(r["duration_s"] for r in results)
    merged["cpu_ms"] = {
        name: statistics.median(r["cpu_ms"][name] for r in results) for name in results[0]["cpu_ms"]
    }
    return merged


def _spread(samples: list[float]) -> tuple[float, float, float]:
    """p50, p95 and the worst of some latencies."""
    ordered = sorted(samples)
    return statistics.median(ordered), ordered[int(len(ordered) * 0.95) - 1], ordered[-1]


def first_chunk_ms(llm: Service, count: int, concurrency: int) -> list[float]:
    """The fake's own time to its first chunk, asked directly (a request of the size chatsvc
    sends)."""
    body = json.dumps({**harness.PROVIDER_REQUEST, "stream": True})
    headers = {"Content-Type": "application/json"}
    return _timed(
        lambda _: _first_line_ms(llm.port, "/v1/chat/completions", body, headers, b"data:"),
        count, concurrency,
    )  # fmt: skip


@dataclass(frozen=True)
class FirstDelta:
    """One streamed turn, in milliseconds: from the client's POST to its first `delta`
    (total), split at the fake's trace into chatsvc before the provider request (before), the
    fake from that request to its first chunk (fake), and chatsvc from there to the client
    (after: relaying, and any wait for a worker busy with another turn)."""

    total: float
    before: float
    fake: float
    after: float

    @property
    def own(self) -> float:
        """chatsvc's part: the first delta minus the fake's first token for this turn."""
        return self.before + self.after


@dataclass(frozen=True)
class StreamedTurn:
    """How to ask for one streamed turn, and how its first text line starts (and holds)."""

    path: str
    body: str
    headers: dict[str, str]
    prefix: bytes
    contains: bytes = b""


def first_delta_split(
    service: Service,
    llm: Service,
    count: int,
    concurrency: int,
    route: Callable[[int, str], StreamedTurn] | None = None,
) -> list[FirstDelta]:
    run = f"{time.monotonic_ns():x}"
    route = route or partial(_api_stream, "")

    def one(number: int) -> tuple[str, float, float]:
        message = f"stream please {run}-{number}"
        turn = route(number, message)
        sent, first = _first_line_at(
            service.port, turn.path, turn.body, turn.headers, turn.prefix, turn.contains
        )
        return message, sent, first

    turns = _timed(one, count, concurrency)
    with harness.urllib.request.urlopen(llm.url + "/trace", timeout=5) as response:
        trace = json.load(response)
    split = []
    for message, sent, first in turns:
        arrived, chunk = trace[message]
        split.append(
            FirstDelta(
                total=1000 * (first - sent),
                before=1000 * (arrived - sent),
                fake=1000 * (chunk - arrived),
                after=1000 * (first - chunk),
            )
        )
    return split


def _first_line_ms(
    port: int, path: str, body: str, headers: dict[str, str], prefix: bytes
) -> float:
    """Milliseconds from sending a POST to the first line of its stream starting `prefix`."""
    sent, first = _first_line_at(port, path, body, headers, prefix)
    return (first - sent) * 1000


def _first_line_at(
    port: int, path: str, body: str, headers: dict[str, str], prefix: bytes, contains: bytes = b""
) -> tuple[float, float]:
    """When (`time.monotonic()`) a POST was sent and the first line of its stream that starts
    with `prefix` (and holds `contains`) was read; the rest is read to the end."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    sent = time.monotonic()
    connection.request("POST", path, body, headers)
    response = connection.getresponse()
    first = None
    while line := response.readline():
        if first is None and line.startswith(prefix) and contains in line:
            first = time.monotonic()
    connection.close()
    if first is None:
        raise RuntimeError(f"{path} streamed no {prefix.decode()!r} line")
    return sent, first


def _timed(one: Callable[[int], T], count: int, concurrency: int) -> list[T]:
    """`one(0)` to `one(count - 1)`, `concurrency` at a time, after as many to warm up."""
    with ThreadPoolExecutor(concurrency) as pool:
        list(pool.map(one, range(count, count + concurrency)))  # warm-up
        return list(pool.map(one, range(count)))


SCENARIOS: dict[str, Callable[[Bench], None]] = {
    "P1": Bench.p1_overhead,
    "P2": Bench.p2_slow_turns,
    "P3": Bench.p3_long_history,
    "P4": Bench.p4_memory,
    "P5": Bench.p5_streaming,
    "P6": Bench.p6_openai_facade,
    "P7": Bench.p7_streams,
    "P8": Bench.p8_resume,
}


def machine() -> str:
    memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    return (
        f"{platform.node()}: {os.cpu_count()} cores, {memory:.0f} GiB, "
        f"{platform.platform()}, Python {platform.python_version()}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description="chatsvc benchmarks")
    parser.add_argument("--only", default=",".join(SCENARIOS))
    parser.add_argument("--quick", action="store_true", help="shorter runs, for a smoke check")
    parser.add_argument("--output", default=str(harness.REPO / "bench" / "RESULTS.md"))
    parser.add_argument(
        "--events", default="database",
        help="P5, P8: event-log stores to measure, comma-separated: memory (no store: the "
        "baseline), database, redis (needs BENCH_REDIS_URL or TEST_REDIS_URL)",
    )  # fmt: skip
    args = parser.parse_args()
    wanted = {name.strip() for name in args.only.split(",")}
    if shutil.which("wrk") is None and wanted - {"P5", "P7", "P8"}:  # these read streams themselves
        raise SystemExit("bench needs wrk, the load client: apt-get install -y wrk")
    bench = Bench(args.quick, args.events)
    started = time.monotonic()
    backend = "PostgreSQL" if bench.database_url.startswith("postgresql") else "SQLite"
    print(f"# chatsvc benchmarks — {machine()}; {backend}; {bench.workers} gevent workers")
    try:
        for name in args.only.split(","):
            SCENARIOS[name.strip()](bench)
    finally:
        bench.stop_all()
    client = resource.getrusage(resource.RUSAGE_CHILDREN)
    elapsed = time.monotonic() - started
    names = [name.strip() for name in args.only.split(",")]
    everything = set(names) == set(SCENARIOS)
    mode = "quick" if args.quick else "full"
    title = "# Benchmark results" if everything else f"## `--only {','.join(names)}` ({mode})"
    command = "`make bench`" if everything else f"`python -m bench --only {','.join(names)}`"
    text = "\n".join([
        title, "",
        f"Machine: {machine()}. Database: {backend}. gunicorn: {bench.workers} gevent workers.",
        f"Run: {command} ({mode}), {elapsed:.0f} s; CPU of "
        f"every process it started (servers, fake LLM, wrk): "
        f"{client.ru_utime + client.ru_stime:.0f} s. The note column gives each one's CPU "
        "milliseconds per request (`chatsvc` counts gunicorn's master and workers).", "",
        *([table(bench.report.rows), ""] if bench.report.rows else []),
        *[part for text in bench.report.tables for part in (text, "")],
        "### Against the targets" if not everything else "## Against the targets", "",
        *[f"- {v}" for v in bench.report.verdicts], "",
    ])  # fmt: skip
    key = "all" if everything and not args.quick else f"{mode} --only {','.join(names)}"
    write_results(Path(args.output), key, text)
    print(f"\nwrote {args.output} in {elapsed:.0f} s")


def write_results(path: Path, key: str, text: str) -> None:
    """Replaces this kind of run's block of RESULTS.md (between its markers) and keeps the
    rest, so that a run of some scenarios (`--only`) or a quick one never wipes the tables of
    the others, nor the hand-written sections. A block not yet in the file is appended."""
    begin, end = f"<!-- bench {key}: begin -->", f"<!-- bench {key}: end -->"
    block = f"{begin}\n{text.rstrip()}\n{end}"
    old = path.read_text() if path.exists() else ""
    if begin in old and end in old:
        head, rest = old.split(begin, 1)
        new = head + block + rest.split(end, 1)[1]
    else:
        new = f"{old.rstrip()}\n\n{block}\n" if old.strip() else block + "\n"
    path.write_text(new)


if __name__ == "__main__":
    main()
