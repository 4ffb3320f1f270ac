"""A user's conversation history: list, one conversation, delete (contract §4)."""

from __future__ import annotations

from fakes import ScriptedAgent
from helpers import (
    FORGED_INT_CURSORS,
    age,
    assert_problem,
    chat,
    forged_cursor,
    ok,
    turn_in_flight,
)

CONVERSATION_FIELDS = {"id", "kind", "title", "created_at", "last_activity", "message_count"}


def test_list_is_newest_activity_first_with_the_contract_fields(client):
    first = ok(chat(client, "alice", "first"))["conversation_id"]
    second = ok(chat(client, "alice", "second"))["conversation_id"]
    ok(chat(client, "alice", "back to first", conversation_id=first))
    page = ok(client.get("/api/alice/conversations"))
    assert set(page) == {"items", "next_cursor"}
    assert page["next_cursor"] is None
    assert [c["id"] for c in page["items"]] == [first, second]
    assert set(page["items"][0]) == CONVERSATION_FIELDS
    assert page["items"][0]["message_count"] == 4
    assert page["items"][0]["title"] == "first"
    assert page["items"][0]["kind"] == "user"


def test_owned_conversations_only(client):
    ok(chat(client, "bob", "bob's secret"))
    assert ok(client.get("/api/alice/conversations"))["items"] == []


def test_list_pages_with_a_cursor(client):
    made = [ok(chat(client, "alice", f"c{n}"))["conversation_id"] for n in range(5)]
    seen, cursor = [], None
    while True:
        url = "/api/alice/conversations?limit=2" + (f"&cursor={cursor}" if cursor else "")
        page = ok(client.get(url))
        assert len(page["items"]) <= 2
        seen += [c["id"] for c in page["items"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert seen == list(reversed(made))


def test_bad_list_arguments_are_422(client, subtests):
    ok(chat(client, "alice", "hi"))
    forged = [forged_cursor(n, "x") for n in (2**63, 10**30, -1)]
    for query in ["limit=0", "limit=101", "limit=ten", "cursor=garbage", "cursor=WzFd"] + [
        f"cursor={cursor}" for cursor in forged
    ]:
        with subtests.test(query):
            response = client.get(f"/api/alice/conversations?{query}")
            body = assert_problem(response, 422, "validation_error")
            assert query.split("=")[0] in body["errors"]["query"]


def test_one_conversation_pages_its_messages_newest_first_oldest_first_within(make_app):
    client = make_app(agent=ScriptedAgent()).test_client()
    conversation = ok(chat(client, "alice", "m0"))["conversation_id"]
    for n in range(1, 4):
        ok(chat(client, "alice", f"m{n}", conversation_id=conversation))
    page = ok(client.get(f"/api/alice/conversations/{conversation}?limit=3"))
    assert CONVERSATION_FIELDS | {"messages", "next_cursor"} == set(page)
    assert page["message_count"] == 8
    assert [m["content"] for m in page["messages"]] == ["echo: m2", "m3", "echo: m3"]
    collected = page["messages"]
    while page["next_cursor"]:
        page = ok(
            client.get(
                f"/api/alice/conversations/{conversation}?limit=3&cursor={page['next_cursor']}"
            )
        )
        collected = page["messages"] + collected
    assert [m["content"] for m in collected] == [
        text for n in range(4) for text in (f"m{n}", f"echo: m{n}")
    ]
    default = ok(client.get(f"/api/alice/conversations/{conversation}"))
    assert len(default["messages"]) == 8 and default["next_cursor"] is None


def test_forged_message_cursors_are_422(client, subtests):
    conversation = ok(chat(client, "alice", "hi"))["conversation_id"]
    for cursor in ["nope", forged_cursor("x"), *FORGED_INT_CURSORS]:
        with subtests.test(cursor):
            response = client.get(f"/api/alice/conversations/{conversation}?cursor={cursor}")
            body = assert_problem(response, 422, "validation_error")
            assert "cursor" in body["errors"]["query"]


def test_another_users_conversation_is_404_everywhere(client):
    bob = ok(chat(client, "bob", "private"))["conversation_id"]
    assert_problem(client.get(f"/api/alice/conversations/{bob}"), 404, "not_found")
    assert_problem(client.delete(f"/api/alice/conversations/{bob}"), 404, "not_found")
    assert ok(client.get(f"/api/bob/conversations/{bob}"))["message_count"] == 2


def test_delete_removes_the_conversation_and_its_messages(client):
    conversation = ok(chat(client, "alice", "forget me"))["conversation_id"]
    response = client.delete(f"/api/alice/conversations/{conversation}")
    assert response.status_code == 204 and response.get_data() == b""
    assert_problem(client.get(f"/api/alice/conversations/{conversation}"), 404, "not_found")
    assert_problem(client.delete(f"/api/alice/conversations/{conversation}"), 404, "not_found")
    assert_problem(chat(client, "alice", "hi", conversation_id=conversation), 404, "not_found")
    assert ok(client.get("/api/alice/conversations"))["items"] == []


def test_malformed_conversation_ids_are_404(client, subtests):
    for bad_id in ["nope", "x" * 300, "%20", "1", "%00"]:
        with subtests.test(bad_id[:10]):
            response = client.get(f"/api/alice/conversations/{bad_id}")
            assert_problem(response, 404, "not_found")


def test_conversations_do_not_expire_by_default(make_app):
    app = make_app()
    client = app.test_client()
    conversation = ok(chat(client, "alice", "old"))["conversation_id"]
    age(app, conversation, 365 * 86400)
    ok(chat(client, "alice", "still here", conversation_id=conversation))


def test_idle_conversation_expires_when_a_ttl_is_set(make_app):
    app = make_app({"CONVERSATION_TTL_SECONDS": 60})
    client = app.test_client()
    conversation = ok(chat(client, "alice", "old"))["conversation_id"]
    age(app, conversation, 61)
    assert_problem(
        chat(client, "alice", "hello?", conversation_id=conversation), 410, "session_expired"
    )
    assert_problem(client.get(f"/api/alice/conversations/{conversation}"), 410, "session_expired")
    listed = ok(client.get("/api/alice/conversations"))["items"]
    assert [c["id"] for c in listed] == [conversation]


def test_a_conversation_with_a_turn_running_is_not_deleted(make_app):
    agent = ScriptedAgent()
    app = make_app(agent=agent)
    client = app.test_client()
    conversation = ok(chat(client, "alice", "hi"))["conversation_id"]
    with turn_in_flight(app, agent, conversation):
        response = client.delete(f"/api/alice/conversations/{conversation}")
        assert_problem(response, 409, "turn_in_progress")
    assert ok(client.get(f"/api/alice/conversations/{conversation}"))["message_count"] == 4
    assert client.delete(f"/api/alice/conversations/{conversation}").status_code == 204
