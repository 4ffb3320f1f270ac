"""The OpenAI-compatible API (contract §9) through HTTP: /v1/models, /v1/chat/completions,
/v1/responses, on the local agent and on the openai adapter in front of the fake model, on
SQLite and PostgreSQL. The real SDK and LangChain are in test_openai_clients.py."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from fakellm import call, error_midstream, fail, say
from helpers import history, ok, tasks

from chatsvc.auth import create_token

SECRET = "v" * 40
CORPUS = Path(__file__).parent / "corpus"


def bearer(user: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {create_token(user, secret=SECRET)}"}


def complete(client: Any, *messages: Any, user: str | None = "alice", **body: Any) -> Any:
    """POST /v1/chat/completions; a str message is the user's."""
    listed = [{"role": "user", "content": m} if isinstance(m, str) else m for m in messages]
    headers = {**bearer(user)} if user else {}
    headers.update(body.pop("headers", {}))
    return client.post(
        "/v1/chat/completions",
        json={"model": body.pop("model", "todo"), "messages": listed, **body},
        headers=headers,
    )


def respond(client: Any, input: Any, *, user: str | None = "alice", **body: Any) -> Any:
    headers = {**bearer(user)} if user else {}
    headers.update(body.pop("headers", {}))
    return client.post(
        "/v1/responses",
        json={"model": body.pop("model", "todo"), "input": input, **body},
        headers=headers,
    )


def assert_error(response: Any, status: int, code: str, param: str | None = None) -> dict:
    """OpenAI's error envelope with the contract's status and code."""
    assert response.status_code == status, response.get_data(as_text=True)
    assert response.mimetype == "application/json"
    error = response.get_json()["error"]
    assert set(error) == {"message", "type", "code", "param"}
    assert error["code"] == code
    assert error["message"]
    assert error["param"] == param
    return error


def data_lines(response: Any) -> list[Any]:
    """The `data:` payloads of an SSE body (JSON, or the literal `[DONE]`)."""
    out = []
    for block in response.get_data(as_text=True).split("\n\n"):
        for line in block.splitlines():
            if line.startswith("data: "):
                payload = line[len("data: ") :]
                out.append(payload if payload == "[DONE]" else json.loads(payload))
    return out


def typed_events(response: Any) -> list[tuple[str, dict[str, Any]]]:
    out = []
    for block in response.get_data(as_text=True).split("\n\n"):
        fields = dict(line.split(": ", 1) for line in block.splitlines() if ": " in line)
        if "event" in fields:
            data = json.loads(fields["data"])
            assert data["type"] == fields["event"]
            out.append((fields["event"], data))
    return out


@pytest.fixture
def v1(make_app):
    return make_app({"JWT_SECRET": SECRET}).test_client()


@pytest.fixture
def v1_llm(llm_app):
    return llm_app(JWT_SECRET=SECRET).test_client()


# Models ----------------------------------------------------------------------------------


def test_models_are_listed_in_openai_shape(v1):
    body = ok(v1.get("/v1/models", headers=bearer("alice")))
    assert body["object"] == "list"
    assert [model["id"] for model in body["data"]] == ["todo", "knowledge"]
    for model in body["data"]:
        assert model["object"] == "model" and model["owned_by"] == "chatsvc"
        assert isinstance(model["created"], int)
    assert ok(v1.get("/v1/models/knowledge"))["id"] == "knowledge"
    assert_error(v1.get("/v1/models/gpt-4o"), 404, "model_not_found", "model")


def test_an_unknown_model_is_404_model_not_found(v1):
    response = complete(v1, "hello", model="gpt-4o")
    assert_error(response, 404, "model_not_found", "model")
    assert_error(respond(v1, "hello", model="gpt-4o"), 404, "model_not_found", "model")


# Chat completions: the answer, the stored turn -------------------------------------------


