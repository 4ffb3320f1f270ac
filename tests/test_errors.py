"""Cross-cutting rules: problem bodies, limits, validation, request ids, headers (contract §1)."""

from __future__ import annotations

import uuid

from flask import abort
from helpers import assert_problem, chat, history, ok
from sqlalchemy import text

from chatsvc import db

CHAT_ROUTES = ["/api/alice/chat", "/api/chat"]


BODY_ROUTES = [*CHAT_ROUTES, "/api/alice/tasks"]
NOT_JSON = [
    ("message=hi", "application/x-www-form-urlencoded"),
    ("hi", "text/plain"),
    ('{"message": "hi"}', ""),
]


MALFORMED_JSON = [
    '{"message": "hi"',
    '{"message": "\xff"}'.encode("latin-1"),
    "[" * 5000 + "]" * 5000,
]


def test_malformed_json_is_400(client, subtests):
    for path in BODY_ROUTES:
        for data in MALFORMED_JSON:
            with subtests.test(path=path, data=data[:20]):
                response = client.post(path, data=data, content_type="application/json")
                assert_problem(response, 400, "bad_request")


def test_a_body_that_is_not_json_is_415(client, subtests):
    for path in BODY_ROUTES:
        for data, content_type in NOT_JSON:
            with subtests.test(path=path, content_type=content_type):
                response = client.post(path, data=data, content_type=content_type)
                assert_problem(response, 415, "unsupported_media_type")
    assert ok(client.get("/api/alice/tasks"))["items"] == []


def test_missing_body_is_422_not_500(client):
    body = assert_problem(client.post("/api/alice/chat"), 422, "validation_error")
    assert "message" in body["errors"]["json"]


def test_unknown_routes_are_404_problems(client, subtests):
    for path in ["/nope", "/api", "/api/alice", "/api/alice/nothing", "/api/alice/tasks/1/x"]:
        with subtests.test(path):
            assert_problem(client.get(path), 404, "not_found")
            response = client.post(path, data="hi", content_type="text/plain")
            assert_problem(response, 404, "not_found")


def test_malformed_user_ids_are_404(client, subtests):
    for path in ["/api/bad%20user/conversations", f"/api/{'u' * 129}/tasks", "/api/a$b/chat"]:
        with subtests.test(path):
            method = client.post if path.endswith("chat") else client.get
            assert_problem(method(path, json={"message": "hi"}), 404, "not_found")


WRONG_METHODS = [
    ("put", "/api/alice/chat", {"POST", "OPTIONS"}),
    ("get", "/api/alice/chat", {"POST", "OPTIONS"}),
    ("delete", "/api/alice/tasks", {"GET", "HEAD", "POST", "OPTIONS"}),
    ("post", "/health", {"GET", "HEAD", "OPTIONS"}),
]


def test_wrong_method_is_405_with_allow(client, subtests):
    for method, path, allowed in WRONG_METHODS:
        with subtests.test(method=method, path=path):
            response = getattr(client, method)(path, data="hi", content_type="text/plain")
            assert_problem(response, 405, "method_not_allowed")
            assert {m.strip() for m in response.headers["Allow"].split(",")} == allowed


def test_body_over_max_content_length_is_413(make_app):
    client = make_app({"MAX_CONTENT_LENGTH": 1024}).test_client()
    response = client.post("/api/alice/chat", json={"message": "x" * 2000})
    assert_problem(response, 413, "payload_too_large")
    assert ok(client.get("/api/alice/conversations"))["items"] == []


INVALID_MESSAGES = [
    "", "   ", "\n\t ", "x" * 4001, "nul\x00byte", "bell\x07", "esc\x1b[31m", "vt\x0b",
    "\x1fsep", "lone \ud800 surrogate", "\udfff", None, 42, ["hi"], {"text": "hi"},
]  # fmt: skip


