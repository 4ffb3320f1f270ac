"""The chaos soak (issue 23): `python -m bench.soak [--seconds 300] [--users 20]`.

Topology: gunicorn with 2 gevent workers on PostgreSQL reached through a TCP proxy this
process controls, its own redis-server (the rate limiter's storage) on a free port, and the
OpenAI provider pointed at an in-process fake model whose faults are switched at run time.

Traffic: N users mix JSON and streamed turns (some leave mid-stream), knowledge sessions and
task REST calls. Every chat POST carries an Idempotency-Key and is retried with the same key
after a 5xx, a 409 or a dropped connection (bounded, with backoff).

Faults at random times: SIGKILL a worker, cut the database proxy, kill Redis (restarted),
the model failing (500, 429), stalling past AGENT_TIMEOUT_SECONDS, or calling add_task and
then failing the request that follows. Then everything heals, `flask sessions cleanup` runs,
and the invariants are checked through the API and the database. Counts are printed, the
VERDICT line last; the exit status is 1 on FAIL. Every process, the soak's own database
and the temporary directory are removed at the end (the service's log stays in bench/out/).

The database: SOAK_DATABASE_URL or TEST_DATABASE_URL names a PostgreSQL server; the soak
creates a database of its own there (`soak_<random>`) and drops it afterwards.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

import psycopg
import requests
from sqlalchemy.engine import make_url

from bench import harness
from chatsvc.auth import create_token

sys.path.insert(0, str(harness.REPO))  # tests/ holds the fake model and the TCP proxy

from tests import fakellm  # noqa: E402
from tests.tcpproxy import TcpProxy  # noqa: E402

AGENT_TIMEOUT_S = 3.0
TURN_STALE_S = 10  # the soaks ran with 10 s; --stale-seconds changes it
MAX_ATTEMPTS = 8
KEY = re.compile(r"\[(k[0-9a-f]{12})\]")
ADD = re.compile(r"add a task for \[(k[0-9a-f]{12})\]")
# The contract gives Retry-After on a 429 and on 503 overloaded; on 503 upstream_busy when the
# provider sent one (the fake model always does). A 503 unavailable (the database went away)
# must carry one too (issue 23, point 4), and it must be about this request: a short one.
RETRY_AFTER_CODES = {"upstream_busy", "overloaded", "rate_limited"}
UNAVAILABLE_RETRY_AFTER_MAX_S = 30
MODEL_FAULTS = ("model_500", "model_429", "model_stall", "tool_then_fail")
FAULTS = ("kill_worker", "cut_db", "kill_redis", *MODEL_FAULTS)


# --- the fake model -------------------------------------------------------------------------


class SoakModel(fakellm.FakeLLM):
    """The fake OpenAI server of tests/fakellm.py, answering by what it is asked instead of a
    script: "add a task for [key]" → add_task titled with every such key in the message; a
    knowledge question → search_knowledge; then a text answer. `mode` switches faults."""

    def __init__(self) -> None:
        super().__init__()
        # a client that gave up on a stalled answer is expected here, not a traceback
        self._server.handle_error = lambda request, address: None
        self.mode = "ok"
        self.calls = collections.Counter()

    def next_response(self, body, headers, peer=("", 0)):  # noqa: ANN001, ANN201
        messages = body.get("messages", [])
        last = messages[-1] if messages else {}
        users = [m for m in messages if m.get("role") == "user"]
        asked = str(users[-1].get("content") or "") if users else ""
        mode = self.mode
        with self._lock:
            self.calls[mode] += 1
        if mode == "model_500":
            return fakellm.fail(500)
        if mode == "model_429":
            return fakellm.fail(429, retry_after="1")
        if mode == "model_stall":
            return fakellm.slow(AGENT_TIMEOUT_S + 2)
        if last.get("role") == "tool":
            if mode == "tool_then_fail":
                return fakellm.fail(random.choice((500, 502)))
            return fakellm.say(f"done: {asked[:60]}")
        keys = ADD.findall(asked)
        if keys:
            return fakellm.call(("add_task", {"title": "soak " + " ".join(keys)}))
        if "look up" in asked:
            return fakellm.call(("search_knowledge", {"query": "idempotency retry"}))
        return fakellm.say(f"fake: {asked[:60]}")


# --- what the clients saw -------------------------------------------------------------------


@dataclass
class Tally:
    lock: threading.Lock = field(default_factory=threading.Lock)
    counts: collections.Counter = field(default_factory=collections.Counter)
    statuses: collections.Counter = field(default_factory=collections.Counter)
    violations: collections.Counter = field(default_factory=collections.Counter)
    examples: dict[str, list[str]] = field(default_factory=lambda: collections.defaultdict(list))
    faults: collections.Counter = field(default_factory=collections.Counter)
    # key → the 200s it got: (route kind, owner, conversation id, message id, text, replayed)
    ok: dict[str, list[tuple[str, str, str, str, str, bool]]] = field(
        default_factory=lambda: collections.defaultdict(list)
    )
    keys_sent: set[str] = field(default_factory=set)
    conflict_spans: list[float] = field(default_factory=list)  # per key: first to last 409

    def count(self, name: str, n: int = 1) -> None:
        with self.lock:
            self.counts[name] += n

    def violation(self, name: str, example: str) -> None:
        with self.lock:
            self.violations[name] += 1
            if len(self.examples[name]) < 5:
                self.examples[name].append(example[:300])


def check_error(tally: Tally, where: str, response: requests.Response) -> dict[str, Any]:
    """A 4xx/5xx answer: a problem body, Retry-After where the contract gives one, never 500."""
    tally.statuses[response.status_code] += 1
    try:
        problem = response.json()
    except ValueError:
        problem = {}
    kind = response.headers.get("Content-Type", "")
    if response.status_code >= 500 and (
        not kind.startswith("application/problem+json") or "code" not in problem
    ):
        tally.violation("5xx_without_problem", f"{where} {response.status_code} {kind}")
    code = problem.get("code", "")
    if response.status_code == 500:
        tally.violation("status_500", f"{where} {code} {problem.get('detail', '')}")
    retry_after = response.headers.get("Retry-After")
    if (response.status_code == 429 or code in RETRY_AFTER_CODES) and not retry_after:
        tally.violation("missing_retry_after", f"{where} {response.status_code} {code}")
    if code == "unavailable":
        if not retry_after:
            tally.violation("unavailable_retry_after", f"{where}: none")
        elif not retry_after.isdigit() or int(retry_after) > UNAVAILABLE_RETRY_AFTER_MAX_S:
            tally.violation("unavailable_retry_after", f"{where}: Retry-After {retry_after}")
    return problem


def problem_frame(tally: Tally, where: str, problem: dict[str, Any]) -> None:
    status = int(problem.get("status") or 0)
    tally.statuses[f"frame {status}"] += 1
    if "code" not in problem:
        tally.violation("5xx_without_problem", f"{where} error frame {problem}")
    if status == 500 or problem.get("code") == "internal_error":
        tally.violation("status_500", f"{where} error frame {problem.get('code')}")


class Dropped(Exception):
    """The connection broke (or a stream ended without done/error)."""


class User(threading.Thread):
    def __init__(
        self, index: int, base: str, run: str, secret: str, tally: Tally, stop: threading.Event
    ) -> None:
        super().__init__(daemon=True, name=f"user-{index}")
        self.user = f"soak-{run}-{index}"
        self.base = base
        self.tally = tally
        self.stop = stop
        self.random = random.Random(f"{run}-{index}")
        self.http = requests.Session()
        # With a token, a session's first turn may carry an Idempotency-Key too (an anonymous
        # one may not: contract §1), and the session is the user's.
        self.http.headers["Authorization"] = f"Bearer {token(self.user, secret)}"
        self.conflicts: list[float] = []  # when this key got a 409
        self.conversation: str | None = None
        self.session: str | None = None

    def run(self) -> None:
        while not self.stop.is_set():
            roll = self.random.random()
            try:
                if roll < 0.40:
                    self.turn("user", stream=False)
                elif roll < 0.65:
                    self.turn("user", stream=True, leave=self.random.random() < 0.15)
                elif roll < 0.85:
                    self.turn("session", stream=self.random.random() < 0.4)
                else:
                    self.tasks()
            except Exception as error:  # the soak goes on; the harness's own bug is counted
                self.tally.violation("client_exception", repr(error))
            self.stop.wait(self.random.uniform(0.1, 0.6))

    # one idempotent chat turn, retried with the same key ------------------------------------

    def turn(self, kind: str, stream: bool, leave: bool = False) -> None:
        key = "k" + uuid.uuid4().hex[:12]
        if kind == "user":
            what = "add a task for" if self.random.random() < 0.5 else "just chatting about"
            message = f"{what} [{key}]"
            if self.conversation and self.random.random() < 0.8:
                body = {"message": message, "conversation_id": self.conversation}
            else:
                body = {"message": message}
            url = f"{self.base}/api/{self.user}/chat"
        else:
            message = f"look up idempotency, please [{key}]"
            body = {"message": message}
            if self.session and self.random.random() < 0.8:
                url = f"{self.base}/api/chat/{self.session}"
            else:
                url = f"{self.base}/api/chat"
        with self.tally.lock:
            self.tally.keys_sent.add(key)
        self.tally.count("turns")
        self.tally.count("streamed turns" if stream else "json turns")
        try:
            self.attempts(kind, url, body, key, stream, leave)
        finally:
            if self.conflicts:
                span = self.conflicts[-1] - self.conflicts[0]
                with self.tally.lock:
                    self.tally.conflict_spans.append(span)
                self.conflicts = []

    def attempts(self, kind: str, url: str, body: dict, key: str, stream: bool, leave: bool):  # noqa: ANN201
        for attempt in range(MAX_ATTEMPTS):
            if attempt:
                self.tally.count("retries")
            try:
                outcome, wait = self.attempt(kind, url, body, key, stream, leave and not attempt)
            except Dropped as error:
                self.tally.count("dropped connections")
                outcome, wait = "retry", None
                if leave and not attempt and str(error) == "left":
                    self.tally.count("left mid-stream")
                    return  # a client that leaves does not come back for the answer
            if outcome == "done":
                return
            if outcome == "give_up":
                return
            pause = min(0.3 * 2**attempt, 4.0) if wait is None else min(wait, 8.0)
            time.sleep(pause * self.random.uniform(0.8, 1.2))  # the run's end waits for these
        self.tally.count("keys given up")

    def attempt(
        self, kind: str, url: str, body: dict, key: str, stream: bool, leave: bool
    ) -> tuple[str, float | None]:
        headers = {"Idempotency-Key": key}
        if stream:
            headers["Accept"] = "text/event-stream"
        try:
            response = self.http.post(
                url, json=body, headers=headers, stream=stream, timeout=(3, 40)
            )
        except requests.RequestException as error:
            raise Dropped(repr(error)) from error
        where = f"{kind} {'stream' if stream else 'json'} key={key}"
        with response:
            if response.status_code != 200:
                problem = check_error(self.tally, where, response)
                return self.after_error(response.status_code, problem, response)
            self.tally.statuses[200] += 1
            replayed = response.headers.get("Idempotent-Replayed") == "true"
            if not stream:
                try:
                    data = response.json()
                except ValueError as error:
                    raise Dropped("truncated JSON") from error
            else:
                data = self.read_stream(response, where, leave)
                if data is None:
                    return "retry", None
                if "problem" in data:
                    problem = data["problem"]
                    return self.after_error(int(problem.get("status") or 0), problem, None)
        self.settled(kind, key, data, replayed)
        return "done", None

    def read_stream(
        self, response: requests.Response, where: str, leave: bool
    ) -> dict[str, Any] | None:
        event = None
        try:
            for line in response.iter_lines(decode_unicode=True):
                if line.startswith("event:"):
                    event = line.split(":", 1)[1].strip()
                elif line.startswith("data:"):
                    data = json.loads(line.split(":", 1)[1])
                    if event == "meta" and leave:
                        raise Dropped("left")
                    if event == "done":
                        return data
                    if event == "error":
                        problem_frame(self.tally, where, data)
                        return {"problem": data}
        except (requests.RequestException, ValueError) as error:
            raise Dropped(repr(error)) from error
        raise Dropped("stream ended without done or error")

    def after_error(
        self, status: int, problem: dict[str, Any], response: requests.Response | None
    ) -> tuple[str, float | None]:
        if status == 409:
            self.conflicts.append(time.monotonic())
        if status >= 500 or status in (409, 429):
            wait = None
            if response is not None and response.headers.get("Retry-After", "").isdigit():
                wait = float(response.headers["Retry-After"])
            return "retry", wait
        if status == 404 and problem.get("code") == "not_found":
            # the conversation or session it named was never stored (its creating turn was lost)
            self.conversation = self.session = None
        self.tally.count(f"gave up on {status} {problem.get('code')}")
        return "give_up", None

    def settled(self, kind: str, key: str, data: dict[str, Any], replayed: bool) -> None:
        conversation = data.get("conversation_id", "")
        owner = self.user
        if kind == "user":
            self.conversation = conversation
        else:
            self.session = conversation
        if replayed:
            self.tally.count("replays")
        with self.tally.lock:
            self.tally.ok[key].append(
                (kind, owner, conversation, data.get("message_id", ""), data.get("response", ""),
                 replayed)
            )  # fmt: skip

    # task REST calls (not retried: a POST /tasks has no idempotency key) ----------------------

    def tasks(self) -> None:
        base = f"{self.base}/api/{self.user}/tasks"
        self.tally.count("task calls")
        try:
            roll = self.random.random()
            if roll < 0.4:
                response = self.http.post(base, json={"title": "rest task"}, timeout=(3, 20))
            elif roll < 0.8:
                response = self.http.get(base, params={"status": "pending"}, timeout=(3, 20))
            else:
                listing = self.http.get(base, timeout=(3, 20))
                items = listing.json().get("items", []) if listing.status_code == 200 else []
                if not items:
                    return
                number = items[0]["task_id"]
                response = self.http.patch(
                    f"{base}/{number}", json={"completed": True}, timeout=(3, 20)
                )
        except (requests.RequestException, ValueError):
            self.tally.count("dropped connections")
            return
        if response.status_code >= 400:
            check_error(self.tally, "tasks", response)
        else:
            self.tally.statuses[response.status_code] += 1


def token(user: str, secret: str) -> str:
    return create_token(user, secret=secret, ttl=timedelta(hours=2))


# --- the topology ---------------------------------------------------------------------------


class Redis:
    def __init__(self, tmp: Path) -> None:
        self.port = harness.free_port()
        self.tmp = tmp
        self.process: subprocess.Popen | None = None
        self.start()

    def start(self) -> None:
        argv = ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1",
                "--save", "", "--appendonly", "no", "--dir", str(self.tmp)]  # fmt: skip
        self.process = subprocess.Popen(
            argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True
        )
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                import socket

                socket.create_connection(("127.0.0.1", self.port), timeout=0.5).close()
                return
            except OSError:
                time.sleep(0.05)
        raise RuntimeError("redis-server did not start")

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait()
        self.process = None


class Database:
    """A database of the soak's own on the given PostgreSQL server."""

    def __init__(self, url: str) -> None:
        base = make_url(url)
        self.name = f"soak_{uuid.uuid4().hex[:10]}"
        self.admin = base.set(drivername="postgresql", database="postgres")
        self.url = base.set(database=self.name)
        with self.connect(self.admin) as connection:
            connection.execute(f'CREATE DATABASE "{self.name}"')

    @staticmethod
    def connect(url) -> psycopg.Connection:  # noqa: ANN001
        return psycopg.connect(
            host=url.host, port=url.port or 5432, user=url.username, password=url.password,
            dbname=url.database, autocommit=True,
        )  # fmt: skip

    def via(self, port: int) -> str:
        return self.url.set(host="127.0.0.1", port=port).render_as_string(hide_password=False)

    def drop(self) -> None:
        with self.connect(self.admin) as connection:
            connection.execute(f'DROP DATABASE IF EXISTS "{self.name}" WITH (FORCE)')


