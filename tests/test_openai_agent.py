"""The OpenAI-compatible agent through HTTP, against a fake server speaking the wire format."""

from __future__ import annotations

import json
import threading
import time

import pytest
import sse
from fakellm import Response, call, drop, endless, error_midstream, fail, garbage, say, slow
from helpers import ok


def chat(client, message, conversation_id=None, user="alice", **headers):
    body = {"message": message}
    if conversation_id:
        body["conversation_id"] = conversation_id
    return client.post(f"/api/{user}/chat", json=body, headers=headers)


def history(client, conversation_id, user="alice"):
    response = client.get(f"/api/{user}/conversations/{conversation_id}")
    assert response.status_code == 200
    return response.json["messages"]


@pytest.fixture(params=[True, False], ids=["provider-streams", "provider-json"])
def client(request, llm_app):
    return llm_app(OPENAI_STREAM=request.param).test_client()


def test_answer_usage_and_system_prompt(client, fake_llm):
    fake_llm.script(say("Hello there, Alice!", usage=(12, 3)))
    response = chat(client, "Hi")
    assert response.status_code == 200
    body = response.json
    assert body["response"] == "Hello there, Alice!"
    assert body["model"] == "fake-model"
    assert body["usage"] == {"prompt_tokens": 12, "completion_tokens": 3, "total_tokens": 15}
    sent = fake_llm.requests[0]
    assert sent["model"] == "fake-model"
    assert sent["messages"][0]["role"] == "system"
    assert "task" in sent["messages"][0]["content"].lower()
    assert sent["messages"][-1] == {"role": "user", "content": "Hi"}
    assert fake_llm.headers[0]["authorization"] == "Bearer sk-test"
    stored = history(client, body["conversation_id"])[-1]
    assert stored["usage"] == body["usage"] and stored["status"] == "completed"


def test_tool_call_runs_for_the_turns_user_only(client, fake_llm):
    fake_llm.script(call(("add_task", {"title": "buy milk"})), say("Added task 1."))
    body = chat(client, "Add a task to buy milk").json
    assert body["response"] == "Added task 1."
    assert body["tool_calls"] == [
        {
            "tool": "add_task",
            "parameters": {"title": "buy milk"},
            "result": {"task_id": 1, "status": "created", "title": "buy milk"},
        }
    ]
    assert [t["title"] for t in client.get("/api/alice/tasks").json["items"]] == ["buy milk"]
    assert client.get("/api/bob/tasks").json["items"] == []
    schemas = json.dumps(fake_llm.requests[0]["tools"])
    assert "add_task" in schemas and "user" not in schemas.replace("user's", "")
    follow_up = fake_llm.requests[1]["messages"]
    assert follow_up[-2]["role"] == "assistant" and follow_up[-2]["tool_calls"]
    assert follow_up[-1]["role"] == "tool"
    assert follow_up[-1]["tool_call_id"] == follow_up[-2]["tool_calls"][0]["id"]
    assert json.loads(follow_up[-1]["content"])["status"] == "created"


def test_later_turns_replay_tool_calls_and_results(client, fake_llm):
    fake_llm.script(call(("add_task", {"title": "call mum"})), say("Done."), say("You have 1."))
    first = chat(client, "Remind me to call mum").json
    chat(client, "How many tasks?", first["conversation_id"])
    roles = [m["role"] for m in fake_llm.requests[2]["messages"]]
    assert roles == ["system", "user", "assistant", "tool", "assistant", "user"]
    replayed = fake_llm.requests[2]["messages"]
    assert replayed[2]["tool_calls"][0]["function"]["name"] == "add_task"
    assert json.loads(replayed[2]["tool_calls"][0]["function"]["arguments"]) == {
        "title": "call mum"
    }
    assert replayed[3]["tool_call_id"] == replayed[2]["tool_calls"][0]["id"]
    assert json.loads(replayed[3]["content"])["title"] == "call mum"
    assert replayed[4] == {"role": "assistant", "content": "Done."}


def test_wrong_tool_arguments_go_back_to_the_model(client, fake_llm):
    fake_llm.script(call(("complete_task", "{not json")), say("Which task did you mean?"))
    body = chat(client, "finish it").json
    assert body["status"] == "completed"
    assert body["response"] == "Which task did you mean?"
    assert body["tool_calls"][0]["result"]["error"] == "invalid_arguments"
    tool_message = fake_llm.requests[1]["messages"][-1]
    assert json.loads(tool_message["content"])["error"] == "invalid_arguments"


