"""The short chaos soak (bench/soak, README "Chaos soak"): 30 s of mixed traffic with
idempotent retries while workers are killed, the database is cut, Redis dies and the model
fails; every invariant must hold. PostgreSQL only: it runs when TEST_DATABASE_URL is set."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import require_service

ROOT = Path(__file__).resolve().parent.parent

pytestmark = pytest.mark.soak


def test_short_soak_passes() -> None:
    require_service("TEST_DATABASE_URL", "PostgreSQL")  # skipped without (failed in CI)
    if shutil.which("redis-server") is None:
        reason = "the soak starts its own redis-server: none on PATH"
        if os.environ.get("CHATSVC_REQUIRE_SERVICES") == "1":
            pytest.fail(reason)
        pytest.skip(reason)
    # every fault kind once and the tool-then-fail case twice: the one that made tools run twice;
    # each fault 0.4 of its full length (cut_db 1.2-2.4 s, kill_redis 0.8-2 s, the model's
    # 1.6-3.2 s: still past AGENT_TIMEOUT_SECONDS for a stall), so that all eight fit in 30 s
    kinds = ["kill_worker", "cut_db", "kill_redis", "model_500", "model_429", "model_stall"]
    argv = [sys.executable, "-m", "bench.soak", "--seconds", "30", "--users", "12"]
    argv += ["--faults", "8", "--fault-scale", "0.4", "--only", "tool_then_fail"]
    for kind in kinds:
        argv += ["--only", kind]
    soak = subprocess.Popen(
        argv, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    try:
        stdout, stderr = soak.communicate(timeout=420)
    except subprocess.TimeoutExpired:
        soak.terminate()  # the soak cleans up its processes and its database on SIGTERM
        stdout, stderr = soak.communicate(timeout=60)
        pytest.fail(f"the soak ran past 420 s:\n{stdout[-3000:]}")
    lines = stdout.strip().splitlines()
    assert lines, stderr[-3000:]
    report = "\n".join(lines[-45:])
    injected = next(line for line in lines if line.startswith("faults: "))
    counts = dict(pair.split("=") for pair in injected.removeprefix("faults: ").split(", "))
    # every kind was injected (a fault planned after the run's end would be skipped)
    assert all(int(counts[kind]) >= 1 for kind in [*kinds, "tool_then_fail"]), report
    assert int(counts["tool_then_fail"]) == 2, report
    assert lines[-1] == "VERDICT: PASS", report
    assert soak.returncode == 0, report
