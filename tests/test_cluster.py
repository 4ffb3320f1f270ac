"""Two hosts behind nginx (issue 17, README "Several hosts"): `python -m bench.cluster` — what
`make cluster` runs — starts two gunicorn instances sharing PostgreSQL and Redis behind nginx
(deploy/nginx/chatsvc.conf, round robin). Through nginx, requests alternate between the
instances, and the promises that need shared state hold across them: the chat rate limit, the
one-turn-per-conversation rule, idempotency, the client's address (X-Forwarded-For) for the
anonymous limiter, a turn's event log (resume on the other instance), cancel and background
turns. nginx never sends a forwarded POST twice, answers its own failures with problem bodies
and routes around a dead instance. One cluster serves the module; Ctrl-C stops every process it
started."""

from __future__ import annotations

import http.client
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import redis
from conftest import ROOT, empty_tables, require_service
from fakellm import FakeLLM, endless, say
from helpers import children, free_port, wait_for
from sqlalchemy import create_engine

# Every test runs against the one cluster, on PostgreSQL (hosts cannot share a SQLite file).
pytestmark = pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)

CHAT_BUDGET = 8  # RATELIMIT_CHAT of the cluster, per caller and minute
LEASE_SECONDS = 3  # TURN_LEASE_SECONDS: how soon a dead worker's turn is taken over


@dataclass
class Reply:
    status: int
    headers: dict[str, str]
    body: Any
    instance: str  # "a" or "b": which instance answered (nginx's X-Upstream), or "nginx"


@dataclass
class Cluster:
    url: str
    port: int
    state: dict[str, Any]
    process: subprocess.Popen
    model: FakeLLM
    names: dict[str, str] = field(default_factory=dict)  # "127.0.0.1:port" → instance name

    def instance(self, headers: dict[str, str]) -> str:
        """The instance that answered; "nginx" for what nginx answered itself. (nginx lists
        every instance it tried: one it could not reach, then the one that answered.)"""
        if "x-upstream" not in headers:
            return "nginx"
        return self.names[headers["x-upstream"].split(", ")[-1]]

    def log(self, name: str) -> str:
        return Path(self.of(name)["log"]).read_text(errors="replace")

    def of(self, name: str) -> dict[str, Any]:
        return next(i for i in self.state["instances"] if i["name"] == name)

    def both_serving(self) -> None:
        """Until nginx sends requests to both instances again (one that failed a request sits
        out nginx's fail_timeout, 10 s)."""
        answered: list[str] = []

        def alternating() -> bool:
            answered.append(self.request("GET", "/health/live").instance)
            return set(answered[-2:]) == {"a", "b"}

        wait_for(alternating, 20, "both instances to serve")

    def request(
        self, method: str, path: str, body: Any = None, source: str = "127.0.0.1", **headers: str
    ) -> Reply:
        """One request through nginx, from `source` (any address of 127/8 is this machine)."""
        with self.connect(method, path, body, source, headers) as response:
            data = response.read()
            found = {name.lower(): value for name, value in response.getheaders()}
            parsed = json.loads(data) if data and "json" in found.get("content-type", "") else data
            return Reply(response.status, found, parsed, self.instance(found))

    @contextmanager
    def connect(
        self, method: str, path: str, body: Any, source: str, headers: dict[str, str]
    ) -> Iterator[http.client.HTTPResponse]:
        connection = http.client.HTTPConnection(
            "127.0.0.1", self.port, timeout=30, source_address=(source, 0)
        )
        try:
            payload = None if body is None else json.dumps(body).encode()
            if payload is not None:
                headers = {"Content-Type": "application/json", **headers}
            connection.request(method, path, body=payload, headers=headers)
            yield connection.getresponse()
        finally:
            connection.close()