def test_tool_rounds_are_bounded_then_one_last_answer_without_tools(llm_app, fake_llm):
    client = llm_app(AGENT_MAX_TOOL_ROUNDS=2).test_client()
    looping = call(("list_tasks", {"status": "all"}))
    fake_llm.script(looping, looping, say("You have no tasks."))
    body = chat(client, "what's pending?").json
    assert body["response"] == "You have no tasks."
    assert [c["tool"] for c in body["tool_calls"]] == ["list_tasks", "list_tasks"]
    assert len(fake_llm.requests) == 3
    assert "tools" in fake_llm.requests[1] and "tools" not in fake_llm.requests[2]


STREAM = {"Accept": "text/event-stream"}

FAULTS = [
    (garbage(), 502, "upstream_error"),
    (fail(500), 502, "upstream_error"),
    (fail(401), 502, "upstream_error"),
    (drop(), 502, "upstream_error"),
    (fail(429, retry_after="7"), 503, "upstream_busy"),
    (slow(5), 504, "upstream_timeout"),
]


@pytest.mark.parametrize(
    ("fault", "status", "code"),
    FAULTS,
    ids=["garbage", "500", "401", "drop", "429", "slow"],
)
def test_provider_faults_map_to_problems_and_store_a_failed_turn(
    llm_app, fake_llm, fault, status, code
):
    client = llm_app(AGENT_TIMEOUT_SECONDS=1.0).test_client()
    conversation_id = chat(client, "first").json["conversation_id"]
    # A JSON turn asks for the whole completion at once: one fault fails it.
    fake_llm.script(fault)
    response = chat(client, "second", conversation_id)
    assert response.status_code == status
    assert response.mimetype == "application/problem+json"
    assert response.json["code"] == code
    if code == "upstream_busy":
        assert response.headers["Retry-After"] == "7"
    messages = history(client, conversation_id)
    assert [(m["role"], m["content"]) for m in messages[2:]][0] == ("user", "second")
    assert messages[3]["status"] == "failed" and messages[3]["error_code"] == code
    again = chat(client, "third", conversation_id)
    assert again.status_code == 200, "the conversation is usable at once"
    # The failed exchange is not sent to the model with the next message (issue 23).
    assert again.json["response"] == "fake: third"
    sent = [m["content"] for m in fake_llm.requests[-1]["messages"] if m["role"] == "user"]
    assert sent == ["first", "third"]


def test_max_tokens_is_sent_only_when_configured(llm_app, fake_llm):
    chat(llm_app(OPENAI_MAX_TOKENS=64).test_client(), "hello")
    chat(llm_app().test_client(), "hello")
    assert fake_llm.requests[0]["max_tokens"] == 64
    assert "max_tokens" not in fake_llm.requests[1]


def test_transient_failures_are_retried_within_the_deadline(llm_app, fake_llm):
    client = llm_app(AGENT_MAX_RETRIES=2).test_client()
    fake_llm.script(fail(503), fail(500), say("third time lucky"))
    response = chat(client, "hello")
    assert response.status_code == 200
    assert response.json["response"] == "third time lucky"


def test_a_retry_after_beyond_the_deadline_answers_at_once(llm_app, fake_llm):
    client = llm_app(AGENT_MAX_RETRIES=2, AGENT_TIMEOUT_SECONDS=5.0).test_client()
    fake_llm.script(fail(429, retry_after="30"))
    response = chat(client, "hello")
    assert response.status_code == 503
    assert response.headers["Retry-After"] == "30"
    assert len(fake_llm.requests) == 1