def test_a_completion_runs_the_todo_assistant_for_the_tokens_user(v1):
    response = complete(v1, "Add a task to buy milk")
    body = ok(response)
    assert body["object"] == "chat.completion"
    assert body["model"] == "todo"
    choice = body["choices"][0]
    assert choice["index"] == 0 and choice["finish_reason"] == "stop"
    assert choice["message"]["role"] == "assistant"
    assert "buy milk" in choice["message"]["content"]
    assert set(body["usage"]) == {"prompt_tokens", "completion_tokens", "total_tokens"}
    assert body["sources"] == []
    # The tool ran server-side for alice, and the turn is stored in the conversation named.
    assert [task["title"] for task in tasks(v1, "alice")] == ["buy milk"]
    conversation = response.headers["X-Conversation-Id"]
    stored = history(v1, "alice", conversation)
    assert [m["role"] for m in stored] == ["user", "assistant"]
    assert stored[0]["content"] == "Add a task to buy milk"
    assert stored[1]["content"] == choice["message"]["content"]
    assert body["id"] == f"chatcmpl-{stored[1]['id']}"
    assert stored[1]["tool_calls"][0]["tool"] == "add_task"
    assert tasks(v1, "bob") == []


def test_metadata_conversation_id_stores_the_turn_there(v1):
    first = complete(v1, "Add a task to water the plants")
    conversation = first.headers["X-Conversation-Id"]
    second = complete(v1, "list my tasks", metadata={"conversation_id": conversation})
    assert second.headers["X-Conversation-Id"] == conversation
    assert len(history(v1, "alice", conversation)) == 4
    # Another user's conversation (and one that does not exist) is not found.
    other = complete(v1, "hi", user="bob", metadata={"conversation_id": conversation})
    assert_error(other, 404, "not_found")
    assert_error(complete(v1, "hi", metadata={"conversation_id": "nope"}), 404, "not_found")
    assert len(history(v1, "alice", conversation)) == 4


def test_the_requests_messages_are_the_context_not_the_stored_history(v1_llm, fake_llm):
    first = complete(v1_llm, "remember the word zebra")
    conversation = first.headers["X-Conversation-Id"]
    fake_llm.requests.clear()
    messages = [
        {"role": "system", "content": "Answer in French."},
        {"role": "user", "content": "my name is Ada"},
        {"role": "assistant", "content": "Hello Ada"},
        {"role": "developer", "content": "Be brief."},
        {"role": "user", "content": [{"type": "text", "text": "what is my name?"}]},
    ]
    body = ok(complete(v1_llm, *messages, metadata={"conversation_id": conversation}))
    assert body["choices"][0]["message"]["content"] == "fake: what is my name?"
    sent = fake_llm.requests[0]["messages"]
    # chatsvc's prompt first, the client's instructions after it, in one system message
    assert sent[0]["role"] == "system"
    prompt = sent[0]["content"]
    assert prompt.index("Todo assistant") < prompt.index("Answer in French.\n\nBe brief.")
    assert [(m["role"], m["content"]) for m in sent[1:]] == [
        ("user", "my name is Ada"),
        ("assistant", "Hello Ada"),
        ("user", "what is my name?"),
    ]
    assert "zebra" not in json.dumps(sent)
    stored = history(v1_llm, "alice", conversation)
    assert stored[-2]["content"] == "what is my name?"


def test_the_clients_context_is_held_to_the_history_limits(llm_app, fake_llm):
    client = llm_app(JWT_SECRET=SECRET, HISTORY_LIMIT=2).test_client()
    older = [{"role": r, "content": f"old {n}"} for n in range(3) for r in ("user", "assistant")]
    ok(complete(client, *older, "newest"))
    sent = fake_llm.requests[0]["messages"]
    assert [m["content"] for m in sent[1:]] == ["old 2", "old 2", "newest"]


