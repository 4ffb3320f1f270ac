"""Tasks over plain REST (contract §2)."""

from __future__ import annotations

import threading

from helpers import FORGED_INT_CURSORS, assert_problem, ok, tasks

TASK_FIELDS = {
    "task_id",
    "title",
    "description",
    "completed",
    "due_date",
    "priority",
    "created_at",
    "updated_at",
    "completed_at",
}


def create(client, user="alice", title="buy milk", **fields):
    return ok(client.post(f"/api/{user}/tasks", json={"title": title, **fields}), 201)


def test_create_numbers_tasks_per_user_from_one(client):
    first = create(client, title="  buy milk  ", description="two litres")
    assert set(first) == TASK_FIELDS
    assert first["task_id"] == 1
    assert first["title"] == "buy milk"
    assert first["description"] == "two litres"
    assert first["completed"] is False
    assert first["created_at"].endswith("Z")
    assert create(client, title="walk the dog")["task_id"] == 2
    assert create(client, user="bob")["task_id"] == 1
    assert [t["task_id"] for t in tasks(client, "alice")] == [1, 2]


def test_numbers_are_never_reused_after_delete(client):
    for title in ("a", "b", "c"):
        create(client, title=title)
    response = client.delete("/api/alice/tasks/3")
    assert response.status_code == 204 and response.get_data() == b""
    assert create(client, title="d")["task_id"] == 4
    assert [t["task_id"] for t in tasks(client, "alice")] == [1, 2, 4]


def test_get_patch_and_filters(client):
    create(client, title="one")
    create(client, title="two")
    created = ok(client.get("/api/alice/tasks/2"))
    done = ok(client.patch("/api/alice/tasks/2", json={"completed": True}))
    assert done["completed"] is True and done["title"] == "two"
    assert done["updated_at"] >= created["updated_at"]
    renamed = ok(client.patch("/api/alice/tasks/1", json={"title": "uno", "description": "d"}))
    assert (renamed["title"], renamed["description"], renamed["completed"]) == ("uno", "d", False)
    assert [t["task_id"] for t in tasks(client, "alice", "pending")] == [1]
    assert [t["task_id"] for t in tasks(client, "alice", "completed")] == [2]
    assert [t["task_id"] for t in tasks(client, "alice", "all")] == [1, 2]
    assert ok(client.get("/api/alice/tasks/1"))["title"] == "uno"


def test_list_pages_by_task_number(client):
    for n in range(5):
        create(client, title=f"t{n}")
    page = ok(client.get("/api/alice/tasks?limit=2"))
    assert set(page) == {"items", "next_cursor"}
    seen = [t["task_id"] for t in page["items"]]
    while page["next_cursor"]:
        page = ok(client.get(f"/api/alice/tasks?limit=2&cursor={page['next_cursor']}"))
        seen += [t["task_id"] for t in page["items"]]
    assert seen == [1, 2, 3, 4, 5]
    assert ok(client.get("/api/alice/tasks?limit=5"))["next_cursor"] is None


def test_bad_list_arguments_are_422(client, subtests):
    forged = [f"cursor={cursor}" for cursor in FORGED_INT_CURSORS]
    for query in ["limit=0", "limit=101", "status=later", "cursor=nope", "cursor=WyJ4Il0", *forged]:
        with subtests.test(query):
            body = assert_problem(client.get(f"/api/alice/tasks?{query}"), 422, "validation_error")
            assert query.split("=")[0] in body["errors"]["query"]


UNKNOWN = [
    ("get", "/api/alice/tasks/9"),
    ("patch", "/api/alice/tasks/9"),
    ("delete", "/api/alice/tasks/9"),
    ("get", "/api/alice/tasks/0"),
    ("get", "/api/alice/tasks/99999999999999999999"),
    ("get", "/api/alice/tasks/abc"),
    ("get", "/api/alice/tasks/-1"),
    ("get", "/api/bob/tasks/1"),
    ("get", "/api/not%20a%20user/tasks"),
]


def test_unknown_tasks_are_404(client, subtests):
    create(client)
    for method, path in UNKNOWN:
        with subtests.test(method=method, path=path):
            body = {"completed": True} if method == "patch" else None
            assert_problem(getattr(client, method)(path, json=body), 404, "not_found")
    assert ok(client.get("/api/alice/tasks/1"))["completed"] is False


def test_another_user_cannot_touch_my_task(client):
    create(client)
    assert_problem(client.delete("/api/bob/tasks/1"), 404, "not_found")
    assert_problem(client.patch("/api/bob/tasks/1", json={"title": "x"}), 404, "not_found")
    assert ok(client.get("/api/alice/tasks/1"))["title"] == "buy milk"


INVALID_NEW = [
    ({}, "title"),
    ({"title": ""}, "title"),
    ({"title": "   "}, "title"),
    ({"title": "x" * 201}, "title"),
    ({"title": "two\nlines"}, "title"),
    ({"title": "bell\x07"}, "title"),
    ({"title": "tab at end\x0b"}, "title"),
    ({"title": 5}, "title"),
    ({"title": "ok", "description": "d" * 1001}, "description"),
    ({"title": "ok", "description": "nul\x00byte"}, "description"),
    ({"title": "ok", "description": "lone \udc00"}, "description"),
    ({"title": "ok", "owner": "bob"}, "owner"),
    ({"title": "ok", "completed": True}, "completed"),
]


def test_invalid_new_tasks_are_422(client, subtests):
    for body, field in INVALID_NEW:
        with subtests.test(repr(body)[:40]):
            response = client.post("/api/alice/tasks", json=body)
            problem = assert_problem(response, 422, "validation_error")
            assert field in problem["errors"]["json"]
    assert tasks(client, "alice") == []


def test_limits_are_inclusive(client):
    assert create(client, title="x" * 200, description="d" * 1000)["task_id"] == 1


def test_descriptions_keep_their_lines(client):
    description = "first line\r\n\tindented — ✓ שלום"
    assert create(client, description=description)["description"] == description
    assert ok(client.get("/api/alice/tasks/1"))["description"] == description


def test_invalid_patches_are_422(client, subtests):
    create(client)
    for body in [
        {},
        {"title": ""},
        {"completed": "maybe"},
        {"task_id": 7},
        {"description": "\x00"},
    ]:
        with subtests.test(repr(body)):
            response = client.patch("/api/alice/tasks/1", json=body)
            assert_problem(response, 422, "validation_error")
    assert ok(client.get("/api/alice/tasks/1"))["title"] == "buy milk"


def test_concurrent_creations_get_unique_gap_free_numbers(app):
    numbers: list[int] = []

    def add_three():
        client = app.test_client()
        for _ in range(3):
            numbers.append(create(client, title="same time")["task_id"])

    workers = [threading.Thread(target=add_three) for _ in range(6)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(timeout=30)
    assert sorted(numbers) == list(range(1, 19))
    assert [t["task_id"] for t in tasks(app.test_client(), "alice")] == list(range(1, 19))
