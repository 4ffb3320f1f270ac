"""What an operator sets at run time: JWT key rollover (JWT_SECRETS) and the log format
(LOG_FORMAT), with every log line of a request carrying its request id."""

from __future__ import annotations

import json
import time
import urllib.request
import uuid
from urllib.error import HTTPError

import pytest
from conftest import empty_tables
from fakellm import fail
from helpers import assert_problem
from sqlalchemy import create_engine

from chatsvc.auth import create_token
from chatsvc.config import ConfigError, load

OLD = "o" * 40
NEW = "n" * 40


def bearer(secret: str, user: str = "alice") -> dict[str, str]:
    return {"Authorization": f"Bearer {create_token(user, secret=secret)}"}


@pytest.fixture
def served(gunicorn, database_url: str):
    """The gunicorn fixture; what its requests stored is deleted after the test, so the tests
    after this one start from an empty database, as make_app's do."""
    yield gunicorn
    empty_tables(create_engine(database_url))


def test_tokens_signed_with_either_key_are_accepted_during_a_rollover(make_app):
    client = make_app(
        {"AUTH_MODE": "required", "JWT_SECRET": NEW, "JWT_SECRETS": OLD}
    ).test_client()
    for secret in (NEW, OLD):
        assert client.get("/api/alice/tasks", headers=bearer(secret)).status_code == 200
    assert_problem(client.get("/api/alice/tasks", headers=bearer("x" * 40)), 401, "unauthorized")


def test_after_the_rollover_the_old_key_is_refused(make_app):
    client = make_app({"AUTH_MODE": "required", "JWT_SECRET": NEW}).test_client()
    assert client.get("/api/alice/tasks", headers=bearer(NEW)).status_code == 200
    assert_problem(client.get("/api/alice/tasks", headers=bearer(OLD)), 401, "unauthorized")


def test_an_old_key_does_not_widen_what_a_token_may_reach(make_app):
    client = make_app(
        {"AUTH_MODE": "required", "JWT_SECRET": NEW, "JWT_SECRETS": OLD}
    ).test_client()
    response = client.get("/api/alice/tasks", headers=bearer(OLD, user="mallory"))
    assert_problem(response, 403, "forbidden")


def test_an_expired_token_signed_with_the_old_key_says_it_expired(make_app):
    from datetime import timedelta

    client = make_app(
        {"AUTH_MODE": "required", "JWT_SECRET": NEW, "JWT_SECRETS": OLD}
    ).test_client()
    token = create_token("alice", secret=OLD, ttl=timedelta(seconds=-10))
    response = client.get("/api/alice/tasks", headers={"Authorization": f"Bearer {token}"})
    assert assert_problem(response, 401, "unauthorized")["detail"] == "The token has expired."


def test_production_refuses_a_short_key_in_jwt_secrets():
    environ = {
        "CHATSVC_ENV": "production", "DATABASE_URL": "postgresql+psycopg://db/x",
        "JWT_SECRET": NEW, "JWT_SECRETS": f"{OLD},short",
    }  # fmt: skip
    with pytest.raises(ConfigError, match="JWT_SECRETS"):
        load(environ)
    assert load({**environ, "JWT_SECRETS": OLD})["JWT_SECRETS"] == OLD


def test_log_format_defaults_by_environment_and_is_checked():
    assert load({"CHATSVC_ENV": "development"})["LOG_FORMAT"] == "text"
    production = {"DATABASE_URL": "postgresql+psycopg://db/x", "JWT_SECRET": NEW}
    assert load({"CHATSVC_ENV": "production", **production})["LOG_FORMAT"] == "json"
    assert load({"CHATSVC_ENV": "development", "LOG_FORMAT": "json"})["LOG_FORMAT"] == "json"
    with pytest.raises(ConfigError, match="LOG_FORMAT"):
        load({"LOG_FORMAT": "xml"})


def failing_turn(url: str, request_id: str) -> int:
    request = urllib.request.Request(
        url + "/api/alice/chat",
        data=json.dumps({"message": "hello"}).encode(),
        headers={"Content-Type": "application/json", "X-Request-ID": request_id},
    )
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status
    except HTTPError as error:
        return error.code


def lines_of(server, request_id: str, count: int) -> list[str]:
    """The server's log lines naming the request id, once `count` of them are there."""
    deadline = time.monotonic() + 10
    while True:
        found = [line for line in server.log.read_text().splitlines() if request_id in line]
        if len(found) >= count or time.monotonic() > deadline:
            return found
        time.sleep(0.05)


PROVIDER = {"AGENT_PROVIDER": "openai", "AGENT_MAX_RETRIES": "0", "OPENAI_API_KEY": "sk-test"}


def test_json_logs_carry_the_request_id_on_every_line_of_a_request(served, fake_llm):
    fake_llm.script(*[fail(500)] * 4)
    server = served(LOG_FORMAT="json", LOG_LEVEL="INFO", OPENAI_BASE_URL=fake_llm.url, **PROVIDER)
    request_id = uuid.uuid4().hex
    assert failing_turn(server.url, request_id) == 502
    found = lines_of(server, request_id, 2)
    entries = [json.loads(line) for line in found]
    loggers = {entry["logger"] for entry in entries}
    assert {"chatsvc.agent.openai", "chatsvc.access"} <= loggers, found
    assert all(entry["request_id"] == request_id for entry in entries)
    warning = next(e for e in entries if e["logger"] == "chatsvc.agent.openai")
    assert warning["message"] == "language model answered HTTP 500"
    assert "hello" not in "".join(found)  # never the message text


def test_text_logs_are_for_people_and_carry_the_request_id(served, fake_llm):
    fake_llm.script(*[fail(500)] * 4)
    server = served(LOG_FORMAT="text", LOG_LEVEL="INFO", OPENAI_BASE_URL=fake_llm.url, **PROVIDER)
    request_id = uuid.uuid4().hex
    assert failing_turn(server.url, request_id) == 502
    found = lines_of(server, request_id, 2)
    warning = next(line for line in found if "chatsvc.agent.openai" in line)
    assert "WARNING" in warning and "language model answered HTTP 500" in warning
    assert f"request_id={request_id}" in warning
    access = next(line for line in found if "chatsvc.access" in line)
    assert "status=502" in access and "path=/api/<user_id>/chat" in access
    for line in found:
        with pytest.raises(json.JSONDecodeError):
            json.loads(line)
