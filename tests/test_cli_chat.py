"""`flask --app chatsvc chat`: the terminal chat goes through the same turn service."""

from __future__ import annotations

from fakellm import call, say


def test_chat_as_a_user_manages_tasks_and_keeps_one_conversation(app, client):
    result = app.test_cli_runner().invoke(
        args=["chat", "--user", "alice"], input="add a task to buy milk\nshow my tasks\n\n"
    )
    assert result.exit_code == 0, result.output
    assert "Added task 1" in result.output and "1. buy milk" in result.output
    conversations = client.get("/api/alice/conversations").json["items"]
    assert len(conversations) == 1 and conversations[0]["message_count"] == 4


def test_streamed_chat_with_a_model_continues_a_session(llm_app, fake_llm):
    app = llm_app()
    client = app.test_client()
    conversation_id = client.post("/api/alice/chat", json={"message": "hi"}).json["conversation_id"]
    fake_llm.script(call(("add_task", {"title": "walk"})), say("Added walk."))
    result = app.test_cli_runner().invoke(
        args=["chat", "--user", "alice", "--session", conversation_id, "--stream"],
        input="remind me to walk\n",
    )
    assert result.exit_code == 0, result.output
    assert "Added walk." in result.output and "add_task" in result.output
    messages = client.get(f"/api/alice/conversations/{conversation_id}").json["messages"]
    assert [m["content"] for m in messages][-2:] == ["remind me to walk", "Added walk."]


def test_chat_with_an_unknown_conversation_says_so(app):
    result = app.test_cli_runner().invoke(
        args=["chat", "--user", "alice", "--session", "nope"], input="hello\n"
    )
    assert result.exit_code != 0
    assert "does not exist" in result.output
