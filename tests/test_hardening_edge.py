"""Issue 15, the HTTP edge (contract §1), through the Flask test client on SQLite and
PostgreSQL: anonymous chat budgets, metric labels, Retry-After, session ids in logs, strict
JSON and odd numbers, NUL bytes, whole-string user ids, redirects, security headers, the
metrics token, token lifetimes, the Swagger init script, undocumented query parameters and the
OpenAPI document of the running configuration. The socket-level findings (gunicorn's own
errors, slow bodies) are in test_hardening_socket.py."""

from __future__ import annotations

import json
import logging
import os
import uuid
from datetime import timedelta

import pytest
import redis
from fakellm import fail, say
from fakes import ScriptedAgent
from helpers import assert_problem, forged_cursor, ok

from chatsvc import auth
from chatsvc.agent.base import Reply, ToolCall
from chatsvc.config import ConfigError, load

SECRET = "h" * 40


def bearer(user: str, **options) -> dict[str, str]:
    return {"Authorization": "Bearer " + auth.create_token(user, secret=SECRET, **options)}


def address() -> str:
    """A client address of this test alone (rate-limit buckets are per address)."""
    return f"198.51.100.{uuid.uuid4().int % 250 + 1}"


def strict(text: str):
    """Parse as RFC 8259 JSON: NaN and Infinity are not JSON."""

    def refuse(name: str):
        raise ValueError(f"{name} in a response")

    return json.loads(text, parse_constant=refuse)


@pytest.fixture
def storage_uri():
    url = os.environ.get("TEST_REDIS_URL")
    yield url or "memory://"
    if url:
        client = redis.Redis.from_url(url)
        for pattern in ("LIMITS:*addr:198.51.100.*", "LIMITS:*hardening-*", "LIMITS:*session:*"):
            for found in client.scan_iter(match=pattern):
                client.delete(found)


# Finding 2: anonymous callers do not multiply their chat budget ------------------------


@pytest.mark.parametrize("mode", ["optional", "required"])
def test_anonymous_chat_is_counted_per_client_address(make_app, storage_uri, mode):
    client = make_app(
        {
            "RATELIMIT_ENABLED": True, "RATELIMIT_STORAGE_URI": storage_uri,
            "RATELIMIT_CHAT": "3 per minute", "AUTH_MODE": mode, "JWT_SECRET": SECRET,
            "ALLOW_ANONYMOUS_SESSIONS": True,
        }
    ).test_client()  # fmt: skip
    mine, other = {"REMOTE_ADDR": address()}, {"REMOTE_ADDR": address()}

    def post(path: str, environ: dict[str, str]) -> int:
        return client.post(path, json={"message": "hi"}, environ_base=environ).status_code

    session = client.post("/api/chat", json={"message": "hi"}, environ_base=mine).json
    # A new session, a made-up session id, a real session id: one budget, the address's.
    statuses = [
        post("/api/chat", mine),
        post(f"/api/chat/{uuid.uuid4()}", mine),
        post("/api/chat", mine),
        post(f"/api/chat/{uuid.uuid4()}", mine),
        post(f"/api/chat/{session['session_id']}", mine),
    ]
    assert statuses == [200, 404, 429, 429, 429]
    assert post("/api/chat", other) == 200  # another address has its own budget
    refused = client.post("/api/chat", json={"message": "x"}, environ_base=mine)
    assert_problem(refused, 429, "rate_limited")
    # A token keeps its own budget behind that busy address.
    user = f"hardening-{uuid.uuid4().hex[:8]}"
    signed = client.post(
        "/api/chat", json={"message": "c"}, headers=bearer(user), environ_base=mine
    )
    assert signed.status_code == 200


# Finding 3: every metric label from a fixed set -----------------------------------------