def test_sampling_settings_go_to_the_provider(v1_llm, fake_llm):
    sampling = {"temperature": 0.2, "top_p": 0.9, "max_tokens": 50, "stop": ["\n\n"], "seed": 7}
    ok(complete(v1_llm, "hello", **sampling))
    sent = fake_llm.requests[0]
    assert {name: sent[name] for name in sampling} == sampling
    ok(complete(v1_llm, "hello", max_completion_tokens=40))
    assert fake_llm.requests[1]["max_completion_tokens"] == 40


def test_the_local_agent_ignores_sampling_settings(v1):
    body = ok(complete(v1, "Add a task to call mum", temperature=1.5, seed=3, stop="x"))
    assert "call mum" in body["choices"][0]["message"]["content"]


def test_the_knowledge_model_answers_from_the_knowledge_base_with_sources(v1):
    text = (CORPUS / "houseplants.md").read_text()
    ok(v1.post("/api/documents", json={"title": "Watering houseplants", "text": text}), 201)
    body = ok(complete(v1, "How should I water houseplants?", model="knowledge", user=None))
    assert body["model"] == "knowledge"
    answer = body["choices"][0]["message"]
    assert body["sources"] and body["sources"][0]["title"] == "Watering houseplants"
    citation = answer["annotations"][0]
    assert citation["type"] == "url_citation"
    marked = answer["content"][
        citation["url_citation"]["start_index"] : citation["url_citation"]["end_index"]
    ]
    assert marked == "[1]"
    assert citation["url_citation"]["url"] == body["sources"][0]["url"]


def test_the_knowledge_model_runs_no_task_tools(v1):
    response = complete(v1, "Add a task to buy milk", model="knowledge")
    ok(response)
    assert tasks(v1, "alice") == []
    conversation = ok(v1.get("/api/alice/conversations", headers=bearer("alice")))["items"][0]
    assert conversation["kind"] == "session"
    assert conversation["id"] == response.headers["X-Conversation-Id"]


# Chat completions: streaming -------------------------------------------------------------


def test_a_streamed_completion_is_chunks_ending_with_done(v1):
    response = complete(
        v1, "Add a task to buy bread", stream=True, stream_options={"include_usage": True}
    )
    assert response.status_code == 200
    assert response.mimetype == "text/event-stream"
    assert response.headers["X-Accel-Buffering"] == "no"
    frames = data_lines(response)
    assert frames[-1] == "[DONE]"
    chunks = frames[:-1]
    assert all(chunk["object"] == "chat.completion.chunk" for chunk in chunks)
    assert len({chunk["id"] for chunk in chunks}) == 1
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    usage = chunks[-1]
    assert usage["choices"] == [] and set(usage["usage"]) == {
        "prompt_tokens", "completion_tokens", "total_tokens",
    }  # fmt: skip
    last = chunks[-2]
    assert last["choices"][0]["finish_reason"] == "stop" and last["sources"] == []
    text = "".join(c["choices"][0]["delta"].get("content", "") for c in chunks if c["choices"])
    stored = history(v1, "alice", response.headers["X-Conversation-Id"])[-1]
    assert text == stored["content"] and "buy bread" in text
    assert chunks[0]["id"] == f"chatcmpl-{stored['id']}"


def test_without_include_usage_no_usage_chunk(v1):
    frames = data_lines(complete(v1, "hello", stream=True))
    assert frames[-1] == "[DONE]"
    assert frames[-2]["choices"][0]["finish_reason"] == "stop"
    assert all("usage" not in frame for frame in frames[:-1])


def test_a_failure_mid_stream_is_an_error_frame(v1_llm, fake_llm):
    fake_llm.script(error_midstream())
    response = complete(v1_llm, "hello", stream=True)
    frames = data_lines(response)
    assert frames[-1] != "[DONE]"
    assert frames[-1]["error"]["code"] == "upstream_error"
    assert frames[-1]["error"]["type"] == "server_error"


# Errors in OpenAI's envelope -------------------------------------------------------------


