"""The soak's users and what they saw.

Every chat POST carries an Idempotency-Key (also written into the message) and is retried with
the same key after a 5xx, a 409, a 429 or a dropped connection. With `resumes`, a client that
leaves a stream mid-answer comes back on GET …/messages/{id}/events with Last-Event-ID (through
nginx: often on the other instance) and reads the rest: ids must follow on, the text must be
the reply's.
"""

from __future__ import annotations

import collections
import json
import random
import threading
import time
import uuid
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

import requests

from chatsvc.auth import create_token

MAX_ATTEMPTS = 8
RESUME_SECONDS = 60  # a resume that has not ended by then hangs (pings keep the socket busy)
# The contract gives Retry-After on a 429 and on 503 overloaded; on 503 upstream_busy when the
# provider sent one (the fake model always does). A 503 unavailable (the database went away)
# must carry one too (issue 23, point 4), and it must be about this request: a short one.
RETRY_AFTER_CODES = {"upstream_busy", "overloaded", "rate_limited"}
UNAVAILABLE_RETRY_AFTER_MAX_S = 30


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
    # when a fault that loses logged events struck (monotonic), and which: Redis killed (the
    # log with it), a worker or instance killed (the events it had not stored yet)
    events_lost: list[tuple[float, str]] = field(default_factory=list)

    def count(self, name: str, n: int = 1) -> None:
        with self.lock:
            self.counts[name] += n

    def status(self, status: int | str) -> None:
        with self.lock:
            self.statuses[status] += 1

    def example(self, name: str, example: str) -> None:
        with self.lock:
            if len(self.examples[name]) < 5:
                self.examples[name].append(example[:300])

    def violation(self, name: str, example: str) -> None:
        with self.lock:
            self.violations[name] += 1
            if len(self.examples[name]) < 5:
                self.examples[name].append(example[:300])


def check_error(tally: Tally, where: str, response: requests.Response) -> dict[str, Any]:
    """A 4xx/5xx answer: a problem body, Retry-After where the contract gives one, never 500."""
    tally.status(response.status_code)
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
    tally.status(f"frame {status}")
    if "code" not in problem:
        tally.violation("5xx_without_problem", f"{where} error frame {problem}")
    if status == 500 or problem.get("code") == "internal_error":
        tally.violation("status_500", f"{where} error frame {problem.get('code')}")


class Dropped(Exception):
    """The connection broke (or a stream ended without done/error)."""


@dataclass
class Stream:
    """One turn's stream as the client read it, over one connection or several (resumes)."""

    where: str
    started: float = field(default_factory=time.monotonic)
    meta: dict[str, Any] = field(default_factory=dict)
    last_id: int = 0
    text: str = ""
    left: bool = False  # the client left on purpose (it may come back with a resume)


