"""Tasks people can plan with (contract §2): due dates, priorities, completion times, filters,
sorting, and the bad input around them."""

from __future__ import annotations

from helpers import assert_problem, ok

PLAN = [
    # title, description, due_date, priority
    ("Buy groceries", "milk, eggs and bread", "2026-12-03", "high"),
    ("Call mum", "", None, "normal"),
    ("Dentist appointment", "at 10:00, 100% sure", "2026-12-01", "normal"),
    ("File taxes", "forms a_b and c", "2027-01-15", "low"),
    ("Book flights", "to Lisbon", "2026-12-01", "high"),
    ("Water the plants", "", None, "low"),
]


def create(client, user="alice", title="buy milk", **fields):
    return ok(client.post(f"/api/{user}/tasks", json={"title": title, **fields}), 201)


def plan(client) -> None:
    for title, description, due, priority in PLAN:
        create(client, title=title, description=description, due_date=due, priority=priority)


def ids(client, query: str, user: str = "alice") -> list[int]:
    return [t["task_id"] for t in ok(client.get(f"/api/{user}/tasks?{query}"))["items"]]


def every_page(client, query: str, limit: int) -> list[int]:
    page = ok(client.get(f"/api/alice/tasks?{query}&limit={limit}"))
    seen = [t["task_id"] for t in page["items"]]
    while page["next_cursor"]:
        page = ok(
            client.get(f"/api/alice/tasks?{query}&limit={limit}&cursor={page['next_cursor']}")
        )
        seen += [t["task_id"] for t in page["items"]]
    return seen


def test_new_fields_and_their_defaults(client):
    plain = create(client)
    assert (plain["due_date"], plain["priority"], plain["completed_at"]) == (None, "normal", None)
    planned = create(client, title="pay rent", due_date="2026-12-31", priority="high")
    assert (planned["due_date"], planned["priority"]) == ("2026-12-31", "high")
    assert ok(client.get("/api/alice/tasks/2"))["due_date"] == "2026-12-31"


def test_completing_records_when_and_reopening_clears_it(client):
    create(client)
    done = ok(client.patch("/api/alice/tasks/1", json={"completed": True}))
    assert done["completed_at"] is not None and done["completed_at"].endswith("Z")
    assert done["completed_at"] >= done["created_at"]
    again = ok(client.patch("/api/alice/tasks/1", json={"completed": True, "title": "milk"}))
    assert again["completed_at"] == done["completed_at"]  # completing twice keeps the first time
    reopened = ok(client.patch("/api/alice/tasks/1", json={"completed": False}))
    assert reopened["completed_at"] is None and reopened["completed"] is False


def test_patch_due_date_and_priority(client):
    create(client, due_date="2026-12-24", priority="low")
    moved = ok(client.patch("/api/alice/tasks/1", json={"due_date": "2027-01-02"}))
    assert (moved["due_date"], moved["priority"]) == ("2027-01-02", "low")
    raised = ok(client.patch("/api/alice/tasks/1", json={"priority": "high"}))
    assert (raised["due_date"], raised["priority"]) == ("2027-01-02", "high")
    cleared = ok(client.patch("/api/alice/tasks/1", json={"due_date": None}))
    assert cleared["due_date"] is None and cleared["priority"] == "high"


def test_filters(client, subtests):
    plan(client)
    create(client, user="bob", title="Buy groceries", due_date="2026-12-01", priority="high")
    ok(client.patch("/api/alice/tasks/5", json={"completed": True}))
    cases = {
        "priority=high": [1, 5],
        "priority=low&status=pending": [4, 6],
        "status=completed": [5],
        "due_before=2026-12-01": [3, 5],  # inclusive, and tasks without a date never match
        "due_after=2026-12-03": [1, 4],
        "due_after=2026-12-01&due_before=2026-12-03": [1, 3, 5],
        "due_before=2026-12-02&status=pending": [3],
        "q=groceries": [1],
        "q=GROCERIES": [1],
        "q=eggs": [1],  # the description counts
        "q=bread milk": [1],  # every word
        "q=milk taxes": [],
        "q=100%": [3],  # punctuation is not a wildcard
        "q=taxes_a": [4],  # nor an underscore: the words are "taxes" and "a"
        "q=the plants&priority=low": [6],
        "q=o&priority=high&due_before=2026-12-02": [5],
    }
    for query, expected in cases.items():
        with subtests.test(query):
            assert ids(client, query) == expected
    assert ids(client, "priority=high", user="bob") == [1]


SORTS = {
    "task_id": [1, 2, 3, 4, 5, 6],
    "-task_id": [6, 5, 4, 3, 2, 1],
    "due_date": [3, 5, 1, 4, 2, 6],  # ties by number; no due date last
    "-due_date": [4, 1, 3, 5, 2, 6],  # no due date last in this direction too
    "priority": [4, 6, 2, 3, 1, 5],
    "-priority": [1, 5, 2, 3, 4, 6],
}