@dataclass
class Topology:
    model: SoakModel
    proxy: TcpProxy
    redis: Redis
    service: harness.Service
    database: Database
    env: dict[str, str]


def start(tmp: Path, url: str, stale_seconds: int) -> Topology:
    database = Database(url)
    model = SoakModel()
    proxy = TcpProxy(database.url.port or 5432, database.url.host or "127.0.0.1")
    redis = Redis(tmp)
    metrics = tmp / "metrics"
    metrics.mkdir()
    env = {
        "CHATSVC_ENV": "production",
        "AUTH_MODE": "optional",
        "JWT_SECRET": uuid.uuid4().hex + uuid.uuid4().hex,
        "DATABASE_URL": database.via(proxy.port),
        "AGENT_PROVIDER": "openai",
        "OPENAI_BASE_URL": model.url,
        "OPENAI_API_KEY": "soak",
        "OPENAI_MODEL": "soak",
        "AGENT_TIMEOUT_SECONDS": str(AGENT_TIMEOUT_S),
        "AGENT_MAX_RETRIES": "0",  # the model's faults reach the turn
        "TURN_STALE_SECONDS": str(stale_seconds),
        "RATELIMIT_ENABLED": "true",
        "RATELIMIT_STORAGE_URI": f"redis://127.0.0.1:{redis.port}",
        "RATELIMIT_CHAT": "100000 per minute",
        "RATELIMIT_DEFAULT": "100000 per minute",
        "WEB_CONCURRENCY": "2",
        "PROMETHEUS_MULTIPROC_DIR": str(metrics),
        "LOG_LEVEL": "INFO",
    }
    try:
        harness.migrate({**env, "DATABASE_URL": database.via(database.url.port or 5432)})
        subprocess.run(
            [str(harness.BIN / "flask"), "--app", "chatsvc", "kb", "seed"],
            cwd=harness.REPO, env={**os.environ, **env}, check=True, capture_output=True,
        )  # fmt: skip
        service = harness.start_chatsvc(env, name="soak-chatsvc")
    except BaseException:
        proxy.cut()
        redis.kill()
        model.close()
        database.drop()
        raise
    return Topology(model, proxy, redis, service, database, env)


