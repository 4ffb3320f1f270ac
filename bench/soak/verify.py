"""The invariants, checked after the run through the API and the database."""

from __future__ import annotations

import collections
import os
import re
import subprocess

import requests

from bench import harness
from bench.soak.clients import Tally, token
from bench.soak.topology import Database, Topology

KEY = re.compile(r"\[(k[0-9a-f]{12})\]")
INVARIANTS = (
    "lost_200", "replay_differs", "user_message_twice", "tool_twice", "pending",
    "history_order", "status_500", "5xx_without_problem", "missing_retry_after",
    "unavailable_retry_after", "health_live", "stream_ids", "stream_text", "stream_hung",
    "resume_refused", "api_read_failed", "client_exception", "client_stuck", "fault_failed",
)  # fmt: skip


def verify(topology: Topology, tally: Tally) -> None:
    base = topology.url
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