def test_sorts_page_without_skipping_or_repeating(client, subtests):
    plan(client)
    for sort, expected in SORTS.items():
        with subtests.test(sort):
            assert ids(client, f"sort={sort}") == expected
            for limit in (1, 2, 4):
                assert every_page(client, f"sort={sort}", limit) == expected


def test_sort_by_update_time(client):
    plan(client)
    for task_id in (4, 2, 6):
        ok(client.patch(f"/api/alice/tasks/{task_id}", json={"description": "touched"}))
    order = ids(client, "sort=-updated_at")
    assert order[:3] == [6, 2, 4]
    assert every_page(client, "sort=-updated_at", 2) == order
    assert every_page(client, "sort=updated_at", 2) == list(reversed(order))


def test_sort_combines_with_filters(client):
    plan(client)
    assert every_page(client, "sort=-priority&status=pending&due_before=2026-12-31", 1) == [
        1, 5, 3
    ]  # fmt: skip


BAD_BODIES = [
    ({"title": "x", "due_date": "2026-02-31"}, "due_date"),
    ({"title": "x", "due_date": "2026-02-29"}, "due_date"),  # not a leap year
    ({"title": "x", "due_date": "31 February"}, "due_date"),
    ({"title": "x", "due_date": "tomorrow"}, "due_date"),
    ({"title": "x", "due_date": "2026-13-01"}, "due_date"),
    ({"title": "x", "due_date": "2026-12-01T10:00:00Z"}, "due_date"),
    ({"title": "x", "due_date": 20261201}, "due_date"),
    ({"title": "x", "due_date": "99999-01-01"}, "due_date"),
    ({"title": "x", "priority": "urgent"}, "priority"),
    ({"title": "x", "priority": "HIGH"}, "priority"),
    ({"title": "x", "priority": None}, "priority"),
    ({"title": "x", "completed_at": "2026-12-01T00:00:00Z"}, "completed_at"),
]


def test_bad_dates_and_priorities_are_422(client, subtests):
    create(client, title="keep me")
    for body, field in BAD_BODIES:
        with subtests.test(repr(body)):
            problem = assert_problem(
                client.post("/api/alice/tasks", json=body), 422, "validation_error"
            )
            assert field in problem["errors"]["json"]
            patch = {k: v for k, v in body.items() if k != "title"}
            problem = assert_problem(
                client.patch("/api/alice/tasks/1", json=patch), 422, "validation_error"
            )
            assert field in problem["errors"]["json"]
    assert [t["title"] for t in ok(client.get("/api/alice/tasks"))["items"]] == ["keep me"]
    assert ok(client.get("/api/alice/tasks/1"))["priority"] == "normal"


BAD_QUERIES = [
    ("due_before=2026-02-31", "due_before"),
    ("due_after=31%20February", "due_after"),
    ("due_after=2026-12-02&due_before=2026-12-01", "due_after"),
    ("priority=urgent", "priority"),
    ("sort=title", "sort"),
    ("sort=-", "sort"),
    ("sort=--due_date", "sort"),
    ("sort=due_date%20desc", "sort"),
    ("q=", "q"),
    ("q=%21%21%21", "q"),  # !!!
    ("q=%22%22", "q"),  # ""
    ("q=*", "q"),
    ("q=AND%20OR%20NOT", "q"),
    ("q=NEAR(%20)", "q"),
    ("q=-%3A%5E", "q"),  # -:^
    ("q=" + "x" * 201, "q"),
    ("q=milk%00", "q"),
]


def test_bad_list_queries_are_422(client, subtests):
    plan(client)
    for query, field in BAD_QUERIES:
        with subtests.test(query):
            problem = assert_problem(
                client.get(f"/api/alice/tasks?{query}"), 422, "validation_error"
            )
            assert field in problem["errors"]["query"]


def test_fts_and_like_syntax_in_q_is_matched_as_words(client, subtests):
    plan(client)
    for query, expected in {
        'q="groceries"': [1],
        "q=groceries*": [1],
        "q=title%3Agroceries": [],  # "title" and "groceries": no task has both words
        "q=NEAR(groceries)": [1],
        "q=groceries%20OR%20taxes": [],  # OR is not an operator here: every word must match
        "q=%25groceries%25": [1],
    }.items():
        with subtests.test(query):
            assert ids(client, query) == expected


def test_cursor_of_one_sort_is_refused_by_another_when_it_cannot_fit(client):
    plan(client)
    by_number = ok(client.get("/api/alice/tasks?limit=2"))["next_cursor"]
    by_due = ok(client.get("/api/alice/tasks?limit=2&sort=due_date"))["next_cursor"]
    assert_problem(
        client.get(f"/api/alice/tasks?sort=due_date&cursor={by_number}"), 422, "validation_error"
    )
    assert_problem(client.get(f"/api/alice/tasks?cursor={by_due}"), 422, "validation_error")