def stop(topology: Topology) -> None:
    for step in (
        topology.service.stop,
        topology.redis.kill,
        topology.proxy.cut,
        topology.model.close,
        topology.database.drop,
    ):
        try:
            step()
        except Exception as error:  # clean up the rest regardless
            print(f"cleanup: {step.__qualname__} failed: {error!r}", file=sys.stderr)


# --- faults ---------------------------------------------------------------------------------


def inject(topology: Topology, fault: str, rng: random.Random, stop: threading.Event) -> None:
    if fault == "kill_worker":
        workers = topology.service.worker_pids()
        if workers:
            os.kill(rng.choice(workers), signal.SIGKILL)
    elif fault == "cut_db":
        topology.proxy.cut()
        stop.wait(rng.uniform(3, 6))
        topology.proxy.restore()
    elif fault == "kill_redis":
        topology.redis.kill()
        stop.wait(rng.uniform(2, 5))
        topology.redis.start()
    else:
        topology.model.mode = fault
        stop.wait(rng.uniform(4, 8))
        topology.model.mode = "ok"


def chaos(
    topology: Topology, seconds: float, count: int, only: list[str], tally: Tally, rng, stop
) -> None:  # noqa: ANN001
    """`count` faults at random times within the first 80 % of the run, kinds in turn (every
    kind at least once when count allows), the order shuffled."""
    kinds = list(only or FAULTS)
    plan = [kinds[i % len(kinds)] for i in range(count)]
    rng.shuffle(plan)
    started = time.monotonic()
    times = sorted(rng.uniform(0.1 * seconds, 0.8 * seconds) for _ in plan)
    for at, fault in zip(times, plan, strict=True):
        if stop.wait(max(0.0, started + at - time.monotonic())):
            return
        print(f"  t={time.monotonic() - started:5.1f}s fault: {fault}", flush=True)
        tally.faults[fault] += 1
        inject(topology, fault, rng, stop)


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