@pytest.mark.parametrize(
    ("extra", "param"),
    [
        ({"tools": [{"type": "function", "function": {"name": "f"}}]}, "tools"),
        ({"functions": [{"name": "f"}]}, "functions"),
        ({"tool_choice": "required"}, "tool_choice"),
        ({"n": 2}, "n"),
        ({"logprobs": True}, "logprobs"),
        ({"top_logprobs": 3}, "top_logprobs"),
        ({"response_format": {"type": "json_object"}}, "response_format"),
    ],
)
def test_what_chatsvc_cannot_do_is_400_unsupported_parameter(v1, extra, param):
    assert_error(complete(v1, "Add a task to x", **extra), 400, "unsupported_parameter", param)
    assert tasks(v1, "alice") == []


def test_neutral_values_of_those_parameters_are_accepted(v1):
    neutral = {"tools": [], "n": 1, "logprobs": False, "tool_choice": "none", "user": "u1",
               "response_format": {"type": "text"}, "parallel_tool_calls": False}  # fmt: skip
    ok(complete(v1, "hello", **neutral))


@pytest.mark.parametrize(
    ("messages", "status", "code", "param"),
    [
        ([], 422, "validation_error", "messages"),
        ([{"role": "assistant", "content": "hi"}], 422, "validation_error", "messages"),
        ([{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}], 422,
         "validation_error", "messages"),
        ([{"role": "system", "content": "only instructions"}], 422, "validation_error",
         "messages"),
        ([{"role": "user", "content": "   "}], 422, "validation_error", "messages[0].content"),
        ([{"role": "user", "content": "x" * 4001}], 422, "validation_error",
         "messages[0].content"),
        ([{"role": "user", "content": "a\x00b"}], 422, "validation_error", "messages[0].content"),
        ([{"role": "user"}], 422, "validation_error", "messages[0].content"),
        ([{"role": "wizard", "content": "hi"}], 422, "validation_error", "messages[0].role"),
        ([{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}],
         422, "validation_error", "messages[0].content"),
        ([{"role": "tool", "content": "42", "tool_call_id": "c1"}], 422, "validation_error",
         "messages[0].tool_call_id"),
        ([{"role": "tool", "content": "42"}, {"role": "user", "content": "hi"}], 400,
         "unsupported_parameter", "messages[0].role"),
        ("hello", 422, "validation_error", "messages"),
    ],
)  # fmt: skip
def test_malformed_messages_are_refused_naming_the_field(v1, messages, status, code, param):
    response = v1.post(
        "/v1/chat/completions", json={"model": "todo", "messages": messages},
        headers=bearer("alice"),
    )  # fmt: skip
    assert_error(response, status, code, param)
    assert ok(v1.get("/api/alice/conversations"))["items"] == []


def test_malformed_requests_are_refused_in_the_envelope(v1):
    headers = {**bearer("alice"), "content-type": "application/json"}
    assert_error(v1.post("/v1/chat/completions", data="{", headers=headers), 400, "bad_request")
    response = v1.post("/v1/chat/completions", data="x", headers={**bearer("alice")})
    assert_error(response, 415, "unsupported_media_type")
    assert_error(complete(v1, "hi", colour="blue"), 422, "validation_error", "colour")
    assert_error(complete(v1, "hi", temperature=3), 422, "validation_error", "temperature")
    assert_error(v1.get("/v1/chat/completions"), 405, "method_not_allowed")
    assert v1.get("/v1/chat/completions").headers["Allow"] == "OPTIONS, POST"
    assert_error(
        complete(v1, "hi", headers={"X-Timezone": "Mars/Olympus"}), 422, "validation_error",
        "X-Timezone",
    )  # fmt: skip


def test_agent_failures_keep_their_statuses(v1_llm, fake_llm):
    fake_llm.script(fail(500))
    assert_error(complete(v1_llm, "hello"), 502, "upstream_error")
    fake_llm.script(fail(429, retry_after="7"))
    response = complete(v1_llm, "hello")
    assert_error(response, 503, "upstream_busy")
    assert response.headers["Retry-After"] == "7"


