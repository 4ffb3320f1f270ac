"""Real OpenAI clients against a running chatsvc (gunicorn, as `make run` starts it): the
official `openai` SDK (sync, async, streaming, the stream helpers, `responses.create` with
`previous_response_id`) on the local agent and on the `openai` provider (chatsvc in front of
the fake model: the SDK on both sides), and LangChain's ChatOpenAI for a conversation with a
tool call. Every warning is an error here: whatever the SDK parses must parse cleanly."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any
from urllib.request import Request, urlopen

import openai
import pytest
from conftest import start_gunicorn, stop_gunicorn
from fakellm import FakeLLM, call, say

from chatsvc.auth import create_token

pytestmark = pytest.mark.filterwarnings("error")

SECRET = "c" * 40
CORPUS = Path(__file__).parent / "corpus"
QUIET = {"JWT_SECRET": SECRET, "RATELIMIT_ENABLED": "false"}


@pytest.fixture
def fake_llm(shared_llm: FakeLLM) -> FakeLLM:
    """The module's fake model, its script and record fresh for each test."""
    shared_llm.reset()
    return shared_llm


@pytest.fixture(scope="module", params=["local", "openai"])
def server(request, database_url, shared_llm, tmp_path_factory) -> Iterator[Any]:
    """chatsvc on the offline agent, or on the openai adapter in front of the fake model: one
    instance of each for the module (starting one per test cost most of its time)."""
    environ = dict(QUIET)
    if request.param == "openai":
        environ.update(
            AGENT_PROVIDER="openai", OPENAI_BASE_URL=shared_llm.url, OPENAI_MODEL="fake-model",
            OPENAI_API_KEY="sk-test", AGENT_TIMEOUT_SECONDS="20", AGENT_MAX_RETRIES="0",
        )  # fmt: skip
    started = start_gunicorn(database_url, tmp_path_factory.mktemp("clients"), **environ)
    started.provider = request.param
    yield started
    stop_gunicorn(started.process)


def someone() -> str:
    """A user of one test: the servers of a session share their database."""
    return f"u-{uuid.uuid4().hex[:12]}"


def token(user: str) -> str:
    return create_token(user, secret=SECRET)


def sdk(server: Any, user: str) -> openai.OpenAI:
    return openai.OpenAI(
        base_url=f"{server.url}/v1", api_key=token(user), max_retries=0, timeout=30
    )


def api(server: Any, path: str, user: str) -> Any:
    """GET one of chatsvc's own routes with the user's token."""
    request = Request(server.url + path, headers={"Authorization": f"Bearer {token(user)}"})
    with urlopen(request, timeout=30) as response:
        return json.loads(response.read())


def stored_reply(server: Any, user: str, conversation_id: str) -> dict[str, Any]:
    messages = api(server, f"/api/{user}/conversations/{conversation_id}", user)["messages"]
    assert messages[-1]["role"] == "assistant"
    return messages[-1]


def test_models_list(server):
    client = sdk(server, someone())
    assert [model.id for model in client.models.list()] == ["todo", "knowledge"]
    assert client.models.retrieve("knowledge").owned_by == "chatsvc"


def test_a_completion_is_the_stored_turn(server):
    user = someone()
    raw = sdk(server, user).chat.completions.with_raw_response.create(
        model="todo", messages=[{"role": "user", "content": "Add a task to buy milk"}]
    )
    completion = raw.parse()
    completion.model_dump_json()  # serialises without warnings
    stored = stored_reply(server, user, raw.headers["x-conversation-id"])
    assert completion.choices[0].message.content == stored["content"]
    assert completion.id == f"chatcmpl-{stored['id']}"
    assert completion.choices[0].finish_reason == "stop"
    assert completion.usage.total_tokens == stored["usage"]["total_tokens"]
    if server.provider == "local":
        titles = [task["title"] for task in api(server, f"/api/{user}/tasks", user)["items"]]
        assert titles == ["buy milk"]