# --- invariants -----------------------------------------------------------------------------


def verify(topology: Topology, tally: Tally) -> None:
    base = topology.service.url
    http = requests.Session()
    with Database.connect(topology.database.url) as db:
        rows = db.execute(
            "SELECT id, conversation_id, seq, role, content, status, created_at FROM messages"
        ).fetchall()
        titles = [title for (title,) in db.execute("SELECT title FROM tasks").fetchall()]
        claimed = db.execute(
            "SELECT count(*) FROM conversations WHERE active_turn_id IS NOT NULL"
        ).fetchone()[0]
    by_id = {row[0]: row for row in rows}
    by_position = {(row[1], row[2]): row for row in rows}
    tally.counts["messages stored"] = len(rows)

    # every 200 stored with its reply, after the user message that carries its key
    for key, answers in tally.ok.items():
        first = answers[0]
        for kind, _owner, conversation, message_id, text, _replayed in answers:
            if (conversation, message_id) != (first[2], first[3]):
                tally.violation("replay_differs", f"{key}: {first[3]} then {message_id}")
            row = by_id.get(message_id)
            if row is None or row[3] != "assistant" or row[5] != "completed" or row[4] != text:
                state = None if row is None else (row[3], row[5], row[4][:40])
                tally.violation("lost_200", f"{kind} {key} {message_id}: stored as {state}")
                continue
            # the reply follows its user message (a retried turn's reply follows the replies
            # its failed attempts left)
            seq, asked = row[2] - 1, None
            while seq > 0:
                asked = by_position.get((conversation, seq))
                if asked is None or asked[3] == "user":
                    break
                seq -= 1
            if asked is None or f"[{key}]" not in asked[4]:
                shown = None if asked is None else (asked[2], asked[3], asked[4][:60])
                tally.violation("lost_200", f"{key}: the user message before its reply: {shown}")

    # no user message stored twice per key; no tool executed twice per key
    stored = collections.Counter(
        key for row in rows if row[3] == "user" for key in KEY.findall(row[4])
    )
    for key, n in stored.items():
        if n > 1:
            tally.violation("user_message_twice", f"{key} stored {n} times")
    tools = collections.Counter(
        key for title in titles for key in re.findall(r"\bk[0-9a-f]{12}\b", title)
    )
    for key, n in tools.items():
        if n > 1:
            tally.violation("tool_twice", f"add_task ran {n} times for {key}")
    tally.counts["tasks created by the model"] = len(
        [title for title in titles if title.startswith("soak ")]
    )
    # a task naming several keys: the model was handed a failed turn's request with the next
    # one (issue 23, point 2); it shows in tool_twice when the failed key was retried too
    tally.counts["model tasks naming several keys"] = len(
        [title for title in titles if len(re.findall(r"\bk[0-9a-f]{12}\b", title)) > 1]
    )
    tally.counts["keys with a 200"] = len(tally.ok)

    # nothing pending, nothing claimed
    for row in rows:
        if row[5] == "pending":
            tally.violation("pending", f"message {row[0]} still pending")
    for _ in range(claimed):
        tally.violation("pending", "a conversation still claimed by a turn")

    # history ordered: in the database (seq, time) and through the API
    conversations = collections.defaultdict(list)
    for row in rows:
        conversations[row[1]].append(row)
    for conversation, messages in conversations.items():
        messages.sort(key=lambda row: row[2])
        for earlier, later in zip(messages, messages[1:], strict=False):
            if later[2] == earlier[2] or later[6] < earlier[6] or later[3] == earlier[3] == "user":
                tally.violation("history_order", f"{conversation}: seq {earlier[2]}, {later[2]}")
    owners = {(a[0], a[1], a[2]) for answers in tally.ok.values() for a in answers}
    secret = topology.env["JWT_SECRET"]
    for _kind, owner, conversation in sorted(owners):
        http.headers["Authorization"] = f"Bearer {token(owner, secret)}"
        url = f"{base}/api/{owner}/conversations/{conversation}"  # sessions too: they are owned
        shown = api_history(http, url, tally)
        if shown is None:
            continue
        stored_ids = [row[0] for row in sorted(conversations[conversation], key=lambda r: r[2])]
        if [message["id"] for message in shown] != stored_ids:
            tally.violation("history_order", f"{url}: the API's order differs from seq order")
        times = [message["created_at"] for message in shown]
        if times != sorted(times):
            tally.violation("history_order", f"{url}: created_at goes back")
        if any(message["status"] == "pending" for message in shown):
            tally.violation("pending", f"{url}: a message shows pending")
    tally.counts["conversations checked through the API"] = len(owners)