# Auth, isolation, limits, quotas, idempotency --------------------------------------------


def test_todo_needs_a_token_knowledge_is_anonymous_where_sessions_are(make_app):
    client = make_app({"JWT_SECRET": SECRET}).test_client()  # AUTH_MODE=optional
    assert_error(complete(client, "hi", user=None), 401, "unauthorized")
    ok(complete(client, "hi", user=None, model="knowledge"))
    assert_error(
        complete(client, "hi", user=None, headers={"Authorization": "Bearer nope"}), 401,
        "unauthorized",
    )  # fmt: skip
    strict = make_app(
        {"AUTH_MODE": "required", "JWT_SECRET": SECRET, "ALLOW_ANONYMOUS_SESSIONS": False}
    ).test_client()
    assert_error(strict.get("/v1/models"), 401, "unauthorized")
    assert_error(complete(strict, "hi", user=None, model="knowledge"), 401, "unauthorized")
    ok(complete(strict, "hi", model="knowledge"))
    open_sessions = make_app(
        {"AUTH_MODE": "required", "JWT_SECRET": SECRET, "ALLOW_ANONYMOUS_SESSIONS": True}
    ).test_client()
    ok(complete(open_sessions, "hi", user=None, model="knowledge"))
    assert_error(complete(open_sessions, "hi", user=None), 401, "unauthorized")


def test_v1_turns_share_the_chat_rate_limit(make_app):
    config = {"JWT_SECRET": SECRET, "RATELIMIT_ENABLED": True, "RATELIMIT_CHAT": "2 per minute"}
    client = make_app(config).test_client()
    ok(client.post("/api/alice/chat", json={"message": "hi"}, headers=bearer("alice")))
    ok(complete(client, "hi"))
    response = complete(client, "hi")
    error = assert_error(response, 429, "rate_limited")
    assert error["type"] == "rate_limit_error"
    assert int(response.headers["Retry-After"]) > 0
    assert response.headers["X-RateLimit-Limit"] == "2"


def test_quota_remaining_and_quota_exceeded(llm_app, fake_llm):
    client = llm_app(JWT_SECRET=SECRET, QUOTA_TOKENS_PER_DAY=20).test_client()
    fake_llm.script(say("one", usage=(10, 5)))
    response = complete(client, "hello")
    ok(response)
    assert response.headers["X-Quota-Remaining"] == "5"
    fake_llm.script(say("two", usage=(10, 5)))
    ok(complete(client, "hello"))
    response = complete(client, "hello")
    error = assert_error(response, 429, "quota_exceeded")
    assert error["type"] == "insufficient_quota"
    assert int(response.headers["Retry-After"]) > 0


def test_an_idempotent_retry_replays_the_completion(v1):
    key = {"Idempotency-Key": "k-1"}
    first = complete(v1, "Add a task to feed the cat", headers=key)
    again = complete(v1, "Add a task to feed the cat", headers=key)
    assert ok(again)["id"] == ok(first)["id"]
    assert again.headers["Idempotent-Replayed"] == "true"
    assert again.headers["X-Conversation-Id"] == first.headers["X-Conversation-Id"]
    assert [task["title"] for task in tasks(v1, "alice")] == ["feed the cat"]
    assert_error(complete(v1, "Add a task to feed the dog", headers=key), 422,
                 "idempotency_mismatch")  # fmt: skip
    # Keys are the caller's: bob's same key is a turn of his own.
    assert ok(complete(v1, "hello", user="bob", headers=key))["id"] != ok(first)["id"]
    streamed = complete(v1, "Add a task to feed the cat", headers=key, stream=True)
    assert streamed.headers["Idempotent-Replayed"] == "true"
    frames = data_lines(streamed)
    assert frames[0]["id"] == ok(first)["id"] and frames[-1] == "[DONE]"


