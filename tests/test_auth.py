"""Bearer JWTs (contract §1 Auth): verification, modes, ownership and isolation."""

from __future__ import annotations

from datetime import timedelta

import jwt
import pytest
from flask import Blueprint

from chatsvc import auth

SECRET = "s" * 40
OTHER_SECRET = "o" * 40


def token(user: str, *, secret: str = SECRET, admin: bool = False, **claims) -> str:
    if claims:
        payload = {"sub": user, "exp": 4102444800, **claims}
        return jwt.encode(payload, secret, algorithm="HS256")
    return auth.create_token(user, secret=secret, admin=admin)


def bearer(value: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {value}"}


@pytest.fixture
def required(make_app):
    return make_app({"AUTH_MODE": "required", "JWT_SECRET": SECRET}).test_client()


@pytest.fixture
def optional(make_app):
    return make_app({"AUTH_MODE": "optional", "JWT_SECRET": SECRET}).test_client()


def unsigned(user: str) -> str:
    return jwt.encode({"sub": user, "exp": 4102444800}, None, algorithm="none")


@pytest.mark.parametrize(
    "header",
    [
        "Bearer " + unsigned("alice"),  # alg: none
        "Bearer " + token("alice", secret=OTHER_SECRET),  # forged signature
        "Bearer " + token("alice", exp=1_000_000),  # expired
        "Bearer " + jwt.encode({"sub": "alice"}, SECRET, algorithm="HS256"),  # no exp
        "Bearer " + token("alice", sub=42),  # subject not a string
        "Bearer " + jwt.encode({"sub": "a", "exp": 4102444800}, "h" * 64, algorithm="HS512"),
        "Bearer not.a.jwt",
        "Bearer ",
        "Bearer",
        "Basic YWxpY2U6c2VjcmV0",
        "garbage",
        "",
    ],
)
def test_bad_tokens_and_headers_are_401_never_500(required, optional, header):
    for client in (required, optional):
        response = client.get("/api/alice/tasks", headers={"Authorization": header})
        assert response.status_code == 401
        assert response.mimetype == "application/problem+json"
        assert response.json["code"] == "unauthorized"


def test_required_mode_needs_a_token_and_its_subject_must_be_the_path_user(required):
    assert required.get("/api/alice/tasks").status_code == 401
    assert required.get("/api/alice/tasks", headers=bearer(token("alice"))).status_code == 200
    refused = required.get("/api/alice/tasks", headers=bearer(token("bob")))
    assert refused.status_code == 403
    assert refused.json["code"] == "forbidden"
    chat = required.post("/api/alice/chat", json={"message": "hi"}, headers=bearer(token("bob")))
    assert chat.status_code == 403


def test_optional_mode_trusts_the_path_without_a_token_and_checks_one_when_sent(optional):
    assert optional.get("/api/alice/tasks").status_code == 200
    assert optional.get("/api/alice/tasks", headers=bearer(token("alice"))).status_code == 200
    assert optional.get("/api/alice/tasks", headers=bearer(token("bob"))).status_code == 403
    expired = bearer(token("alice", exp=1_000_000))
    assert optional.get("/api/alice/tasks", headers=expired).status_code == 401


def test_issuer_and_audience_are_checked_when_configured(make_app):
    client = make_app(
        {"AUTH_MODE": "required", "JWT_SECRET": SECRET, "JWT_ISSUER": "idp", "JWT_AUDIENCE": "chat"}
    ).test_client()
    good = token("alice", iss="idp", aud="chat")
    assert client.get("/api/alice/tasks", headers=bearer(good)).status_code == 200
    for bad in (token("alice", iss="evil", aud="chat"), token("alice", iss="idp", aud="x")):
        assert client.get("/api/alice/tasks", headers=bearer(bad)).status_code == 401
    assert client.get("/api/alice/tasks", headers=bearer(token("alice"))).status_code == 401


def test_other_users_conversations_are_not_found(required):
    alice = bearer(token("alice"))
    started = required.post("/api/alice/chat", json={"message": "hello"}, headers=alice)
    conversation = started.json["conversation_id"]
    bob = bearer(token("bob"))
    assert required.get(f"/api/bob/conversations/{conversation}", headers=bob).status_code == 404
    again = required.post(
        "/api/bob/chat", json={"message": "hi", "conversation_id": conversation}, headers=bob
    )
    assert again.status_code == 404
    assert required.delete(f"/api/bob/conversations/{conversation}", headers=bob).status_code == 404
    mine = required.get(f"/api/alice/conversations/{conversation}", headers=alice)
    assert mine.status_code == 200


def test_other_users_tasks_are_not_found(required):
    alice, bob = bearer(token("alice")), bearer(token("bob"))
    created = required.post("/api/alice/tasks", json={"title": "secret plan"}, headers=alice)
    task_id = created.json["task_id"]
    assert required.get(f"/api/bob/tasks/{task_id}", headers=bob).status_code == 404
    assert required.get("/api/bob/tasks", headers=bob).json["items"] == []


def test_a_session_started_with_a_token_is_owned(make_app):
    client = make_app(
        {"AUTH_MODE": "required", "JWT_SECRET": SECRET, "ALLOW_ANONYMOUS_SESSIONS": True}
    ).test_client()
    alice, bob = bearer(token("alice")), bearer(token("bob"))
    session_id = client.post("/api/chat", json={"message": "hello"}, headers=alice).json[
        "session_id"
    ]
    listed = client.get("/api/alice/conversations", headers=alice).json["items"]
    assert [(c["id"], c["kind"]) for c in listed] == [(session_id, "session")]
    assert client.get(f"/api/session/{session_id}", headers=alice).status_code == 200
    assert client.get(f"/api/session/{session_id}", headers=bob).status_code == 404
    assert client.get(f"/api/session/{session_id}").status_code == 404
    assert client.post(f"/api/chat/{session_id}", json={"message": "x"}).status_code == 404


def test_anonymous_sessions_follow_allow_anonymous_sessions(make_app):
    closed = make_app(
        {"AUTH_MODE": "required", "JWT_SECRET": SECRET, "ALLOW_ANONYMOUS_SESSIONS": False}
    ).test_client()
    refused = closed.post("/api/chat", json={"message": "hello"})
    assert refused.status_code == 401
    opened = make_app(
        {"AUTH_MODE": "required", "JWT_SECRET": SECRET, "ALLOW_ANONYMOUS_SESSIONS": True}
    ).test_client()
    started = opened.post("/api/chat", json={"message": "hello"})
    assert started.status_code == 200
    session_id = started.json["session_id"]
    assert opened.get(f"/api/session/{session_id}").status_code == 200
    # An anonymous session is reachable by its id alone, never as a user's conversation.
    listed = opened.get("/api/alice/conversations", headers=bearer(token("alice")))
    assert listed.json["items"] == []


def test_a_user_conversation_is_not_a_session(optional):
    conversation = optional.post("/api/alice/chat", json={"message": "hello"}).json[
        "conversation_id"
    ]
    assert optional.get(f"/api/session/{conversation}").status_code == 404


@pytest.fixture
def kb_client(make_app):
    """A tiny test-only route per helper: what the knowledge-base routes call."""

    def build(mode: str):
        app = make_app({"AUTH_MODE": mode, "JWT_SECRET": SECRET})
        probe = Blueprint("probe", __name__)

        @probe.get("/probe/read")
        def read():
            auth.require_reader()
            return {"ok": True}

        @probe.post("/probe/write")
        def write():
            auth.require_admin()
            return {"ok": True}

        app.register_blueprint(probe)
        return app.test_client()

    return build


def test_knowledge_base_readers_need_a_token_and_writers_an_admin(kb_client):
    client = kb_client("required")
    assert client.get("/probe/read").status_code == 401
    assert client.get("/probe/read", headers=bearer(token("alice"))).status_code == 200
    assert client.post("/probe/write").status_code == 401
    denied = client.post("/probe/write", headers=bearer(token("alice")))
    assert denied.status_code == 403
    assert denied.json["code"] == "forbidden"
    assert client.post("/probe/write", headers=bearer(token("root", admin=True))).status_code == 200
    development = kb_client("optional")
    assert development.get("/probe/read").status_code == 200
    assert development.post("/probe/write", headers=bearer(token("alice"))).status_code == 403


def test_token_create_mints_a_token_the_service_accepts(make_app):
    app = make_app({"AUTH_MODE": "required", "JWT_SECRET": SECRET})
    result = app.test_cli_runner().invoke(args=["token", "create", "alice", "--admin"])
    assert result.exit_code == 0
    minted = result.output.strip()
    assert jwt.decode(minted, SECRET, algorithms=["HS256"])["role"] == "admin"
    client = app.test_client()
    assert client.get("/api/alice/tasks", headers=bearer(minted)).status_code == 200
    assert client.get("/api/bob/tasks", headers=bearer(minted)).status_code == 403


def test_token_create_refuses_without_a_secret_or_with_a_bad_user(make_app):
    runner = make_app({"JWT_SECRET": ""}).test_cli_runner()
    assert runner.invoke(args=["token", "create", "alice"]).exit_code != 0
    runner = make_app({"JWT_SECRET": SECRET}).test_cli_runner()
    assert runner.invoke(args=["token", "create", "no spaces"]).exit_code != 0


def test_an_expired_token_from_token_create_is_refused(make_app):
    client = make_app({"AUTH_MODE": "required", "JWT_SECRET": SECRET}).test_client()
    old = auth.create_token("alice", secret=SECRET, ttl=timedelta(seconds=-5))
    assert client.get("/api/alice/tasks", headers=bearer(old)).status_code == 401
