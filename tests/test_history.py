"""The history a turn sends the model: newest first to the limit, trimmed to the token budget,
tool calls never separated from their results; and token usage per day."""

from __future__ import annotations

from datetime import UTC, datetime

from fakellm import call, say


def chat(client, message, conversation_id=None, user="alice"):
    body = {"message": message}
    if conversation_id:
        body["conversation_id"] = conversation_id
    response = client.post(f"/api/{user}/chat", json=body)
    assert response.status_code == 200
    return response.json


def tool_turns(client, fake_llm, count):
    conversation_id = None
    for number in range(count):
        fake_llm.script(
            call(("add_task", {"title": f"task number {number} " + "x" * 40})),
            say(f"Added task {number + 1}. " + "y" * 80),
        )
        conversation_id = chat(client, f"add task {number}", conversation_id)["conversation_id"]
    return conversation_id


def assert_pairs_intact(messages):
    """Every assistant tool call is followed by its results; no result without its call."""
    assert messages[0]["role"] == "system"
    assert messages[1]["role"] == "user", "history starts with a user message"
    open_ids: list[str] = []
    for message in messages[1:]:
        if message["role"] == "tool":
            assert message["tool_call_id"] in open_ids
            open_ids.remove(message["tool_call_id"])
        else:
            assert not open_ids, "a tool call lost its result"
            open_ids = [c["id"] for c in message.get("tool_calls") or ()]
    assert not open_ids


def test_history_is_trimmed_to_the_token_budget_keeping_tool_pairs(llm_app, fake_llm):
    client = llm_app(HISTORY_MAX_TOKENS=160).test_client()
    conversation_id = tool_turns(client, fake_llm, 4)
    body = chat(client, "what now?", conversation_id)
    assert body["context"]["truncated"] is True
    sent = fake_llm.requests[-1]["messages"]
    assert_pairs_intact(sent)
    assert sent[-1] == {"role": "user", "content": "what now?"}
    replayed_turns = sum(1 for m in sent[1:-1] if m["role"] == "user")
    assert body["context"]["messages"] == replayed_turns * 2 and 0 < replayed_turns < 4


def test_history_limit_never_starts_with_an_orphan_assistant_message(llm_app, fake_llm):
    client = llm_app(HISTORY_LIMIT=3).test_client()
    conversation_id = tool_turns(client, fake_llm, 2)
    body = chat(client, "and now?", conversation_id)
    assert body["context"] == {"messages": 2, "truncated": True}
    sent = fake_llm.requests[-1]["messages"]
    assert_pairs_intact(sent)
    assert [m["role"] for m in sent] == ["system", "user", "assistant", "tool", "assistant", "user"]
    assert sent[1]["content"] == "add task 1"


def test_a_tiny_budget_still_sends_the_system_prompt_and_the_new_message(llm_app, fake_llm):
    client = llm_app(HISTORY_MAX_TOKENS=10).test_client()
    conversation_id = chat(client, "first message")["conversation_id"]
    body = chat(client, "second message " * 20, conversation_id)
    assert body["context"] == {"messages": 0, "truncated": True}
    roles = [m["role"] for m in fake_llm.requests[-1]["messages"]]
    assert roles == ["system", "user"]


def test_usage_is_summed_per_day_and_model(llm_app, fake_llm):
    client = llm_app().test_client()
    fake_llm.script(say("one", usage=(100, 10)), say("two", usage=(50, 5)), say("b", usage=(7, 1)))
    conversation_id = chat(client, "first")["conversation_id"]
    chat(client, "second", conversation_id)
    chat(client, "bob's", user="bob")
    response = client.get("/api/alice/usage")
    assert response.status_code == 200
    assert response.json["items"] == [
        {
            "day": datetime.now(UTC).date().isoformat(),
            "model": "fake-model",
            "prompt_tokens": 150,
            "completion_tokens": 15,
            "total_tokens": 165,
            "turns": 2,
        }
    ]  # the quota beside them: tests/test_quotas.py
    assert client.get("/api/carol/usage").json["items"] == []
    assert client.get("/api/bob/usage").json["items"][0]["total_tokens"] == 8