@pytest.fixture(scope="module")
def cluster(database_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    """`python -m bench.cluster` against the test database and Redis, its agent the fake model;
    stopped with Ctrl-C (SIGINT) at the end, which must leave none of its processes behind."""
    redis_url = require_service("TEST_REDIS_URL", "Redis")
    if not (shutil.which("nginx") or shutil.which("nginx", path="/usr/sbin:/sbin")):
        require_service("NGINX_BIN", "nginx (apt-get install nginx-light)")
    model = FakeLLM()
    directory = tmp_path_factory.mktemp("cluster")
    port = free_port()
    env = {
        **os.environ, "CHATSVC_ENV": "development", "LOG_FORMAT": "json", "LOG_LEVEL": "INFO",
        "AGENT_PROVIDER": "openai", "OPENAI_BASE_URL": model.url, "OPENAI_API_KEY": "sk-test",
        "OPENAI_MODEL": "fake-model", "AGENT_MAX_RETRIES": "0", "AGENT_TIMEOUT_SECONDS": "20",
        "RATELIMIT_CHAT": f"{CHAT_BUDGET} per minute", "RATELIMIT_DEFAULT": "1000 per minute",
        "TURN_LEASE_SECONDS": str(LEASE_SECONDS),
    }  # fmt: skip
    state_file = directory / "state.json"
    argv = [sys.executable, "-m", "bench.cluster", "--port", str(port), "--workers", "1",
            "--database-url", database_url, "--redis-url", redis_url,
            "--dir", str(directory), "--state-file", str(state_file)]  # fmt: skip
    output = directory / "cluster.out"
    with open(output, "wb") as sink:
        process = subprocess.Popen(argv, cwd=ROOT, env=env, stdout=sink, stderr=subprocess.STDOUT)
    try:
        started = wait_for(
            lambda: state_file.exists() or process.poll() is not None, 120, "the cluster to start"
        )
        assert started and process.poll() is None, output.read_text()
        state = json.loads(state_file.read_text())
    except BaseException:
        stop(process, model, database_url)
        raise
    names = {i["url"].removeprefix("http://"): i["name"] for i in state["instances"]}
    yield Cluster(state["url"], port, state, process, model, names)
    masters = [instance["pid"] for instance in state["instances"]]
    ours = [state["nginx_pid"], *masters, *[pid for m in masters for pid in children(m)]]
    code = stop(process, model, database_url)
    assert code == 0, output.read_text()[-3000:]
    assert not [pid for pid in ours if alive(pid)], output.read_text()[-3000:]


def stop(process: subprocess.Popen, model: FakeLLM, database_url: str) -> int:
    """Ctrl-C to the cluster; its exit status. What the tests stored is deleted."""
    process.send_signal(signal.SIGINT)
    try:
        return process.wait(timeout=90)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        model.close()
        empty_tables(create_engine(database_url))


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def someone() -> str:
    return f"cl-{uuid.uuid4().hex[:10]}"


def an_address() -> str:
    """A client address of its own: budgets by address start afresh in every run."""
    return f"127.{random.randrange(1, 255)}.{random.randrange(256)}.{random.randrange(1, 255)}"


def sse_events(response: http.client.HTTPResponse) -> Iterator[tuple[str, int, dict[str, Any]]]:
    """(event, id, data) as each event arrives on a live stream."""
    fields: dict[str, str] = {}
    while line := response.readline():
        line = line.decode().rstrip("\r\n")
        if line:
            if not line.startswith(":"):
                name, _, value = line.partition(": ")
                fields[name] = value
            continue
        if "event" in fields:
            yield fields["event"], int(fields["id"]), json.loads(fields["data"])
        fields = {}


def headers_of(response: http.client.HTTPResponse) -> dict[str, str]:
    return {name.lower(): value for name, value in response.getheaders()}


def test_requests_alternate_between_the_two_instances(cluster):
    user = someone()
    ids = [uuid.uuid4().hex for _ in range(6)]
    replies = [cluster.request("GET", f"/api/{user}/tasks", **{"X-Request-ID": i}) for i in ids]
    assert [r.status for r in replies] == [200] * 6
    served = [r.instance for r in replies]
    assert served in (["a", "b"] * 3, ["b", "a"] * 3), served
    # The header tells the truth: each request is in the access log of the instance it names.
    for request_id, instance in zip(ids, served, strict=True):
        other = "b" if instance == "a" else "a"
        wait_for(lambda: request_id in cluster.log(instance), 10, "the access line")  # noqa: B023
        assert request_id not in cluster.log(other)


def test_the_chat_rate_limit_holds_across_both_instances(cluster):
    user = someone()
    replies = [
        cluster.request("POST", f"/api/{user}/chat", {"message": f"hello {n}"})
        for n in range(CHAT_BUDGET + 3)
    ]
    assert [r.status for r in replies] == [200] * CHAT_BUDGET + [429] * 3
    # One count in Redis: each instance's answer continues the other's.
    remaining = [int(r.headers["x-ratelimit-remaining"]) for r in replies[:CHAT_BUDGET]]
    assert remaining == list(range(CHAT_BUDGET - 1, -1, -1))
    assert {r.instance for r in replies[:CHAT_BUDGET]} == {"a", "b"}
    assert {r.instance for r in replies[CHAT_BUDGET:]} == {"a", "b"}
    for refused in replies[CHAT_BUDGET:]:
        assert refused.body["code"] == "rate_limited" and int(refused.headers["retry-after"]) > 0


def test_a_turn_running_on_one_instance_is_409_on_the_other(cluster):
    user = someone()
    first = cluster.request("POST", f"/api/{user}/chat", {"message": "start"})
    conversation = first.body["conversation_id"]
    words = " ".join(f"w{n}" for n in range(16))
    cluster.model.script(say(words, chunk_delay=0.15))
    body = {"message": "a slow one", "conversation_id": conversation}
    stream = {"Accept": "text/event-stream"}
    with cluster.connect("POST", f"/api/{user}/chat", body, "127.0.0.1", stream) as response:
        running_on = cluster.instance(headers_of(response))
        events = sse_events(response)
        assert next(e for e, _, _ in events if e == "delta")
        second = cluster.request("POST", f"/api/{user}/chat", body)
        assert second.instance != running_on
        assert second.status == 409 and second.body["code"] == "turn_in_progress", second.body
        rest = [(name, data) for name, _, data in events]
    assert rest[-1][0] == "done" and rest[-1][1]["response"] == words
    after = cluster.request("POST", f"/api/{user}/chat", body)
    assert after.status == 200, after.body
    history = cluster.request("GET", f"/api/{user}/conversations/{conversation}?limit=50")
    said = [(m["role"], m["content"]) for m in history.body["messages"]]
    assert said == [
        ("user", "start"), ("assistant", "fake: start"),
        ("user", "a slow one"), ("assistant", words),
        ("user", "a slow one"), ("assistant", "fake: a slow one"),
    ]  # fmt: skip


def test_one_idempotency_key_on_both_instances_stores_one_turn(cluster):
    user = someone()
    key = {"Idempotency-Key": uuid.uuid4().hex}
    asked = len(cluster.model.requests)
    first = cluster.request("POST", f"/api/{user}/chat", {"message": "once only"}, **key)
    again = cluster.request("POST", f"/api/{user}/chat", {"message": "once only"}, **key)
    assert (first.status, again.status) == (200, 200), (first.body, again.body)
    assert first.instance != again.instance
    assert again.headers.get("idempotent-replayed") == "true"
    assert "idempotent-replayed" not in first.headers
    assert again.body["message_id"] == first.body["message_id"]
    assert again.body["conversation_id"] == first.body["conversation_id"]
    assert len(cluster.model.requests) == asked + 1  # one agent run
    conversation = first.body["conversation_id"]
    history = cluster.request("GET", f"/api/{user}/conversations/{conversation}")
    assert [m["role"] for m in history.body["messages"]] == ["user", "assistant"]


def test_one_idempotency_key_sent_to_both_instances_at_once_runs_once(cluster):
    user = someone()
    key = {"Idempotency-Key": uuid.uuid4().hex}
    cluster.model.script(say("slowly once", delay=1.5))
    asked = len(cluster.model.requests)
    replies: list[Reply] = []
    first = threading.Thread(
        target=lambda: replies.append(
            cluster.request("POST", f"/api/{user}/chat", {"message": "race"}, **key)
        )
    )
    first.start()
    wait_for(lambda: len(cluster.model.requests) > asked, 10, "the first turn to reach the model")
    second = cluster.request("POST", f"/api/{user}/chat", {"message": "race"}, **key)
    first.join(timeout=30)
    assert replies[0].status == 200 and replies[0].body["response"] == "slowly once"
    assert second.instance != replies[0].instance
    assert second.status == 409 and second.body["code"] == "turn_in_progress", second.body
    replayed = cluster.request("POST", f"/api/{user}/chat", {"message": "race"}, **key)
    assert replayed.body["message_id"] == replies[0].body["message_id"]
    assert len(cluster.model.requests) == asked + 1


def test_the_anonymous_limit_counts_the_clients_address_behind_nginx(cluster):
    """Without a token, chat is counted by client address: nginx's X-Forwarded-For carries it
    (PROXY_FIX_X_FOR=1), so each client has a budget — not one for everyone behind the proxy —
    and a client's own X-Forwarded-For buys it nothing."""
    spender, bystander = an_address(), an_address()
    try:
        replies = [
            cluster.request("POST", "/api/chat", {"message": "hi"}, source=spender)
            for _ in range(CHAT_BUDGET + 2)
        ]
        assert [r.status for r in replies] == [200] * CHAT_BUDGET + [429] * 2
        assert {r.instance for r in replies} == {"a", "b"}
        forged = {"X-Forwarded-For": an_address()}
        for _ in range(2):  # on each instance
            refused = cluster.request("POST", "/api/chat", {"message": "hi"}, spender, **forged)
            assert refused.status == 429 and refused.body["code"] == "rate_limited"
        other = cluster.request("POST", "/api/chat", {"message": "hi"}, source=bystander)
        assert other.status == 200, other.body
        assert int(other.headers["x-ratelimit-remaining"]) == CHAT_BUDGET - 1
    finally:
        client = redis.Redis.from_url(os.environ["TEST_REDIS_URL"])
        for address in (spender, bystander):
            for found in client.scan_iter(match=f"LIMITS:*addr:{address}*"):
                client.delete(found)


def test_a_stream_dropped_on_one_instance_resumes_on_the_other_then_on_its_own(cluster):
    """Spec §5: the turn goes on when its client leaves; `GET …/events` with Last-Event-ID
    replays what was missed and follows the live turn, exactly once and in order, on whichever
    instance nginx picks (the event log is in the shared Redis)."""
    user = someone()
    words = " ".join(f"word{n}" for n in range(24))
    cluster.model.script(say(words, chunk_delay=0.1))
    stream = {"Accept": "text/event-stream"}
    body = {"message": "tell me slowly"}
    seen: list[tuple[str, int, dict[str, Any]]] = []
    with cluster.connect("POST", f"/api/{user}/chat", body, "127.0.0.1", stream) as response:
        running_on = cluster.instance(headers_of(response))
        for event in sse_events(response):
            seen.append(event)
            if sum(name == "delta" for name, _, _ in seen) == 3:
                break  # the client drops the connection here
    meta = seen[0][2]
    events_path = (
        f"/api/{user}/conversations/{meta['conversation_id']}/messages/{meta['message_id']}/events"
    )
    arrivals: list[float] = []  # of the live deltas, on the last resume
    for hop in ("other", "same"):
        last = {"Last-Event-ID": str(seen[-1][1])}
        with cluster.connect("GET", events_path, None, "127.0.0.1", {**stream, **last}) as response:
            assert response.status == 200
            served_by = cluster.instance(headers_of(response))
            assert (served_by == running_on) == (hop == "same"), (hop, served_by, running_on)
            for event in sse_events(response):
                seen.append(event)
                if hop == "other" and sum(name == "delta" for name, _, _ in seen) == 6:
                    break  # and drops again
                if hop == "same" and event[0] == "delta":
                    arrivals.append(time.monotonic())
    # nginx passed them on as they came (the model's last second), not buffered to the end
    assert arrivals[-1] - arrivals[0] > 0.5, arrivals
    assert [number for _, number, _ in seen] == list(range(1, len(seen) + 1))  # once, in order
    assert seen[0][0] == "meta" and seen[-1][0] == "done"
    told = "".join(data["text"] for name, _, data in seen if name == "delta")
    stored = cluster.request("GET", events_path.removesuffix("/events"))
    assert stored.status == 200 and stored.body["status"] == "completed"
    assert told == stored.body["content"] == seen[-1][2]["response"] == words


def test_a_finished_turn_replays_from_any_instance(cluster):
    user = someone()
    done = cluster.request("POST", f"/api/{user}/chat", {"message": "short"})
    path = f"/api/{user}/conversations/{done.body['conversation_id']}/messages/"
    path += f"{done.body['message_id']}/events"
    replays = []
    for _ in range(2):
        with cluster.connect("GET", path, None, "127.0.0.1", {"Accept": "text/event-stream"}) as r:
            replays.append((cluster.instance(headers_of(r)), list(sse_events(r))))
    assert {instance for instance, _ in replays} == {"a", "b"}
    assert replays[0][1] == replays[1][1]  # the same ids and events on both
    assert replays[0][1][-1][0] == "done"
    assert replays[0][1][-1][2]["response"] == "fake: short"


def test_a_session_turn_resumes_on_the_other_instance_through_the_session_route(cluster):
    words = " ".join(f"kb{n}" for n in range(12))
    cluster.model.script(say(words, chunk_delay=0.1))
    stream = {"Accept": "text/event-stream"}
    source = an_address()  # anonymous chat is counted by address: a budget of its own
    seen: list[tuple[str, int, dict[str, Any]]] = []
    with cluster.connect("POST", "/api/chat", {"message": "docs?"}, source, stream) as response:
        started_on = cluster.instance(headers_of(response))
        for event in sse_events(response):
            seen.append(event)
            if event[0] == "delta":
                break
    meta = seen[0][2]
    path = f"/api/session/{meta['session_id']}/messages/{meta['message_id']}/events"
    resume = {**stream, "Last-Event-ID": str(seen[-1][1])}
    with cluster.connect("GET", path, None, source, resume) as response:
        assert response.status == 200 and cluster.instance(headers_of(response)) != started_on
        seen.extend(sse_events(response))
    assert [number for _, number, _ in seen] == list(range(1, len(seen) + 1))
    assert seen[-1][0] == "done" and seen[-1][2]["session_id"] == meta["session_id"]
    assert "".join(data["text"] for name, _, data in seen if name == "delta") == words


def test_a_cancel_sent_to_the_other_instance_stops_the_turn_within_a_second(cluster):
    """Spec §5: `POST …/cancel` reaches the turn on whatever host runs it (Redis, shared)."""
    user = someone()
    cluster.model.script(endless(chunk_delay=0.05))
    stream = {"Accept": "text/event-stream"}
    seen: list[tuple[str, int, dict[str, Any]]] = []
    body = {"message": "go on forever"}
    with cluster.connect("POST", f"/api/{user}/chat", body, "127.0.0.1", stream) as response:
        running_on = cluster.instance(headers_of(response))
        events = sse_events(response)
        for event in events:
            seen.append(event)
            if sum(name == "delta" for name, _, _ in seen) == 3:
                break
        meta = seen[0][2]
        message = f"/api/{user}/conversations/{meta['conversation_id']}/messages/"
        message += meta["message_id"]
        asked = time.monotonic()
        cancel = cluster.request("POST", message + "/cancel")
        assert cancel.instance != running_on and cancel.status == 202, cancel.body
        seen.extend(events)  # to the end of the stream
        took = time.monotonic() - asked
    assert took < 1.0, f"the turn on the other instance stopped after {took:.2f} s"
    assert seen[-1][0] == "done" and seen[-1][2]["status"] == "cancelled"
    said = "".join(data["text"] for name, _, data in seen if name == "delta")
    stored = cluster.request("GET", message)
    assert stored.body["status"] == "cancelled" and stored.body["content"] == said != ""
    again = cluster.request("POST", message + "/cancel")
    assert again.status == 409 and again.body["code"] == "turn_finished"


def test_a_background_turn_started_on_one_instance_is_seen_and_replayed_on_the_other(cluster):
    """Spec §5: `Prefer: respond-async` → 202, the turn runs on; any instance shows it, refuses
    the same key while it runs, and replays it (same ids) once it is over."""
    user = someone()
    words = " ".join(f"bg{n}" for n in range(12))
    cluster.model.script(say(words, chunk_delay=0.1))
    asked = len(cluster.model.requests)
    background = {"Prefer": "respond-async", "Idempotency-Key": uuid.uuid4().hex}
    body = {"message": "in the background"}
    started = cluster.request("POST", f"/api/{user}/chat", body, **background)
    assert started.status == 202 and started.body["status"] == "pending", started.body
    links = started.body["links"]
    pending = cluster.request("GET", links["message"])
    assert pending.instance != started.instance and pending.body["status"] == "pending"
    running = cluster.request("POST", f"/api/{user}/chat", body, **background)
    other = cluster.request("POST", f"/api/{user}/chat", body, **background)
    assert {running.instance, other.instance} == {"a", "b"}
    for refused in (running, other):
        assert refused.status == 409 and refused.body["code"] == "turn_in_progress"
    with cluster.connect(
        "GET", links["events"], None, "127.0.0.1", {"Accept": "text/event-stream"}
    ) as response:
        assert response.status == 200
        events = list(sse_events(response))
    assert [number for _, number, _ in events] == list(range(1, len(events) + 1))
    assert events[-1][0] == "done" and events[-1][2]["status"] == "completed"
    assert "".join(data["text"] for name, _, data in events if name == "delta") == words
    final = cluster.request("GET", links["message"])
    assert final.body["status"] == "completed" and final.body["content"] == words
    for _ in range(2):  # on each instance
        replayed = cluster.request("POST", f"/api/{user}/chat", body, **background)
        assert replayed.status == 202 and replayed.headers["idempotent-replayed"] == "true"
        assert replayed.body == {**started.body, "status": "completed"}
    assert len(cluster.model.requests) == asked + 1  # the model ran once


# The last three fail instances: nginx then keeps one out for a while (fail_timeout).


def test_a_turn_cut_by_a_dying_instance_is_a_503_problem_sent_to_no_other(cluster):
    """nginx never sends a POST it forwarded to a second instance (the turn would run twice);
    the client gets the contract's 503 and retries with its key, which succeeds elsewhere once
    the dead worker's claim lapses."""
    cluster.both_serving()
    user = someone()
    key = {"Idempotency-Key": uuid.uuid4().hex}
    probe = cluster.request("GET", f"/api/{user}/tasks")
    target = "b" if probe.instance == "a" else "a"  # round robin: the next request's instance
    cluster.model.script(say("never heard", delay=5))
    asked = len(cluster.model.requests)
    replies: list[Reply] = []
    path, body = f"/api/{user}/chat", {"message": "cut short"}
    thread = threading.Thread(
        target=lambda: replies.append(cluster.request("POST", path, body, **key))
    )
    thread.start()
    wait_for(lambda: len(cluster.model.requests) > asked, 10, "the turn to reach the model")
    for worker in children(cluster.of(target)["pid"]):
        os.kill(worker, signal.SIGKILL)
    thread.join(timeout=30)
    cut = replies[0]
    assert (
        cut.instance == "nginx"
        and cut.status == 503
        and cut.headers["content-type"] == "application/problem+json"
    )
    assert cut.body["code"] == "unavailable" and cut.headers["retry-after"] == "2", cut.body
    assert cut.body["request_id"] == cut.headers["x-request-id"]
    assert len(cluster.model.requests) == asked + 1  # not sent again to the other instance
    deadline = time.monotonic() + LEASE_SECONDS + 20
    while (retried := cluster.request("POST", path, body, **key)).status == 409:
        assert retried.body["code"] == "turn_in_progress"
        assert time.monotonic() < deadline, "the dead worker's claim was never taken over"
        time.sleep(1)
    assert retried.status == 200 and retried.body["response"] == "fake: cut short", retried.body
    history = cluster.request("GET", f"/api/{user}/conversations/{retried.body['conversation_id']}")
    said = [
        (m["role"], m["content"], m["status"], m["error_code"]) for m in history.body["messages"]
    ]
    assert said == [
        ("user", "cut short", "completed", None),
        ("assistant", "", "failed", "interrupted"),  # the attempt the dead worker ran
        ("assistant", "fake: cut short", "completed", None),
    ]


def test_a_resume_on_the_other_instance_ends_with_error_when_the_turns_worker_dies(cluster):
    """Spec §5: a worker that dies mid-turn leaves the turn `failed` (`interrupted`) once its
    claim lapses, and its log ends with `error`: a resume on the other host ends, never hangs."""
    cluster.both_serving()
    user = someone()
    cluster.model.script(endless(chunk_delay=0.05))
    stream = {"Accept": "text/event-stream"}
    seen: list[tuple[str, int, dict[str, Any]]] = []
    body = {"message": "until my host dies"}
    with cluster.connect("POST", f"/api/{user}/chat", body, "127.0.0.1", stream) as response:
        running_on = cluster.instance(headers_of(response))
        for event in sse_events(response):
            seen.append(event)
            if sum(name == "delta" for name, _, _ in seen) == 3:
                break
        for worker in children(cluster.of(running_on)["pid"]):
            os.kill(worker, signal.SIGKILL)
    meta = seen[0][2]
    message = f"/api/{user}/conversations/{meta['conversation_id']}/messages/{meta['message_id']}"
    last = {"Last-Event-ID": str(seen[-1][1])}
    asked = time.monotonic()
    with cluster.connect("GET", message + "/events", None, "127.0.0.1", {**stream, **last}) as r:
        assert r.status == 200 and cluster.instance(headers_of(r)) != running_on
        rest = list(sse_events(r))
    took = time.monotonic() - asked
    assert took < LEASE_SECONDS + 5, f"the resume ended after {took:.1f} s"
    numbers = [number for _, number, _ in seen + rest]
    assert numbers == sorted(set(numbers)) and numbers[0] == 1  # in order, none twice
    assert rest[-1][0] == "error" and rest[-1][2]["code"] == "interrupted", rest[-1:]
    assert all(name == "delta" for name, _, _ in rest[:-1])
    stored = cluster.request("GET", message)
    assert stored.body["status"] == "failed" and stored.body["error_code"] == "interrupted"
    history = cluster.request("GET", f"/api/{user}/conversations/{meta['conversation_id']}")
    assert history.body["messages"][0]["content"] == "until my host dies"  # nothing lost


# Last: it stops an instance for good.
def test_with_one_instance_gone_nginx_sends_everything_to_the_other(cluster):
    gone = cluster.of("b")["pid"]
    os.kill(gone, signal.SIGTERM)
    wait_for(lambda: not alive(gone), 60, "instance b to stop")
    user = someone()
    # An instance that failed a request (the test before killed a worker) sits out nginx's
    # fail_timeout (10 s); a is back once it answers.
    wait_for(lambda: cluster.request("GET", "/health").instance == "a", 15, "a to serve again")
    replies = [cluster.request("GET", f"/api/{user}/tasks") for _ in range(4)]
    replies += [cluster.request("POST", f"/api/{user}/chat", {"message": n}) for n in "12"]
    assert [(r.status, r.instance) for r in replies] == [(200, "a")] * 6
    assert cluster.process.poll() is None  # the cluster goes on with one instance