def test_a_streamed_completion_with_usage(server):
    user = someone()
    stream = sdk(server, user).chat.completions.create(
        model="todo", messages=[{"role": "user", "content": "hello there"}], stream=True,
        stream_options={"include_usage": True},
    )  # fmt: skip
    chunks = list(stream)
    for chunk in chunks:
        chunk.model_dump_json()
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert chunks[-1].choices == [] and chunks[-1].usage is not None
    message_id = chunks[0].id.removeprefix("chatcmpl-")
    conversations = api(server, f"/api/{user}/conversations", user)["items"]
    stored = stored_reply(server, user, conversations[0]["id"])
    assert stored["id"] == message_id and stored["content"] == text


def test_the_chat_stream_helper_accumulates_the_completion(server):
    with sdk(server, someone()).chat.completions.stream(
        model="todo", messages=[{"role": "user", "content": "hello helper"}]
    ) as stream:
        deltas = [event.delta for event in stream if event.type == "content.delta"]
        final = stream.get_final_completion()
    assert final.choices[0].message.content == "".join(deltas)
    assert final.choices[0].message.content


def test_the_async_client(server):
    async def run() -> tuple[str, str]:
        client = openai.AsyncOpenAI(
            base_url=f"{server.url}/v1", api_key=token(someone()), max_retries=0, timeout=30
        )
        async with client:
            completion = await client.chat.completions.create(
                model="todo", messages=[{"role": "user", "content": "hello async"}]
            )
            streamed = await client.chat.completions.create(
                model="todo", messages=[{"role": "user", "content": "hello async"}], stream=True
            )
            text = "".join([c.choices[0].delta.content or "" async for c in streamed if c.choices])
            return completion.choices[0].message.content, text

    # In a thread of its own: the session's Chromium tests (playwright's sync API) keep an event
    # loop running in the main thread, where asyncio.run() refuses to start.
    with ThreadPoolExecutor(1) as thread:
        whole, streamed = thread.submit(asyncio.run, run()).result(timeout=60)
    assert whole and whole == streamed


def test_responses_continue_by_previous_response_id(server):
    user = someone()
    client = sdk(server, user)
    first = client.responses.create(model="todo", input="Add a task to water the ferns")
    first.model_dump_json()
    assert first.status == "completed"
    assert first.output_text == stored_reply(server, user, first.conversation.id)["content"]
    second = client.responses.create(
        model="todo", input="list my tasks", previous_response_id=first.id
    )
    assert second.conversation.id == first.conversation.id
    assert second.output_text == stored_reply(server, user, first.conversation.id)["content"]
    if server.provider == "local":
        assert "water the ferns" in second.output_text
    retrieved = client.responses.retrieve(second.id)
    assert retrieved.output_text == second.output_text
    assert retrieved.usage.total_tokens == second.usage.total_tokens


def test_a_streamed_response(server):
    client = sdk(server, someone())
    events = list(client.responses.create(model="todo", input="hello stream", stream=True))
    for event in events:
        event.model_dump_json()
    assert events[0].type == "response.created" and events[-1].type == "response.completed"
    text = "".join(e.delta for e in events if e.type == "response.output_text.delta")
    assert events[-1].response.output_text == text
    with client.responses.stream(model="todo", input="hello helper") as stream:
        helper_text = "".join(e.delta for e in stream if e.type == "response.output_text.delta")
        final = stream.get_final_response()
    assert final.output_text == helper_text and helper_text


def test_errors_are_the_sdks_exceptions(server):
    client = sdk(server, someone())
    with pytest.raises(openai.NotFoundError) as missing:
        client.chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": "x"}])
    assert missing.value.code == "model_not_found" and missing.value.param == "model"
    with pytest.raises(openai.BadRequestError) as unsupported:
        client.chat.completions.create(
            model="todo", messages=[{"role": "user", "content": "x"}], n=2
        )
    assert unsupported.value.code == "unsupported_parameter"
    with pytest.raises(openai.AuthenticationError) as refused:
        openai.OpenAI(
            base_url=f"{server.url}/v1", api_key="not-a-token", max_retries=0
        ).models.list()
    assert refused.value.code == "unauthorized"