def test_metric_labels_come_from_fixed_sets(make_app):
    model, tool = f"model-{uuid.uuid4().hex}", f"tool_{uuid.uuid4().hex}"
    reply = Reply("ok", model, tool_calls=[ToolCall(tool, {}, {"error": "unknown_tool"})])
    agent = ScriptedAgent(steps=[reply])
    client = make_app(agent=agent).test_client()
    methods = [f"X{uuid.uuid4().hex[:10].upper()}" for _ in range(5)]
    for method in methods:
        assert client.open("/api/alice/tasks", method=method).status_code == 405
        assert client.open(f"/nowhere/{method}", method=method).status_code == 404
    ok(client.post("/api/alice/chat", json={"message": "hi"}))
    text = client.get("/metrics").get_data(as_text=True)
    for unbounded in (*methods, model, tool, "/nowhere"):
        assert unbounded not in text
    assert 'chatsvc_http_requests_total{method="other",route="<unmatched>",status="405"}' in text
    assert 'chatsvc_http_requests_total{method="other",route="<unmatched>",status="404"}' in text
    assert 'chatsvc_agent_duration_seconds_count{model="other",status="completed"}' in text
    assert 'chatsvc_tool_calls_total{tool="other"}' in text
    # Known methods, the local agent's model and offered tools keep their names.
    local = make_app().test_client()
    ok(local.post("/api/alice/chat", json={"message": "add a task to buy bread"}))
    local.delete("/api/alice/tasks/999")
    text = local.get("/metrics").get_data(as_text=True)
    assert 'method="DELETE",route="/api/<user_id>/tasks/<int:task_id>",status="404"' in text
    assert 'chatsvc_agent_duration_seconds_count{model="local",status="completed"}' in text
    assert 'chatsvc_tool_calls_total{tool="add_task"}' in text


# Finding 9: a provider's Retry-After is passed on, the limiter's is not added -----------


@pytest.mark.parametrize(
    ("given", "expected"),
    [("7", "7"), ("120", "120"), (None, None), ("inf", None), ("nan", None),
     ("1e30", "86400"), ("9" * 5000, None), ("Wed, 21 Oct 2026 07:28:00 GMT", None)],
)  # fmt: skip
def test_a_provider_retry_after_reaches_the_client_as_given(
    llm_app, fake_llm, storage_uri, given, expected
):
    client = llm_app(
        RATELIMIT_ENABLED=True, RATELIMIT_STORAGE_URI=storage_uri,
        RATELIMIT_CHAT="2 per hour", AGENT_TIMEOUT_SECONDS=1.0,
    ).test_client()  # fmt: skip
    fake_llm.script(fail(429, retry_after=given))
    user = f"hardening-{uuid.uuid4().hex[:8]}"
    response = client.post(f"/api/{user}/chat", json={"message": "hi"})
    assert_problem(response, 503, "upstream_busy")
    assert response.headers.get("Retry-After") == expected
    assert response.headers["X-RateLimit-Limit"] == "2"  # the limiter did run
    # Its own Retry-After only on its own 429: none on a success, its window on a refusal.
    fake_llm.script(say("fine"))
    answered = client.post(f"/api/{user}/chat", json={"message": "hi"})
    assert answered.status_code == 200 and "Retry-After" not in answered.headers
    refused = client.post(f"/api/{user}/chat", json={"message": "hi"})
    assert_problem(refused, 429, "rate_limited")
    assert 3000 < int(refused.headers["Retry-After"]) <= 3600


# Finding 10: no session id in any log line ----------------------------------------------


def test_no_session_id_reaches_a_log_line(make_app, storage_uri, caplog):
    client = make_app(
        {"RATELIMIT_ENABLED": True, "RATELIMIT_STORAGE_URI": storage_uri,
         "RATELIMIT_DEFAULT": "1 per minute", "RATELIMIT_CHAT": "1 per minute",
         "LOG_LEVEL": "INFO"}
    ).test_client()  # fmt: skip
    loggers = [logging.getLogger(name) for name in ("flask-limiter", "chatsvc", "chatsvc.access")]
    for logger in loggers:
        logger.addHandler(caplog.handler)
    caplog.set_level(logging.DEBUG)
    try:
        environ = {"REMOTE_ADDR": address()}
        session = ok(client.post("/api/chat", json={"message": "hi"}, environ_base=environ))
        sid = session["session_id"]
        assert client.get(f"/api/session/{sid}").status_code == 200
        assert client.get(f"/api/session/{sid}").status_code == 429  # the limiter's INFO line
        made_up = str(uuid.uuid4())
        client.get(f"/api/session/{made_up}")
        client.get(f"/api/session/{made_up}")
        client.post(f"/api/chat/{sid}", json={"message": "again"}, environ_base=environ)
    finally:
        for logger in loggers:
            logger.removeHandler(caplog.handler)
    written = "\n".join(record.getMessage() for record in caplog.records)
    assert "exceeded" in written  # the breach was logged...
    assert sid not in written and made_up not in written  # ...without the capability


# Findings 6 and 7: strict JSON, odd numbers, deep nesting, NUL bytes ---------------------

NON_FINITE = ["NaN", "Infinity", "-Infinity", "1e400", "-1e999", "1.5e309"]
HUGE = ["9" * 5000, "-" + "9" * 5000, str(2**64), "1" + "0" * 4299]