# Responses -------------------------------------------------------------------------------


def test_a_response_and_its_continuation_by_previous_response_id(v1_llm, fake_llm):
    first = ok(respond(v1_llm, "my name is Ada", instructions="Be brief."))
    assert first["object"] == "response" and first["status"] == "completed"
    assert first["model"] == "todo" and first["instructions"] == "Be brief."
    item = first["output"][0]
    assert item["type"] == "message" and item["role"] == "assistant"
    assert item["content"][0]["type"] == "output_text"
    assert item["content"][0]["text"] == "fake: my name is Ada"
    assert item["content"][0]["annotations"] == []
    assert set(first["usage"]) >= {"input_tokens", "output_tokens", "total_tokens"}
    assert "Be brief." in fake_llm.requests[0]["messages"][0]["content"]

    second = ok(respond(v1_llm, "what is my name?", previous_response_id=first["id"]))
    assert second["previous_response_id"] == first["id"]
    assert second["conversation"] == first["conversation"]
    sent = fake_llm.requests[1]["messages"]
    assert [m["content"] for m in sent[1:]] == [
        "my name is Ada", "fake: my name is Ada", "what is my name?",
    ]  # fmt: skip
    assert "Be brief." not in sent[0]["content"]  # instructions do not carry over
    stored = history(v1_llm, "alice", first["conversation"]["id"])
    assert [m["id"] for m in stored if m["role"] == "assistant"] == [first["id"], second["id"]]

    third = ok(respond(v1_llm, "and again", conversation=first["conversation"]["id"]))
    assert third["conversation"] == first["conversation"]
    fetched = ok(v1_llm.get(f"/v1/responses/{second['id']}", headers=bearer("alice")))
    assert fetched["output"] == second["output"] and fetched["status"] == "completed"
    assert fetched["usage"] == second["usage"]


def test_responses_are_the_callers_own(v1):
    first = ok(respond(v1, "Add a task to paint"))
    assert_error(v1.get(f"/v1/responses/{first['id']}", headers=bearer("bob")), 404, "not_found")
    assert_error(v1.get(f"/v1/responses/{first['id']}"), 404, "not_found")
    assert_error(respond(v1, "hi", user="bob", previous_response_id=first["id"]), 404, "not_found")
    assert_error(v1.get("/v1/responses/nope", headers=bearer("alice")), 404, "not_found")
    # A user message's id is no response.
    user_message = history(v1, "alice", first["conversation"]["id"])[0]["id"]
    assert_error(v1.get(f"/v1/responses/{user_message}", headers=bearer("alice")), 404,
                 "not_found")  # fmt: skip
    # A todo response is not continued as the knowledge model.
    response = respond(v1, "hi", model="knowledge", previous_response_id=first["id"])
    assert_error(response, 404, "not_found")


def test_an_anonymous_knowledge_response_is_reachable_by_its_id(v1):
    first = ok(respond(v1, "hello", user=None, model="knowledge"))
    assert ok(v1.get(f"/v1/responses/{first['id']}"))["id"] == first["id"]
    second = ok(respond(v1, "again", user=None, model="knowledge",
                        previous_response_id=first["id"]))  # fmt: skip
    assert second["conversation"] == first["conversation"]


def test_input_items_start_a_conversation_with_their_context(v1_llm, fake_llm):
    items = [
        {"role": "developer", "content": "Be kind."},
        {"role": "user", "content": "I like tea"},
        {"type": "message", "role": "assistant", "content": [
            {"type": "output_text", "text": "Noted"}]},
        {"role": "user", "content": [{"type": "input_text", "text": "what do I like?"}]},
    ]  # fmt: skip
    body = ok(respond(v1_llm, items))
    assert body["output"][0]["content"][0]["text"] == "fake: what do I like?"
    sent = fake_llm.requests[0]["messages"]
    assert "Be kind." in sent[0]["content"]
    assert [m["content"] for m in sent[1:]] == ["I like tea", "Noted", "what do I like?"]
    # Continuing, the earlier messages are the stored ones: items before the new one are refused.
    response = respond(v1_llm, items, previous_response_id=body["id"])
    assert_error(response, 400, "unsupported_parameter", "input")