def api_history(http: requests.Session, url: str, tally: Tally) -> list[dict] | None:
    """Every message of a conversation through the API, oldest first."""
    pages: list[list[dict]] = []
    cursor = None
    for _ in range(100):
        params = {"limit": 100}
        if cursor:
            params["cursor"] = cursor
        response = http.get(url, params=params, timeout=30)
        if response.status_code != 200:
            tally.violation("api_read_failed", f"{url} {response.status_code}")
            return None
        data = response.json()
        pages.insert(0, data["messages"])
        cursor = data.get("next_cursor")
        if not cursor:
            break
    return [message for page in pages for message in page]


def cleanup(topology: Topology) -> str:
    done = subprocess.run(
        [str(harness.BIN / "flask"), "--app", "chatsvc", "sessions", "cleanup"],
        cwd=harness.REPO,
        env={**os.environ, **topology.env},
        capture_output=True,
        text=True,
        timeout=120,
    )
    if done.returncode:
        raise RuntimeError(f"sessions cleanup failed: {done.stderr[-2000:]}")
    return done.stdout.strip()


# --- main -----------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.soak", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--seconds", type=float, default=300)
    parser.add_argument("--users", type=int, default=20)
    parser.add_argument("--faults", type=int, help="how many (default: one per 15 s, >= 4)")
    parser.add_argument("--only", action="append", choices=FAULTS, help="these fault kinds only")
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument(
        "--stale-seconds", type=int, default=TURN_STALE_S, help="the service's TURN_STALE_SECONDS"
    )
    args = parser.parse_args(argv)
    url = os.environ.get("SOAK_DATABASE_URL") or os.environ.get("TEST_DATABASE_URL")
    if not url or not url.startswith("postgresql"):
        print("set SOAK_DATABASE_URL (or TEST_DATABASE_URL) to a PostgreSQL URL", file=sys.stderr)
        return 2
    seed = args.seed if args.seed is not None else random.randrange(1 << 30)
    rng = random.Random(seed)
    faults = args.faults if args.faults is not None else max(4, round(args.seconds / 15))
    run = uuid.uuid4().hex[:6]
    # a SIGTERM (a CI timeout) unwinds like Ctrl-C, so that everything below is cleaned up
    signal.signal(signal.SIGTERM, lambda signum, frame: signal.default_int_handler(signum, frame))
    tmp = Path(tempfile.mkdtemp(prefix="chatsvc-soak-"))
    tally = Tally()
    started = time.monotonic()
    try:
        topology = start(tmp, url, args.stale_seconds)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    stop_event = threading.Event()
    try:
        print(
            f"soak {run}: {args.users} users, {args.seconds:.0f} s, {faults} faults, seed {seed};"
            f" service {topology.service.url}, log {topology.service.log}",
            flush=True,
        )
        users = [
            User(i, topology.service.url, run, topology.env["JWT_SECRET"], tally, stop_event)
            for i in range(args.users)
        ]
        for user in users:
            user.start()
        chaos_thread = threading.Thread(
            target=chaos,
            args=(topology, args.seconds, faults, args.only or [], tally, rng, stop_event),
            daemon=True,
        )
        chaos_thread.start()
        health = threading.Thread(
            target=watch_health, args=(topology.service.url, tally, stop_event), daemon=True
        )
        health.start()
        stop_event.wait(args.seconds)
        stop_event.set()
        chaos_thread.join(timeout=30)
        # heal: everything back, then let the clients finish their retries
        if topology.proxy._listener is None:  # cut when the run ended
            topology.proxy.restore()
        if topology.redis.process is None:
            topology.redis.start()
        topology.model.mode = "ok"
        for user in users:
            user.join(timeout=120)
        stuck = [user.name for user in users if user.is_alive()]
        if stuck:
            tally.violation("client_stuck", ", ".join(stuck))
        # turns a killed worker left pending are failed by cleanup once stale
        time.sleep(args.stale_seconds + 1)
        print(f"  cleanup: {cleanup(topology)}", flush=True)
        verify(topology, tally)
    finally:
        stop_event.set()
        stop(topology)
        shutil.rmtree(tmp, ignore_errors=True)
    log_errors(topology.service.log)
    return report(tally, time.monotonic() - started, topology.model.calls)


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
        print(f"service log error x{n}: {message}")


def report(tally: Tally, elapsed: float, calls: collections.Counter) -> int:
    print(f"elapsed: {elapsed:.0f} s")
    for name in sorted(tally.counts):
        print(f"{name}: {tally.counts[name]}")
    print("faults: " + ", ".join(f"{kind}={tally.faults[kind]}" for kind in FAULTS))
    print("model requests: " + ", ".join(f"{mode}={n}" for mode, n in sorted(calls.items())))
    spans = sorted(tally.conflict_spans)
    if spans:
        print(f"keys that met 409: {len(spans)}, longest from first to last 409: {spans[-1]:.1f} s")
    print("statuses: " + ", ".join(f"{s}={n}" for s, n in sorted(tally.statuses.items(), key=str)))
    invariants = (
        "lost_200", "replay_differs", "user_message_twice", "tool_twice", "pending",
        "history_order", "status_500", "5xx_without_problem", "missing_retry_after",
        "unavailable_retry_after", "health_live",
        "api_read_failed", "client_exception", "client_stuck",
    )  # fmt: skip
    for name in invariants:
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