def nested(depth: int, opener: str = "[", closer: str = "]") -> str:
    return opener * depth + "1" * (opener == "[") + closer * depth


DEEP = [
    f'{{"n": {nested(950)}}}',
    f'{{"n": {nested(33)}}}',
    '{"a":' * 950 + "1" + "}" * 950,
    '{"a":' * 40 + "1" + "}" * 40,
]


def document(metadata: str, title: str = "odd") -> str:
    return f'{{"title": "{title}", "text": "some text {uuid.uuid4()}", "metadata": {metadata}}}'


@pytest.mark.parametrize("number", NON_FINITE + HUGE)
def test_numbers_that_are_not_finite_or_do_not_fit_are_400_everywhere(client, number, caplog):
    bodies = {
        "/api/documents": document(f'{{"n": {number}}}'),
        "/api/alice/tasks": f'{{"title": "t", "description": "d", "x": {number}}}',
        "/api/alice/chat": f'{{"message": "hi", "conversation_id": {number}}}',
        "/api/chat": f'{{"message": {number}}}',
    }
    for path, body in bodies.items():
        with caplog.at_level(logging.ERROR, logger="chatsvc"):
            response = client.post(path, data=body, content_type="application/json")
        problem = assert_problem(response, 400, "bad_request")
        assert "JSON" in problem["detail"]
    assert not caplog.records  # no traceback either
    listed = client.get("/api/documents")
    assert strict(listed.get_data(as_text=True))["items"] == []  # nothing was stored


@pytest.mark.parametrize("body", DEEP, ids=["array-950", "array-33", "object-950", "object-40"])
def test_deep_nesting_is_400_and_stores_nothing(client, body):
    response = client.post("/api/documents", data=document(body), content_type="application/json")
    assert_problem(response, 400, "bad_request")
    assert ok(client.get("/api/documents"))["items"] == []


def test_numbers_in_range_and_moderate_nesting_still_work(client):
    metadata = json.dumps(
        {"n": 2**63 - 1, "m": -(2**63) + 1, "f": 1.7976931348623157e308, "tiny": 5e-324,
         "deep": json.loads(nested(30))}
    )  # fmt: skip
    created = client.post(
        "/api/documents", data=document(metadata), content_type="application/json"
    )
    assert created.status_code == 201, created.get_data(as_text=True)
    listed = strict(client.get("/api/documents").get_data(as_text=True))
    assert listed["items"][0]["metadata"] == json.loads(metadata)
    # One step further is refused.
    for number in (str(2**63), "1.8e308"):
        refused = client.post(
            "/api/documents", data=document(f'{{"n": {number}}}'), content_type="application/json"
        )
        assert_problem(refused, 400, "bad_request")


@pytest.mark.parametrize(
    "path",
    [
        "/api/documents/%00", "/api/documents/abc%00def", "/api/alice/conversations/%00x",
        "/api/session/%00", "/api/session/a%00b/reset", "/api/documents/%01%02",
        "/api/alice/conversations/x%7F",
    ],
)  # fmt: skip
def test_nul_and_control_bytes_in_path_ids_are_unknown(client, path, caplog):
    method = client.post if path.endswith("reset") else client.get
    with caplog.at_level(logging.ERROR, logger="chatsvc"):
        assert_problem(method(path), 404, "not_found")
    assert not caplog.records  # no traceback in the log


FORGED = [
    forged_cursor(1, "a\x00b"), forged_cursor(1_700_000_000_000_000, "\x00"),
    forged_cursor("\x00"), forged_cursor(1, "x\x1b[2J"),
]  # fmt: skip


def test_nul_bytes_in_forged_cursors_are_422(client, caplog):
    with caplog.at_level(logging.ERROR, logger="chatsvc"):
        for path in ("/api/documents", "/api/alice/conversations", "/api/alice/tasks"):
            for cursor in FORGED:
                response = client.get(path, query_string={"cursor": cursor})
                assert_problem(response, 422, "validation_error")
    assert not caplog.records


# Finding 13: user ids are matched whole ---------------------------------------------------

LOOKALIKES = ["alice%0A", "alice%0D", "alice%0A%0A", "alice%00", "alice%09", "%0Aalice"]


def test_a_user_id_with_a_trailing_newline_is_not_a_user(client):
    ok(client.post("/api/alice/tasks", json={"title": "alice's"}), 201)
    for user in LOOKALIKES:
        for response in (
            client.get(f"/api/{user}/tasks"),
            client.post(f"/api/{user}/tasks", json={"title": "sneaky"}),
            client.post(f"/api/{user}/chat", json={"message": "hi"}),
        ):
            assert_problem(response, 404, "not_found")
    assert [t["title"] for t in ok(client.get("/api/alice/tasks"))["items"]] == ["alice's"]