@pytest.mark.parametrize(
    ("fault", "code"),
    [
        (drop(midstream=True), "upstream_error"),
        (error_midstream(), "upstream_error"),
        (endless(), "upstream_timeout"),
    ],
    ids=["drop-midstream", "error-event-midstream", "endless"],
)
def test_stream_faults_end_the_stream_and_store_a_failed_turn(llm_app, fake_llm, fault, code):
    client = llm_app(AGENT_TIMEOUT_SECONDS=1.0).test_client()
    fake_llm.script(fault)
    response = client.post("/api/alice/chat", json={"message": "hi"}, headers=STREAM)
    events, _ = sse.parse(response.get_data(as_text=True))
    assert events[-1].name == "error" and events[-1].data["code"] == code
    conversation_id = events[0].data["conversation_id"]
    messages = history(client, conversation_id)
    assert [(m["role"], m["status"]) for m in messages] == [
        ("user", "completed"),
        ("assistant", "failed"),
    ]
    assert messages[1]["error_code"] == code
    assert chat(client, "again", conversation_id).status_code == 200


def test_a_server_that_cannot_stream_tool_calls_is_asked_again_without_streaming(llm_app, fake_llm):
    client = llm_app().test_client()
    fake_llm.script(drop(), call(("add_task", {"title": "water"})), say("Added water."))
    response = client.post("/api/alice/chat", json={"message": "add water"}, headers=STREAM)
    body = sse.parse(response.get_data(as_text=True))[0][-1].data
    assert body["tool_calls"][0]["result"]["status"] == "created"
    assert body["response"] == "Added water."
    assert [bool(r.get("stream")) for r in fake_llm.requests] == [True, False, True]


def test_streamed_turns_reuse_one_connection_to_the_provider(llm_app, fake_llm):
    """The stream is read to the end of its body after `[DONE]`, so its keep-alive connection
    goes back to the pool (the SDK's own stream drops it: a new connection, a new TLS
    handshake against a real provider, on every streamed turn)."""
    client = llm_app().test_client()
    for word in ("one", "two", "three"):
        response = client.post("/api/alice/chat", json={"message": word}, headers=STREAM)
        events, _ = sse.parse(response.get_data(as_text=True))
        assert events[-1].name == "done" and events[-1].data["response"] == f"fake: {word}"
    assert [bool(r.get("stream")) for r in fake_llm.requests] == [True, True, True]
    assert len(set(fake_llm.peers)) == 1


def test_concurrent_turns_spread_over_the_connection_pools_and_give_them_back(llm_app, fake_llm):
    """Each provider request takes the least busy of the worker's connection pools (httpcore
    walks a whole pool on every request, so one pool shared by 250 turns in flight costs CPU),
    and gives it back however the turn ends. A turn on its own finds the first
    pool idle and reuses its warm connection."""
    app = llm_app(AGENT_TIMEOUT_SECONDS=5.0)
    agent = app.extensions["chatsvc.turns"].agent
    fake_llm.script(slow(0.5, "one"), slow(0.5, "two"), slow(0.5, "three"))
    threads = [
        threading.Thread(target=chat, args=(app.test_client(), "hi"), kwargs={"user": user})
        for user in ("ann", "bob", "cy")
    ]
    for thread in threads:
        thread.start()
    deadline = time.monotonic() + 5
    while sum(agent.in_flight()) < 3 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert agent.in_flight()[:4] == [1, 1, 1, 0]
    for thread in threads:
        thread.join(timeout=10)
    idle = [0] * len(agent.in_flight())
    assert agent.in_flight() == idle
    concurrent = set(fake_llm.peers)
    assert len(concurrent) == 3

    client = app.test_client()
    assert ok(chat(client, "alone"))["response"] == "fake: alone"
    assert fake_llm.peers[-1] in concurrent  # no new connection
    fake_llm.script(fail(500))
    assert chat(client, "fails").status_code == 502
    fake_llm.script(drop(midstream=True))
    events, _ = sse.parse(
        client.post("/api/alice/chat", json={"message": "drops"}, headers=STREAM).get_data(
            as_text=True
        )
    )
    assert events[-1].name == "error"
    assert agent.in_flight() == idle


def test_the_model_is_told_the_users_day(llm_app, fake_llm):
    """X-Timezone reaches the model's system prompt: "tomorrow" is the user's tomorrow."""
    from datetime import UTC, datetime
    from zoneinfo import ZoneInfo

    client = llm_app().test_client()
    for zone in ("Pacific/Kiritimati", "Pacific/Pago_Pago", "UTC"):
        response = client.post(
            "/api/alice/chat", json={"message": "hi"}, headers={"X-Timezone": zone}
        )
        assert response.status_code == 200, response.json
        system = fake_llm.requests[-1]["messages"][0]["content"]
        today = datetime.now(UTC).astimezone(ZoneInfo(zone))
        assert f"Today is {today:%A %Y-%m-%d} ({zone})." in system