@pytest.mark.parametrize(
    ("extra", "status", "code", "param"),
    [
        ({"store": False}, 400, "unsupported_parameter", "store"),
        ({"tools": [{"type": "web_search"}]}, 400, "unsupported_parameter", "tools"),
        ({"text": {"format": {"type": "json_object"}}}, 400, "unsupported_parameter",
         "text.format"),
        ({"previous_response_id": "a", "conversation": "b"}, 422, "validation_error",
         "conversation"),
        ({"conversation": {"name": "x"}}, 422, "validation_error", "conversation"),
        ({"max_tokens": 5}, 422, "validation_error", "max_tokens"),
    ],
)  # fmt: skip
def test_responses_refuse_what_they_cannot_do(v1, extra, status, code, param):
    assert_error(respond(v1, "hi", **extra), status, code, param)


def test_a_streamed_response_is_typed_events(v1):
    response = respond(v1, "Add a task to sweep", stream=True)
    assert response.mimetype == "text/event-stream"
    events = typed_events(response)
    names = [name for name, _ in events]
    assert names[:4] == [
        "response.created", "response.in_progress", "response.output_item.added",
        "response.content_part.added",
    ]  # fmt: skip
    assert names[-4:] == [
        "response.output_text.done", "response.content_part.done", "response.output_item.done",
        "response.completed",
    ]  # fmt: skip
    assert [data["sequence_number"] for _, data in events] == list(range(1, len(events) + 1))
    deltas = "".join(data["delta"] for name, data in events if name.endswith(".delta"))
    completed = events[-1][1]["response"]
    assert completed["status"] == "completed"
    assert completed["output"][0]["content"][0]["text"] == deltas
    assert events[0][1]["response"]["id"] == completed["id"]
    stored = ok(v1.get(f"/v1/responses/{completed['id']}", headers=bearer("alice")))
    assert stored["output"][0]["content"][0]["text"] == deltas and "sweep" in deltas


def test_a_failed_streamed_response_ends_with_response_failed(v1_llm, fake_llm):
    fake_llm.script(error_midstream())
    events = typed_events(respond(v1_llm, "hello", stream=True))
    name, data = events[-1]
    assert name == "response.failed"
    assert data["response"]["status"] == "failed"
    assert data["response"]["error"] == {
        "code": "server_error", "message": data["response"]["error"]["message"],
        "type": "upstream_error",
    }  # fmt: skip
    stored = ok(v1_llm.get(f"/v1/responses/{data['response']['id']}", headers=bearer("alice")))
    assert stored["status"] == "failed" and stored["error"]["type"] == "upstream_error"


def test_a_tool_call_on_the_provider_runs_server_side(v1_llm, fake_llm):
    fake_llm.script(call(("add_task", {"title": "ship it"})), say("Added 'ship it'."))
    body = ok(respond(v1_llm, "add ship it"))
    assert body["output"][0]["content"][0]["text"] == "Added 'ship it'."
    assert [task["title"] for task in tasks(v1_llm, "alice")] == ["ship it"]
    assert fake_llm.requests[0]["tools"]  # chatsvc's own tools were offered to the model


def test_the_v1_routes_are_documented(v1):
    document = ok(v1.get("/openapi.json"))
    for path in ("/v1/models", "/v1/chat/completions", "/v1/responses",
                 "/v1/responses/{response_id}"):  # fmt: skip
        assert path in document["paths"]
    errors = document["paths"]["/v1/chat/completions"]["post"]["responses"]["400"]
    assert errors["content"]["application/json"]["schema"]["$ref"].endswith("/OpenAIError")