def test_a_token_subject_with_a_trailing_newline_is_refused(make_app):
    client = make_app({"AUTH_MODE": "required", "JWT_SECRET": SECRET}).test_client()
    for sub in ["alice\n", "alice\r\n", "alice\x00", "ali ce", "alice:admin"]:
        token = auth.create_token(sub, secret=SECRET)
        response = client.get("/api/alice/tasks", headers={"Authorization": f"Bearer {token}"})
        assert_problem(response, 401, "unauthorized")
    assert client.get("/api/alice/tasks", headers=bearer("alice")).status_code == 200


def test_a_request_id_with_a_trailing_newline_is_not_echoed(client):
    response = client.get("/health/live", environ_overrides={"HTTP_X_REQUEST_ID": "abc\n"})
    assert response.headers["X-Request-ID"] not in ("abc", "abc\n")
    assert len(response.headers["X-Request-ID"]) == 32


# Finding 14: the Swagger init script is serialised, not formatted --------------------------


@pytest.mark.parametrize(
    "script_name",
    [
        '/x";alert(1);//',
        "/x</script><script>alert(1)</script>",
        "/x'\\\";alert(2)//",
        '/y"</script><b>',
    ],
)
def test_script_name_cannot_inject_into_the_docs(client, script_name):
    overrides = {"SCRIPT_NAME": script_name}
    script = client.get("/docs/init.js", environ_overrides=overrides).get_data(as_text=True)
    prefix = "window.ui = SwaggerUIBundle({url: "
    assert script.startswith(prefix)
    literal = script[len(prefix) : script.index(", dom_id:")]
    # One JavaScript string (JSON is its subset), holding the whole prefix: nothing runs.
    assert json.loads(literal) == script_name.rstrip("/") + "/openapi.json"
    assert "<" not in literal and ">" not in literal
    page = client.get("/docs", environ_overrides=overrides).get_data(as_text=True)
    assert "<script>alert" not in page and '";alert' not in page
    assert page.count("<script") == 2


# Finding 15: secrets, lifetimes, redirects, headers, /metrics ------------------------------


@pytest.mark.parametrize("profile", ["development", "testing"])
@pytest.mark.parametrize("secret", ["", "short", "x" * 31])
def test_auth_required_refuses_a_weak_secret_in_every_profile(profile, secret):
    settings = {"CHATSVC_ENV": profile, "AUTH_MODE": "required", "JWT_SECRET": secret}
    with pytest.raises(ConfigError, match="JWT_SECRET"):
        load(settings)
    assert load({**settings, "JWT_SECRET": "x" * 32})["AUTH_MODE"] == "required"
    assert load({**settings, "AUTH_MODE": "optional"})["AUTH_MODE"] == "optional"


def test_tokens_living_longer_than_the_maximum_are_refused(make_app):
    client = make_app(
        {"AUTH_MODE": "required", "JWT_SECRET": SECRET, "JWT_MAX_LIFETIME_SECONDS": 3600}
    ).test_client()
    lifetimes = [
        (timedelta(minutes=30), 200), (timedelta(hours=1), 200),
        (timedelta(hours=1, seconds=1), 401), (timedelta(days=365), 401),
    ]  # fmt: skip
    for ttl, status in lifetimes:
        response = client.get("/api/alice/tasks", headers=bearer("alice", ttl=ttl))
        assert response.status_code == status, (ttl, response.get_data(as_text=True))
    import jwt

    no_iat = jwt.encode({"sub": "alice", "exp": 2_000_000_000}, SECRET, algorithm="HS256")
    response = client.get("/api/alice/tasks", headers={"Authorization": f"Bearer {no_iat}"})
    assert_problem(response, 401, "unauthorized")
    unlimited = make_app({"AUTH_MODE": "required", "JWT_SECRET": SECRET}).test_client()
    assert unlimited.get("/api/alice/tasks", headers=bearer("alice", ttl=timedelta(days=365)))


@pytest.mark.parametrize(
    "path",
    ["/api//alice/tasks", "//api/alice/tasks", "/api/alice//tasks", "/api//documents",
     "/api/alice/tasks/", "/docs/"],
)  # fmt: skip
def test_no_host_header_is_reflected_in_a_redirect(client, path):
    response = client.get(path, headers={"Host": "evil.example"})
    assert "evil.example" not in response.headers.get("Location", "")
    assert "evil.example" not in response.get_data(as_text=True)
    assert response.status_code == 404 or response.headers["Location"].startswith("/")