class User(threading.Thread):
    def __init__(
        self,
        index: int,
        base: str,
        run: str,
        secret: str,
        tally: Tally,
        stop: threading.Event,
        resumes: bool = False,
    ) -> None:
        super().__init__(daemon=True, name=f"user-{index}")
        self.user = f"soak-{run}-{index}"
        self.base = base
        self.tally = tally
        self.stop = stop
        self.resumes = resumes
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
                    stream = self.random.random() < 0.4
                    self.turn("session", stream=stream, leave=stream and self.leaves_session())
                else:
                    self.tasks()
            except Exception as error:  # the soak goes on; the harness's own bug is counted
                self.tally.violation("client_exception", repr(error))
            self.stop.wait(self.random.uniform(0.1, 0.6))

    def leaves_session(self) -> bool:
        # without resumes, session streams are read to the end (as before resumes existed)
        return self.resumes and self.random.random() < 0.15

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
            read = Stream(where=f"{kind} {'stream' if stream else 'json'} key={key}")
            try:
                leaves = leave and not attempt
                outcome, wait = self.attempt(kind, url, body, key, stream, read, leaves)
            except Dropped:
                if read.left:
                    self.tally.count("left mid-stream")
                    if not self.resumes:
                        return  # a client that leaves does not come back for the answer
                    outcome, wait = self.resume(kind, key, read)
                else:
                    self.tally.count("dropped connections")
                    outcome, wait = "retry", None
            if outcome in ("done", "give_up"):
                return
            pause = min(0.3 * 2**attempt, 4.0) if wait is None else min(wait, 8.0)
            time.sleep(pause * self.random.uniform(0.8, 1.2))  # the run's end waits for these
        self.tally.count("keys given up")

    def attempt(
        self, kind: str, url: str, body: dict, key: str, stream: bool, read: Stream, leave: bool
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
        with response:
            if response.status_code != 200:
                problem = check_error(self.tally, read.where, response)
                return self.after_error(response.status_code, problem, response)
            self.tally.status(200)
            replayed = response.headers.get("Idempotent-Replayed") == "true"
            if not stream:
                try:
                    data = response.json()
                except ValueError as error:
                    raise Dropped("truncated JSON") from error
            else:
                # leave after meta, or after the first delta
                leave_at = ("meta", "delta")[self.random.random() < 0.5] if leave else None
                data = self.read_stream(response, read, leave_at, replayed)
                if "problem" in data:
                    problem = data["problem"]
                    return self.after_error(int(problem.get("status") or 0), problem, None)
        self.settled(kind, key, data, replayed)
        return "done", None

    def read_stream(
        self,
        response: requests.Response,
        read: Stream,
        leave_at: str | None = None,
        replayed: bool = False,
    ) -> dict[str, Any]:
        """Frames until done ({the body}) or error ({"problem": …}); every frame's id must be
        the one after the last this stream saw (over all its connections), the deltas must add
        up to the done body's response (not in an idempotent replay: `meta` and `done` only,
        contract §1)."""
        event = None
        deadline = time.monotonic() + RESUME_SECONDS
        frames = 0  # on this connection
        try:
            for line in response.iter_lines(decode_unicode=True):
                if time.monotonic() > deadline:
                    self.tally.violation("stream_hung", f"{read.where}: open {RESUME_SECONDS} s")
                    raise Dropped("hung")
                if line.startswith("id:"):
                    number = int(line.split(":", 1)[1])
                    if number != read.last_id + 1:
                        self.tally.violation(
                            "stream_ids", f"{read.where}: id {number} after {read.last_id}"
                        )
                    read.last_id = number
                elif line.startswith("event:"):
                    event = line.split(":", 1)[1].strip()
                elif line.startswith("data:"):
                    frames += 1
                    data = json.loads(line.split(":", 1)[1])
                    if event == "meta":
                        read.meta = data
                    elif event == "delta":
                        read.text += data.get("text", "")
                    if event == leave_at:
                        read.left = True
                        raise Dropped("left")
                    if event == "done":
                        reply = str(data.get("response"))
                        if replayed:
                            self.tally.count("replayed streams")
                        elif reply != read.text and self.log_lost(read, frames, reply):
                            self.tally.count("resumes ended by the stored reply (log lost)")
                        elif reply != read.text:
                            self.tally.violation(
                                "stream_text",
                                f"{read.where} {read.meta.get('message_id')} after"
                                f" {time.monotonic() - read.started:.1f} s: deltas"
                                f" {read.text[:50]!r}, done {reply[:50]!r}",
                            )
                        return data
                    if event == "error":
                        problem_frame(self.tally, read.where, data)
                        return {"problem": data}
        except (requests.RequestException, ValueError) as error:
            raise Dropped(repr(error)) from error
        raise Dropped("stream ended without done or error")

    def log_lost(self, read: Stream, frames: int, reply: str) -> bool:
        """A resumed stream whose `done` came alone: the contract's ending of a log that has
        expired, or lost events — only when a fault that loses them struck while the stream
        lived (Redis killed: the log with it; a worker or instance killed: the events it had
        not stored yet); the text read before must still begin the reply."""
        if not read.where.endswith("resume") or frames != 1 or not reply.startswith(read.text):
            return False
        with self.tally.lock:
            struck = [(at, kind) for at, kind in self.tally.events_lost if read.started <= at]
        if struck:
            at, kind = struck[-1]
            self.tally.example(
                "resumes ended by the stored reply (log lost)",
                f"{read.where}: {kind} {time.monotonic() - at:.1f} s before the done",
            )
        return bool(struck)

    def resume(self, kind: str, key: str, read: Stream) -> tuple[str, float | None]:
        """GET the turn's events after the last id seen until done or error; a dropped resume
        resumes again from where it got. done: the turn is settled; error: the POST is retried
        with its key, as after an error frame."""
        meta = read.meta
        if kind == "user":
            owner = f"{self.base}/api/{self.user}/conversations/{meta.get('conversation_id')}"
        else:
            owner = f"{self.base}/api/session/{meta.get('session_id')}"
        url = f"{owner}/messages/{meta.get('message_id')}/events"
        read.where += " resume"
        for attempt in range(MAX_ATTEMPTS):
            self.tally.count("resumes" if not attempt else "resumes retried")
            self.stop.wait(self.random.uniform(0.0, 1.0))  # back after a moment, or at once
            headers = {"Accept": "text/event-stream", "Last-Event-ID": str(read.last_id)}
            try:
                response = self.http.get(url, headers=headers, stream=True, timeout=(3, 40))
            except requests.RequestException:
                self.tally.count("resumes dropped")
                continue
            with response:
                if response.status_code != 200:
                    problem = check_error(self.tally, read.where, response)
                    if response.status_code >= 500 or response.status_code == 429:
                        time.sleep(min(float(response.headers.get("Retry-After", 1)), 8.0))
                        continue
                    self.tally.violation(
                        "resume_refused", f"{read.where}: {response.status_code} {problem}"
                    )
                    return "retry", None
                try:
                    data = self.read_stream(response, read)
                except Dropped:
                    self.tally.count("resumes dropped")
                    continue
            if "problem" in data:
                self.tally.count("resumes ended in error")
                problem = data["problem"]
                return self.after_error(int(problem.get("status") or 0), problem, None)
            self.tally.count("resumes completed")
            self.settled(kind, key, data, replayed=False)
            return "done", None
        return "retry", None

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
            self.tally.status(response.status_code)


def token(user: str, secret: str) -> str:
    return create_token(user, secret=secret, ttl=timedelta(hours=2))