@pytest.mark.parametrize("streams", [True, False], ids=["provider-streams", "provider-json"])
def test_the_provider_gets_the_request_the_sdk_itself_sends(llm_app, fake_llm, streams):
    """The completion request goes out past the SDK's per-request layer (speedups.py,
    `_ChatCompletions`): the provider must see what the SDK's own `post` sends for the same
    body — every header (the key, User-Agent, X-Stainless-*, Content-Length: the same bytes)
    but the read timeout, which is the turn's deadline."""
    import httpx2
    import openai

    client = llm_app(OPENAI_STREAM=streams).test_client()
    accept = {"Accept": "text/event-stream"} if streams else {}  # a watched turn streams
    turn = client.post("/api/alice/chat", json={"message": "Hi é"}, headers=accept)
    assert turn.status_code == 200 and "fake: Hi" in turn.get_data(as_text=True)
    body, headers = fake_llm.requests[0], fake_llm.headers[0]
    assert body.get("stream", False) is streams
    sdk = openai.OpenAI(base_url=fake_llm.url, api_key="sk-test", max_retries=0)
    answer = sdk.post(
        "/chat/completions", body=body, cast_to=httpx2.Response if streams else object,
        options={"timeout": 2.0, "security": {"bearer_auth": True}}, stream=streams,
    )  # fmt: skip
    if streams:
        answer.read()
        answer.close()
    sdk.close()
    assert fake_llm.requests[1] == body
    timeouts = (
        headers.pop("x-stainless-read-timeout"),
        fake_llm.headers[1].pop("x-stainless-read-timeout"),
    )
    assert headers == fake_llm.headers[1]
    assert 0 < float(timeouts[0]) <= float(timeouts[1]) == 2.0  # AGENT_TIMEOUT_SECONDS
    assert headers["authorization"] == "Bearer sk-test"
    assert headers["user-agent"].startswith("OpenAI/Python")


def test_a_client_whose_key_is_a_callable_goes_through_the_sdk(fake_llm):
    """A client the SDK has to prepare each request for (here an API key read by a callable,
    as workload identity or a provider runtime would be) is sent through the SDK's `post`."""
    import openai

    from chatsvc.agent.openai import _ChatCompletions

    keys = iter(["sk-first", "sk-second"])
    sdk = openai.OpenAI(base_url=fake_llm.url, api_key=lambda: next(keys), max_retries=0)
    sender = _ChatCompletions(sdk)
    for _ in range(2):
        answer = sender.post({"model": "m", "messages": [{"role": "user", "content": "x"}]}, 2.0,
                             stream=False)  # fmt: skip
        assert answer["choices"][0]["message"]["content"] == "fake: x"
    assert [h["authorization"] for h in fake_llm.headers] == ["Bearer sk-first", "Bearer sk-second"]
    sdk.close()


def test_a_cookie_the_provider_set_goes_with_the_next_request(fake_llm):
    """The completion request is built from headers merged once (`_ChatCompletions._request`),
    not by the httpx client's `build_request`: a cookie the provider set (a load balancer's
    sticky route) still goes with the requests after it, as `build_request` would send it."""
    import openai

    from chatsvc.agent.openai import _ChatCompletions

    fake_llm.script(
        Response(fault="status", status=503, headers={"Set-Cookie": "route=b; Path=/"}),
        say("after the cookie"),
    )
    sdk = openai.OpenAI(base_url=fake_llm.url, api_key="sk-test", max_retries=0)
    sender = _ChatCompletions(sdk)
    body = {"model": "m", "messages": [{"role": "user", "content": "x"}]}
    with pytest.raises(openai.APIStatusError):
        sender.post(body, 2.0, stream=False)
    answer = sender.post(body, 2.0, stream=False)
    sdk.close()
    assert answer["choices"][0]["message"]["content"] == "after the cookie"
    assert "cookie" not in fake_llm.headers[0]
    assert fake_llm.headers[1]["cookie"] == "route=b"
    assert fake_llm.headers[1]["authorization"] == "Bearer sk-test"