@pytest.mark.parametrize(
    ("method", "path"),
    [("GET", "/api/alice/tasks"), ("GET", "/api/alice/tasks/7"), ("PUT", "/api/alice/tasks"),
     ("GET", "/docs"), ("GET", "/metrics"), ("GET", "/health/live"), ("GET", "/nowhere"),
     ("POST", "/api/alice/chat")],
)  # fmt: skip
def test_every_response_has_referrer_policy_and_hsts_when_set(make_app, method, path):
    plain, hsts = make_app().test_client(), make_app({"HSTS_SECONDS": 31536000}).test_client()
    response = plain.open(path, method=method, json={"message": "hi"})
    assert response.headers["Referrer-Policy"] == "no-referrer"
    assert response.headers["X-Content-Type-Options"] == "nosniff"
    assert "Strict-Transport-Security" not in response.headers
    strict_response = hsts.open(path, method=method, json={"message": "hi"})
    assert strict_response.headers["Strict-Transport-Security"] == "max-age=31536000"
    assert strict_response.headers["Referrer-Policy"] == "no-referrer"


def test_metrics_token_restricts_the_scrape(make_app):
    token = "m" * 24
    client = make_app({"METRICS_TOKEN": token}).test_client()
    refused = [
        {}, {"Authorization": "Bearer wrong"}, {"Authorization": token},
        {"Authorization": f"Basic {token}"}, {"Authorization": f"Bearer {token}x"},
    ]  # fmt: skip
    for headers in refused:
        assert_problem(client.get("/metrics", headers=headers), 401, "unauthorized")
    scraped = client.get("/metrics", headers={"Authorization": f"Bearer {token}"})
    assert scraped.status_code == 200 and b"chatsvc_http_requests_total" in scraped.data
    assert make_app().test_client().get("/metrics").status_code == 200  # unset: open


# Also found: undocumented query parameters, and the document of the running config ---------


@pytest.mark.parametrize(
    ("path", "unknown"),
    [("/api/alice/tasks", {"completed": "true"}), ("/api/alice/tasks", {"Status": "pending"}),
     ("/api/alice/conversations", {"user": "bob"}), ("/api/documents", {"q": "x", "page": "2"}),
     ("/api/alice/tasks/1", {"expand": "1"}), ("/health/live", {"verbose": "1"}),
     ("/api/session/abc", {"limit ": "1"})],
)  # fmt: skip
def test_undocumented_query_parameters_are_422_naming_them(client, path, unknown):
    response = client.get(path, query_string=unknown)
    problem = assert_problem(response, 422, "validation_error")
    assert set(problem["errors"]["query"]) == set(unknown)
    for name in unknown:
        assert name in problem["detail"]
    # The documented ones still filter and page.
    ok(client.post("/api/alice/tasks", json={"title": "one"}), 201)
    ok(client.post("/api/alice/tasks", json={"title": "two"}), 201)
    page = ok(client.get("/api/alice/tasks", query_string={"status": "pending", "limit": 1}))
    assert [task["title"] for task in page["items"]] == ["one"]
    rest = ok(client.get("/api/alice/tasks", query_string={"cursor": page["next_cursor"]}))
    assert [task["title"] for task in rest["items"]] == ["two"]
    ok(client.get("/api/documents", query_string={"limit": 3}))
    assert client.get("/demo", query_string={"api": "http://127.0.0.1:8000"}).status_code == 200
    # Every operation documents the 422 it answers an undocumented parameter with.
    spec = client.get("/openapi.json").json
    for path_template, operations in spec["paths"].items():
        for method, operation in operations.items():
            if method != "parameters":
                assert "422" in operation["responses"], (method, path_template)


def test_openapi_states_the_running_message_limit(make_app):
    client = make_app({"MAX_MESSAGE_CHARS": 50}).test_client()
    schemas = client.get("/openapi.json").json["components"]["schemas"]
    for name in ("UserChat", "SessionChat"):
        assert schemas[name]["properties"]["message"]["maxLength"] == 50
    assert client.post("/api/alice/chat", json={"message": "x" * 50}).status_code == 200
    assert_problem(client.post("/api/alice/chat", json={"message": "x" * 51}), 422,
                   "validation_error")  # fmt: skip
    default = make_app().test_client().get("/openapi.json").json["components"]["schemas"]
    assert default["UserChat"]["properties"]["message"]["maxLength"] == 4000
