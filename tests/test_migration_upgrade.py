"""Upgrading a database that already holds data, in place, on both backends: the tasks of the
previous schema keep everything they had and gain due_date, priority and completed_at; the
conversations already stored become searchable."""

from __future__ import annotations

from helpers import ok
from sqlalchemy import text
from test_migrations import empty_database, flask  # noqa: F401  (the fixture, shared)

from chatsvc import create_app
from chatsvc.db import database

PREVIOUS = "7c1d9e4a2b60"
CONVERSATION = "0b5e3c1e-5d43-4c52-9d1f-3c2b8f0e9a11"
OLD_TASKS = [
    # user, number, title, description, completed, created, updated
    ("alice", 1, "buy milk", "two litres", False, "2026-11-20 09:00:00", "2026-11-20 09:00:00"),
    ("alice", 2, "walk the dog", "", True, "2026-11-20 10:00:00", "2026-11-21 08:30:00"),
    ("alice", 4, "pay rent", "", False, "2026-11-22 10:00:00", "2026-11-22 10:00:00"),
    ("bob", 1, "call mum", "", False, "2026-11-23 10:00:00", "2026-11-23 10:00:00"),
]


def seed_previous_schema(app) -> None:
    with database(app).engine.begin() as connection:
        for user, number, title, description, completed, created, updated in OLD_TASKS:
            connection.execute(
                text(
                    "INSERT INTO tasks (user_id, task_id, title, description, completed,"
                    " created_at, updated_at) VALUES (:u, :n, :t, :d, :c, :cr, :up)"
                ),
                {"u": user, "n": number, "t": title, "d": description, "c": completed,
                 "cr": created, "up": updated},
            )  # fmt: skip
        connection.execute(
            text(
                "INSERT INTO task_counters (user_id, last_task_id) VALUES ('alice', 4), ('bob', 1)"
            )
        )
        connection.execute(
            text(
                "INSERT INTO conversations (id, kind, user_id, title, created_at, last_activity,"
                " message_count, last_seq) VALUES (:id, 'user', 'alice', 'Garden plans',"
                " '2026-11-20 09:00:00', '2026-11-20 09:01:00', 2, 2)"
            ),
            {"id": CONVERSATION},
        )
        for seq, role, content in [(1, "user", "Fix the rusty gate"), (2, "assistant", "Noted.")]:
            connection.execute(
                text(
                    "INSERT INTO messages (id, conversation_id, seq, role, content, status,"
                    " tool_calls, sources, prompt_tokens, completion_tokens, total_tokens,"
                    " created_at) VALUES (:id, :c, :seq, :role, :content, 'completed', '[]',"
                    " '[]', 0, 0, 0, '2026-11-20 09:00:00')"
                ),
                {"id": f"m{seq}", "c": CONVERSATION, "seq": seq, "role": role, "content": content},
            )


def test_upgrade_keeps_existing_tasks_and_adds_the_new_fields(empty_database):  # noqa: F811
    app = create_app({"DATABASE_URL": empty_database})
    try:
        flask(app, "db", "upgrade", PREVIOUS)
        seed_previous_schema(app)
        flask(app, "db", "upgrade")
        flask(app, "db", "check")
        client = app.test_client()
        alice = ok(client.get("/api/alice/tasks"))["items"]
        assert [(t["task_id"], t["title"], t["completed"]) for t in alice] == [
            (1, "buy milk", False), (2, "walk the dog", True), (4, "pay rent", False)
        ]  # fmt: skip
        assert alice[0]["description"] == "two litres"
        assert alice[0]["created_at"] == "2026-11-20T09:00:00.000Z"
        assert all(t["priority"] == "normal" and t["due_date"] is None for t in alice)
        assert [t["completed_at"] for t in alice] == [None, "2026-11-21T08:30:00.000Z", None]
        # The upgraded rows work with the new features: filters, sorts, edits, new numbers.
        ok(client.patch("/api/alice/tasks/4", json={"due_date": "2026-12-01", "priority": "high"}))
        by_priority = ok(client.get("/api/alice/tasks?sort=-priority"))["items"]
        assert [t["task_id"] for t in by_priority] == [4, 1, 2]
        assert ok(client.post("/api/alice/tasks", json={"title": "new"}), 201)["task_id"] == 5
        assert ok(client.get("/api/bob/tasks?due_before=2027-01-01"))["items"] == []
        # Conversations stored before the upgrade are searchable: titles and message text.
        for q in ("rusty gate", "garden"):
            found = ok(client.get(f"/api/alice/conversations?q={q}"))["items"]
            assert [c["id"] for c in found] == [CONVERSATION], q
        assert ok(client.get("/api/bob/conversations?q=garden"))["items"] == []
        # And back: the downgrade keeps the rows (without the new columns).
        flask(app, "db", "downgrade", PREVIOUS)
        with database(app).engine.connect() as connection:
            rows = connection.execute(
                text("SELECT user_id, task_id, title FROM tasks ORDER BY user_id, task_id")
            ).all()
        assert [tuple(r) for r in rows] == [
            ("alice", 1, "buy milk"), ("alice", 2, "walk the dog"), ("alice", 4, "pay rent"),
            ("alice", 5, "new"), ("bob", 1, "call mum"),
        ]  # fmt: skip
    finally:
        database(app).engine.dispose()
