"""The offline agent's everyday phrasings (contract §8): the tools it calls and what changes."""

from __future__ import annotations

from helpers import chat, ok, tasks


def say(client, message, user="alice"):
    return ok(chat(client, user, message))


def calls(body):
    return [(call["tool"], call["parameters"]) for call in body["tool_calls"]]


def seed(client, *titles, user="alice"):
    for title in titles:
        ok(client.post(f"/api/{user}/tasks", json={"title": title}), 201)


ADDING = [
    ("Add a task to buy milk", "buy milk"),
    ("add buy bread", "buy bread"),
    ("Create a task called water the plants", "water the plants"),
    ("create new task to email Bob", "email Bob"),
    ("Remind me to call the plumber", "call the plumber"),
    ("I need to remember to pay the rent.", "pay the rent"),
    ("Add a task to finish the report", "finish the report"),
    ("Remind me to cancel the gym membership", "cancel the gym membership"),
    ("add call mom's dentist and dad's doctor", "call mom's dentist and dad's doctor"),
    ("Add \"Read 'Dune', then  write notes!\"", "Read 'Dune', then  write notes!"),
    ("add “Mom’s birthday: 3 p.m.”", "Mom’s birthday: 3 p.m."),
]


def test_adding(client, subtests):
    for n, (message, title) in enumerate(ADDING):
        user = f"user{n}"
        with subtests.test(message):
            body = say(client, message, user)
            assert calls(body) == [("add_task", {"title": title})]
            assert [t["title"] for t in tasks(client, user)] == [title]
            assert "task 1" in body["response"] and title in body["response"]


def test_adding_with_a_description(client):
    body = say(client, "Add a task to buy eggs with the description free range")
    assert calls(body) == [("add_task", {"title": "buy eggs", "description": "free range"})]
    assert tasks(client, "alice")[0]["description"] == "free range"


LISTING = [
    ("show my tasks", "all", ["1. buy milk", "2. walk the dog (done)", "3. pay rent"]),
    ("list all tasks", "all", ["1. buy milk", "2. walk the dog (done)", "3. pay rent"]),
    ("What tasks do I have?", "all", ["1. buy milk", "2. walk the dog", "3. pay rent"]),
    ("what's pending?", "pending", ["1. buy milk", "3. pay rent"]),
    ("show pending tasks", "pending", ["1. buy milk", "3. pay rent"]),
    ("what have I completed?", "completed", ["2. walk the dog"]),
    ("list completed tasks", "completed", ["2. walk the dog"]),
]


def test_listing_names_each_task_by_number_and_title(client, subtests):
    for n, (message, status, listed) in enumerate(LISTING):
        user = f"user{n}"
        with subtests.test(message):
            seed(client, "buy milk", "walk the dog", "pay rent", user=user)
            ok(client.patch(f"/api/{user}/tasks/2", json={"completed": True}))
            body = say(client, message, user)
            assert calls(body) == [("list_tasks", {"status": status})]
            for line in listed:
                assert line in body["response"]
            absent = {"buy milk", "walk the dog", "pay rent"} - {
                line[3:].split(" (")[0] for line in listed
            }
            for title in absent:
                assert title not in body["response"]


def test_listing_nothing_says_so(client):
    assert "no pending tasks" in say(client, "what's pending?")["response"]


COMPLETING = [
    ("task 2 is done", 2),
    ("mark task 2 as done", 2),
    ("Complete task #3", 3),
    ("finished task number 3", 3),
    ("I'm done with the dog", 2),
    ('complete "pay rent"', 3),
    ("I finished walking the dog", 2),
    ("mark 2 as done please", 2),
    ("3 is done", 3),
]


def test_completing(client, subtests):
    for n, (message, task_id) in enumerate(COMPLETING):
        user = f"user{n}"
        with subtests.test(message):
            seed(client, "buy milk", "walk the dog", "pay rent", user=user)
            body = say(client, message, user)
            assert ("complete_task", {"task_id": task_id}) in calls(body)
            done = [t["task_id"] for t in tasks(client, user, "completed")]
            assert done == [task_id]
            assert f"task {task_id}" in body["response"]


DELETING = [
    ("delete task 1", 1),
    ("remove the milk task", 1),
    ("cancel task 3", 3),
    ('Remove "walk the dog"', 2),
    ("remove task number 3", 3),
    ("delete 3", 3),
]


def test_deleting(client, subtests):
    for n, (message, task_id) in enumerate(DELETING):
        user = f"user{n}"
        with subtests.test(message):
            seed(client, "buy milk", "walk the dog", "pay rent", user=user)
            body = say(client, message, user)
            assert ("delete_task", {"task_id": task_id}) in calls(body)
            assert task_id not in [t["task_id"] for t in tasks(client, user)]
            assert len(tasks(client, user)) == 2


CHANGING = [
    ("rename task 1 to buy oat milk", 1, {"title": "buy oat milk"}),
    ('change task 2 to "Walk the cat"', 2, {"title": "Walk the cat"}),
    ('Change "buy milk" to "buy soy milk"', 1, {"title": "buy soy milk"}),
    ("rename the dog task to walk the cat", 2, {"title": "walk the cat"}),
    ("update the description of task 1 to two litres", 1, {"description": "two litres"}),
]


def test_changing(client, subtests):
    for n, (message, task_id, changes) in enumerate(CHANGING):
        user = f"user{n}"
        with subtests.test(message):
            seed(client, "buy milk", "walk the dog", user=user)
            body = say(client, message, user)
            assert ("update_task", {"task_id": task_id, **changes}) in calls(body)
            task = ok(client.get(f"/api/{user}/tasks/{task_id}"))
            for field, value in changes.items():
                assert task[field] == value


NOT_FOUND = [
    ("delete task 9", "task 9"),
    ("complete task 9", "task 9"),
    ("rename task 9 to something", "task 9"),
    ("remove the unicorn task", "unicorn"),
    ('complete "fly to the moon"', "fly to the moon"),
]


def test_saying_kindly_which_task_it_could_not_find(client, subtests):
    for n, (message, named) in enumerate(NOT_FOUND):
        user = f"user{n}"
        with subtests.test(message):
            seed(client, "buy milk", user=user)
            body = say(client, message, user)
            assert body["status"] == "completed"
            assert body["response"].startswith("Sorry, I couldn't find")
            assert named in body["response"]
            assert ok(client.get(f"/api/{user}/tasks/1"))["completed"] is False
            assert [t["title"] for t in tasks(client, user)] == ["buy milk"]


def test_a_number_inside_a_title_is_part_of_the_title(client):
    seed(client, "call 3 clients", "buy milk", "pay rent")
    body = say(client, "I finished call 3 clients")
    assert ("complete_task", {"task_id": 1}) in calls(body)
    assert [t["task_id"] for t in tasks(client, "alice", "completed")] == [1]


def test_one_users_numbers_never_reach_another_users_tasks(client):
    seed(client, "alice's task", user="alice")
    body = say(client, "delete task 1", user="bob")
    assert body["tool_calls"][0]["result"]["error"] == "task_not_found"
    assert [t["title"] for t in tasks(client, "alice")] == ["alice's task"]


def test_anything_else_is_not_a_task(client):
    body = say(client, "what is the capital of France?")
    assert [call["tool"] for call in body["tool_calls"]] == ["search_knowledge"]
    assert body["sources"] == []
    assert "don't know" in body["response"]
    assert tasks(client, "alice") == []
