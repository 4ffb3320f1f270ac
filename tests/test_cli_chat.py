"""`flask --app chatsvc chat`: the terminal chat goes through the same turn service."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
from pathlib import Path

from fakellm import call, endless, say
from helpers import wait_for

ROOT = Path(__file__).resolve().parent.parent


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


def test_ctrl_c_cancels_the_answer_being_written_and_the_chat_goes_on(
    database_url, fake_llm, make_app
):
    """A real terminal chat (a process): Ctrl-C (SIGINT) mid-answer stops the turn, keeps what
    was said as `cancelled`, and the chat asks for the next message."""
    fake_llm.script(endless(chunk_delay=0.02))
    environ = {
        **os.environ, "DATABASE_URL": database_url, "AGENT_PROVIDER": "openai",
        "OPENAI_BASE_URL": fake_llm.url, "OPENAI_MODEL": "fake", "OPENAI_API_KEY": "sk-test",
        "AGENT_TIMEOUT_SECONDS": "30", "AGENT_MAX_RETRIES": "0",
    }  # fmt: skip
    chat = subprocess.Popen(
        [sys.executable, "-m", "flask", "--app", "chatsvc", "chat", "--user", "alice", "--stream"],
        cwd=ROOT, env=environ, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )  # fmt: skip
    output = bytearray()

    def read() -> None:
        while chunk := chat.stdout.read1():
            output.extend(chunk)

    reader = threading.Thread(target=read)
    reader.start()
    try:
        chat.stdin.write(b"tell me a long story\n")
        chat.stdin.flush()
        wait_for(lambda: output.count(b"and on") >= 3, 20, "the answer to stream")
        chat.send_signal(signal.SIGINT)
        wait_for(lambda: b"(cancelled)" in output, 5, "the turn to be cancelled")
        wait_for(lambda: output.rstrip().endswith(b"you>"), 5, "the next prompt")
        chat.stdin.write(b"\n")
        chat.stdin.flush()
        assert chat.wait(timeout=15) == 0, output.decode()
    finally:
        if chat.poll() is None:
            chat.kill()
        reader.join(timeout=5)
    client = make_app().test_client()
    (conversation,) = client.get("/api/alice/conversations").json["items"]
    messages = client.get(f"/api/alice/conversations/{conversation['id']}").json["messages"]
    assert [m["status"] for m in messages] == ["completed", "cancelled"]
    assert messages[1]["content"].startswith("and on and on")
    assert messages[1]["content"].strip() in output.decode(), "stored: what the terminal showed"
