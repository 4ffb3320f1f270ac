"""Concurrent requests: nothing lost, nothing duplicated, numbers stay gap-free."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

from fakes import ScriptedAgent

from chatsvc.agent.base import Reply


def test_simultaneous_task_creations_get_unique_gap_free_numbers(app):
    def create(i: int) -> int:
        response = app.test_client().post("/api/alice/tasks", json={"title": f"task {i}"})
        assert response.status_code == 201, response.json
        return response.json["task_id"]

    with ThreadPoolExecutor(max_workers=16) as pool:
        numbers = list(pool.map(create, range(50)))

    assert sorted(numbers) == list(range(1, 51))
    listed = app.test_client().get("/api/alice/tasks?limit=100").json["items"]
    assert [task["task_id"] for task in listed] == list(range(1, 51))


def test_simultaneous_turns_on_one_conversation_never_interleave(make_app):
    agent = ScriptedAgent(steps=[lambda turn, tools: Reply(f"re: {turn.message}", "scripted")] * 60)
    app = make_app(agent=agent)
    first = app.test_client().post("/api/alice/chat", json={"message": "start"}).json
    conversation_id = first["conversation_id"]

    def turn(i: int) -> int:
        response = app.test_client().post(
            "/api/alice/chat", json={"message": f"m{i}", "conversation_id": conversation_id}
        )
        assert response.status_code in (200, 409), response.json
        if response.status_code == 409:
            assert response.json["code"] == "turn_in_progress"
        return response.status_code

    with ThreadPoolExecutor(max_workers=16) as pool:
        statuses = list(pool.map(turn, range(50)))

    accepted = statuses.count(200)
    assert accepted >= 1
    detail = app.test_client().get(f"/api/alice/conversations/{conversation_id}?limit=100").json
    messages = detail["messages"]
    assert detail["message_count"] == len(messages) == 2 * (accepted + 1)
    # Pairs in order: each user message is followed by the answer to it.
    for user, assistant in zip(messages[::2], messages[1::2], strict=True):
        assert user["role"] == "user" and assistant["role"] == "assistant"
        assert assistant["content"] == f"re: {user['content']}"
        assert assistant["status"] == "completed"
    assert len({m["id"] for m in messages}) == len(messages)
