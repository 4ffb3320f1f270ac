"""The task tools' argument schemas (contract §2) are the REST routes' own: the same input is
accepted or refused by both, and the JSON Schema a model is shown says what they check."""

from __future__ import annotations

import pytest
from helpers import ok
from marshmallow import ValidationError

from chatsvc.schemas import (
    AddTaskToolSchema,
    ListTasksToolSchema,
    UpdateTaskToolSchema,
    tool_parameters,
)

ADD = [
    ({"title": "pay rent", "due_date": "2026-12-31", "priority": "high"}, True),
    ({"title": "pay rent"}, True),
    ({"title": "x", "due_date": "2026-02-31"}, False),
    ({"title": "x", "due_date": "31 February"}, False),
    ({"title": "x", "priority": "urgent"}, False),
    ({"title": ""}, False),
    ({"title": "x", "user_id": "bob"}, False),
]


@pytest.mark.parametrize(("arguments", "valid"), ADD)
def test_add_task_arguments_pass_what_the_route_passes(client, arguments, valid):
    try:
        loaded = AddTaskToolSchema().load(arguments)
    except ValidationError:
        loaded = None
    response = client.post("/api/alice/tasks", json=arguments)
    assert (loaded is not None) is valid
    assert (response.status_code == 201) is valid
    if valid:
        created = response.get_json()
        assert (created["due_date"], created["priority"]) == (
            arguments.get("due_date"), loaded["priority"]
        )  # fmt: skip


UPDATE = [
    ({"task_id": 1, "due_date": None}, True),
    ({"task_id": 1, "priority": "low", "title": "renamed"}, True),
    ({"task_id": 1}, False),  # nothing to change
    ({"task_id": 1, "completed": True}, False),  # complete_task does that
    ({"task_id": 0, "title": "x"}, False),
    ({"task_id": "1", "title": "x"}, False),
    ({"task_id": 1, "due_date": "2026-13-01"}, False),
]


@pytest.mark.parametrize(("arguments", "valid"), UPDATE)
def test_update_task_arguments(client, arguments, valid):
    ok(client.post("/api/alice/tasks", json={"title": "t", "due_date": "2026-12-01"}), 201)
    try:
        loaded = UpdateTaskToolSchema().load(arguments)
    except ValidationError:
        loaded = None
    assert (loaded is not None) is valid
    if valid:  # what the tool would send on to the service, the route accepts
        changes = {k: v for k, v in arguments.items() if k != "task_id"}
        assert client.patch("/api/alice/tasks/1", json=changes).status_code == 200


def test_list_tasks_arguments():
    assert ListTasksToolSchema().load({}) == {"status": "all", "q": None, "due_before": None}
    loaded = ListTasksToolSchema().load(
        {"status": "pending", "q": "milk", "due_before": "2026-12-31"}
    )
    assert str(loaded["due_before"]) == "2026-12-31"
    for bad in [{"q": "***"}, {"due_before": "2026-02-30"}, {"status": "later"}, {"limit": 5},
                {"sort": "due_date"}]:  # fmt: skip
        with pytest.raises(ValidationError):
            ListTasksToolSchema().load(bad)


def test_json_schemas_shown_to_the_model():
    add = tool_parameters(AddTaskToolSchema)
    assert add["required"] == ["title"] and add["additionalProperties"] is False
    assert set(add["properties"]) == {"title", "description", "due_date", "priority"}
    assert add["properties"]["priority"]["enum"] == ["low", "normal", "high"]
    assert add["properties"]["due_date"]["format"] == "date"
    assert add["properties"]["due_date"]["type"] == ["string", "null"]
    update = tool_parameters(UpdateTaskToolSchema)
    assert update["required"] == ["task_id"]
    assert set(update["properties"]) == {"task_id", "title", "description", "due_date", "priority"}
    assert update["properties"]["task_id"]["maximum"] == 2**31 - 1
    listing = tool_parameters(ListTasksToolSchema)
    assert set(listing["properties"]) == {"status", "q", "due_before"}
    assert listing["required"] == []
    for schema in (add, update, listing):
        assert "user_id" not in schema["properties"]
        assert "nullable" not in str(schema)