def test_a_tool_call_through_the_provider_runs_server_side(gunicorn, fake_llm):
    """The SDK on both sides: chatsvc's adapter asks the fake model, which calls add_task;
    chatsvc runs it for the token's user and the client sees only the answer."""
    server = gunicorn(
        AGENT_PROVIDER="openai", OPENAI_BASE_URL=fake_llm.url, OPENAI_MODEL="fake-model",
        OPENAI_API_KEY="sk-test", AGENT_TIMEOUT_SECONDS="20", AGENT_MAX_RETRIES="0", **QUIET,
    )  # fmt: skip
    fake_llm.script(call(("add_task", {"title": "renew passport"})), say("Added it."))
    user = someone()
    completion = sdk(server, user).chat.completions.create(
        model="todo", messages=[{"role": "user", "content": "remind me to renew my passport"}],
        temperature=0.1, seed=3,
    )  # fmt: skip
    assert completion.choices[0].message.content == "Added it."
    assert completion.choices[0].message.tool_calls is None
    assert fake_llm.requests[0]["temperature"] == 0.1 and fake_llm.requests[0]["seed"] == 3
    titles = [task["title"] for task in api(server, f"/api/{user}/tasks", user)["items"]]
    assert titles == ["renew passport"]


def test_langchain_chat_openai_holds_a_conversation_with_a_tool_call(gunicorn):
    from langchain_core.messages import HumanMessage
    from langchain_openai import ChatOpenAI

    server = gunicorn(**QUIET)
    user = someone()
    chat = ChatOpenAI(
        base_url=f"{server.url}/v1", api_key=token(user), model="todo", max_retries=0,
        timeout=30,
    )  # fmt: skip
    conversation: list[Any] = [HumanMessage("Add a task to book the dentist")]
    first = chat.invoke(conversation)
    assert "book the dentist" in first.content
    tasks = api(server, f"/api/{user}/tasks", user)["items"]
    assert [task["title"] for task in tasks] == ["book the dentist"]
    conversation += [first, HumanMessage("what are my tasks?")]
    second = chat.invoke(conversation)
    assert "book the dentist" in second.content
    streamed = "".join(chunk.content for chunk in chat.stream([HumanMessage("list my tasks")]))
    assert "book the dentist" in streamed


def test_citations_reach_the_sdk_as_sources_and_annotations(gunicorn):
    server = gunicorn(**QUIET)
    text = (CORPUS / "houseplants.md").read_text()
    request = Request(
        server.url + "/api/documents", method="POST",
        data=json.dumps({"title": "Watering houseplants", "text": text}).encode(),
        headers={"Content-Type": "application/json"},
    )  # fmt: skip
    with urlopen(request, timeout=30) as response:
        assert response.status in (200, 201)
    client = sdk(server, someone())
    question = [{"role": "user", "content": "How should I water houseplants?"}]
    completion = client.chat.completions.create(model="knowledge", messages=question)
    sources = completion.model_extra["sources"]
    assert sources and sources[0]["title"] == "Watering houseplants"
    citation = completion.choices[0].message.annotations[0].url_citation
    assert citation.url == sources[0]["url"]
    content = completion.choices[0].message.content
    assert content[citation.start_index : citation.end_index] == "[1]"
    answer = client.responses.create(model="knowledge", input="How should I water houseplants?")
    annotation = answer.output[0].content[0].annotations[0]
    assert annotation.type == "url_citation" and annotation.title == "Watering houseplants"
    assert answer.output_text[annotation.start_index : annotation.end_index] == "[1]"
    with client.responses.stream(model="knowledge", input="How do I water a houseplant?") as stream:
        added = [e.annotation for e in stream if e.type == "response.output_text.annotation.added"]
        final = stream.get_final_response()
    kept = final.output[0].content[0].annotations
    assert added and [a.model_dump() for a in kept] == [a.model_dump() for a in added]