def test_invalid_messages_are_422(client, subtests):
    for path in CHAT_ROUTES:
        for message in INVALID_MESSAGES:
            with subtests.test(path=path, message=repr(message)[:20]):
                response = client.post(path, json={"message": message})
                body = assert_problem(response, 422, "validation_error")
                assert "message" in body["errors"]["json"]
                assert body["detail"].startswith("message:")
    assert ok(client.get("/api/alice/conversations"))["items"] == []


def test_longest_message_counts_after_trimming(make_app):
    client = make_app({"MAX_MESSAGE_CHARS": 10}).test_client()
    ok(chat(client, "alice", "   0123456789   "))
    assert_problem(chat(client, "alice", "0123456789a"), 422, "validation_error")


def test_tab_cr_and_lf_are_allowed_and_stored_as_sent(client):
    text = "line one\r\n\tline two\rthree\n\n\tfour"
    body = ok(chat(client, "alice", text))
    stored = history(client, "alice", body["conversation_id"])
    assert [m["content"] for m in stored if m["role"] == "user"] == [text]


UNKNOWN_FIELDS = [
    ("/api/alice/chat", {"message": "hi", "user_id": "bob"}, "user_id"),
    ("/api/chat", {"message": "hi", "conversation_id": "x"}, "conversation_id"),
    ("/api/alice/tasks", {"title": "t", "task_id": 3}, "task_id"),
]


def test_unknown_fields_are_422(client, subtests):
    for path, body, field in UNKNOWN_FIELDS:
        with subtests.test(path):
            problem = assert_problem(client.post(path, json=body), 422, "validation_error")
            assert field in problem["errors"]["json"]


def test_unexpected_errors_are_500_without_internals(make_app):
    app = make_app()

    @app.get("/_test/boom")
    def boom():
        raise RuntimeError("secret=hunter2 in /srv/chatsvc/boom.py")

    @app.get("/_test/sql")
    def bad_sql():
        insert = text("INSERT INTO task_counters (user_id, last_task_id) VALUES ('x', 1)")
        db.session().execute(insert)
        db.session().execute(insert)  # IntegrityError: the error text quotes the SQL

    @app.get("/_test/abort")
    def aborted():
        abort(500)

    client = app.test_client()
    for path in ("/_test/boom", "/_test/sql", "/_test/abort"):
        response = client.get(path)
        body = assert_problem(response, 500, "internal_error")
        raw = response.get_data(as_text=True)
        for leak in ("Traceback", "hunter2", "INSERT", "task_counters", ".py", "sqlalchemy"):
            assert leak not in raw
        assert set(body) == {"type", "title", "status", "code", "detail", "request_id"}


def test_well_formed_request_id_is_echoed(client):
    response = client.get("/api/alice/tasks/9", headers={"X-Request-ID": "abc.DEF_123-xyz"})
    assert response.headers["X-Request-ID"] == "abc.DEF_123-xyz"
    assert response.get_json()["request_id"] == "abc.DEF_123-xyz"


def test_other_request_ids_are_replaced_with_fresh_ones(client, subtests):
    for incoming in [None, "", "has space", "x" * 129, "semi;colon", "é"]:
        with subtests.test(repr(incoming)[:20]):
            headers = {"X-Request-ID": incoming} if incoming is not None else {}
            first = client.get("/health/live", headers=headers).headers["X-Request-ID"]
            second = client.get("/health/live", headers=headers).headers["X-Request-ID"]
            assert first != incoming and first != second
            assert 1 <= len(first) <= 128


def test_every_response_says_nosniff(client, subtests):
    for method, path in [
        ("get", "/"),
        ("get", "/health"),
        ("get", "/nope"),
        ("post", "/api/a/chat"),
    ]:
        with subtests.test(path):
            body = {"message": "hi"} if method == "post" else None
            response = getattr(client, method)(path, json=body)
            assert response.headers["X-Content-Type-Options"] == "nosniff"
            assert response.headers["X-Request-ID"]


def test_ids_are_opaque(client):
    body = ok(chat(client, "alice", "hi"))
    for value in (body["conversation_id"], body["message_id"]):
        assert uuid.UUID(value).version == 4
