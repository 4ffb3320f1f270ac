"""The edge over HTTP: CORS, request ids, access log, metrics, Server-Timing, security headers,
body limits and the API documentation."""

from __future__ import annotations

import json
import logging

import pytest

from chatsvc import auth
from chatsvc.observability import JsonFormatter

SECRET = "e" * 40
FRONTEND = "http://localhost:5173"


class Lines(logging.Handler):
    """Keeps each formatted line, as the service writes it to stderr."""

    def __init__(self) -> None:
        super().__init__()
        self.setFormatter(JsonFormatter())
        self.lines: list[dict] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(json.loads(self.format(record)))


@pytest.fixture
def access_lines():
    """The JSON access-log lines written during the test."""
    logger = logging.getLogger("chatsvc.access")
    captured, previous = Lines(), logger.level
    logger.addHandler(captured)
    logger.setLevel(logging.INFO)
    yield lambda: captured.lines
    logger.removeHandler(captured)
    logger.setLevel(previous)


def test_cors_allows_the_configured_frontends_with_credentials(client):
    preflight = client.options(
        "/api/alice/chat",
        headers={
            "Origin": FRONTEND,
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "authorization, content-type, idempotency-key",
        },
    )
    assert preflight.status_code == 200
    assert preflight.headers["Access-Control-Allow-Origin"] == FRONTEND
    assert preflight.headers["Access-Control-Allow-Credentials"] == "true"
    assert "POST" in preflight.headers["Access-Control-Allow-Methods"]
    assert "idempotency-key" in preflight.headers["Access-Control-Allow-Headers"].lower()
    response = client.get("/api/alice/tasks", headers={"Origin": FRONTEND})
    exposed = {
        h.strip().lower() for h in response.headers["Access-Control-Expose-Headers"].split(",")
    }
    assert {
        "x-request-id",
        "x-ratelimit-limit",
        "x-ratelimit-remaining",
        "x-ratelimit-reset",
        "etag",
        "x-quota-remaining",
    } <= exposed


@pytest.mark.parametrize(
    "path",
    [
        "/api/alice/tasks", "/api/alice/tasks/1", "/api/alice/conversations", "/api/chat",
        "/api/chat/x", "/api/session/x", "/api/session/x/reset", "/api/alice/conversations/x",
    ],
)  # fmt: skip
def test_every_api_route_answers_a_preflight(client, path):
    preflight = client.options(
        path, headers={"Origin": FRONTEND, "Access-Control-Request-Method": "POST"}
    )
    assert preflight.status_code == 200
    assert preflight.headers["Access-Control-Allow-Origin"] == FRONTEND


def test_a_disallowed_origin_gets_no_allow_header(make_app):
    client = make_app({"CORS_ORIGINS": "https://app.example"}).test_client()
    refused = client.get("/api/alice/tasks", headers={"Origin": "https://evil.example"})
    assert "Access-Control-Allow-Origin" not in refused.headers
    preflight = client.options(
        "/api/alice/chat",
        headers={"Origin": "https://evil.example", "Access-Control-Request-Method": "POST"},
    )
    assert "Access-Control-Allow-Origin" not in preflight.headers
    allowed = client.get("/api/alice/tasks", headers={"Origin": "https://app.example"})
    assert allowed.headers["Access-Control-Allow-Origin"] == "https://app.example"


def test_request_ids_are_echoed_when_well_formed(client):
    assert (
        client.get("/health/live", headers={"X-Request-ID": "abc-123"}).headers["X-Request-ID"]
        == "abc-123"
    )
    generated = client.get("/health/live", headers={"X-Request-ID": "bad id!"})
    assert generated.headers["X-Request-ID"] not in ("", "bad id!")
    missing = client.get("/api/alice/tasks/99", headers={"X-Request-ID": "trace.1"})
    assert missing.json["request_id"] == "trace.1"


def test_one_access_line_per_request_with_no_message_text_or_token(make_app, access_lines):
    client = make_app({"JWT_SECRET": SECRET}).test_client()
    token = auth.create_token("alice", secret=SECRET)
    secret_words = "my bank password is hunter2"
    client.post(
        "/api/alice/chat",
        json={"message": secret_words},
        headers={"Authorization": f"Bearer {token}", "X-Request-ID": "req-42"},
    )
    client.get("/api/alice/tasks/7")
    lines = access_lines()
    assert len(lines) == 2
    chat, missing = lines
    assert chat["method"] == "POST"
    assert chat["path"] == "/api/<user_id>/chat"
    assert chat["status"] == 200
    assert chat["request_id"] == "req-42"
    assert chat["user_id"] == "alice"
    assert chat["duration_ms"] >= 0
    assert missing["path"] == "/api/<user_id>/tasks/<int:task_id>"
    assert missing["status"] == 404
    written = json.dumps(lines)
    assert "hunter2" not in written and token not in written and "Bearer" not in written


def test_json_chat_responses_carry_server_timing(client):
    response = client.post("/api/alice/chat", json={"message": "hello"})
    timing = dict(
        part.strip().split(";dur=") for part in response.headers["Server-Timing"].split(",")
    )
    assert set(timing) == {"db", "agent", "total"}
    assert float(timing["total"]) >= float(timing["agent"])


def test_metrics_count_requests_turns_tokens_and_tools(client):
    client.post("/api/alice/chat", json={"message": "add a task to water the plants"})
    client.get("/api/alice/tasks/404")
    response = client.get("/metrics")
    assert response.status_code == 200
    assert response.mimetype == "text/plain"
    text = response.get_data(as_text=True)
    assert (
        'chatsvc_http_requests_total{method="POST",route="/api/<user_id>/chat",status="200"}'
        in text
    )
    assert 'route="/api/<user_id>/tasks/<int:task_id>",status="404"' in text
    assert "chatsvc_http_request_duration_seconds_bucket" in text
    assert 'chatsvc_agent_duration_seconds_count{model="local",status="completed"}' in text
    assert 'chatsvc_llm_tokens_total{kind="prompt",model="local"}' in text
    assert 'chatsvc_tool_calls_total{tool="add_task"}' in text
    assert "alice" not in text  # route templates, never raw ids


def test_security_headers(client):
    assert client.get("/api/alice/tasks").headers["X-Content-Type-Options"] == "nosniff"
    page = client.get("/docs")
    policy = page.headers["Content-Security-Policy"]
    assert "default-src 'self'" in policy
    assert "script-src" not in policy or "'unsafe-inline'" not in policy.split("script-src")[1]


def test_swagger_ui_is_served_from_local_assets_without_inline_script(client):
    page = client.get("/docs")
    assert page.status_code == 200
    html = page.get_data(as_text=True)
    assert "http://" not in html and "https://" not in html  # no CDN
    assert "<script>" not in html  # the CSP forbids inline script
    for asset in (
        "/docs/assets/swagger-ui-bundle.js",
        "/docs/assets/swagger-ui.css",
        "/docs/init.js",
    ):
        assert asset in html
        fetched = client.get(asset)
        assert fetched.status_code == 200, asset
        assert len(fetched.data) > 0
    assert "/openapi.json" in client.get("/docs/init.js").get_data(as_text=True)


def test_openapi_documents_every_route_and_its_problems(app, client):
    spec = client.get("/openapi.json").json
    documented = {
        (path, method.upper())
        for path, operations in spec["paths"].items()
        for method in operations
        if method != "parameters"
    }
    for rule in app.url_map.iter_rules():
        if rule.endpoint.startswith(("static", "docs.", "api-docs.")):
            continue
        path = rule.rule.replace("<int:", "<").replace("<", "{").replace(">", "}")
        for method in rule.methods - {"HEAD", "OPTIONS"}:
            assert (path, method) in documented, (path, method)
    chat = spec["paths"]["/api/{user_id}/chat"]["post"]
    assert "429" in chat["responses"]
    assert "application/problem+json" in chat["responses"]["429"]["content"]
    assert any(p["name"] == "Idempotency-Key" and p["in"] == "header" for p in chat["parameters"])


def test_each_turn_route_documents_all_its_responses_without_a_layer_each(app, client):
    """The chat routes document 200, 202 and every problem status (api.Blueprint.alt_response
    writes them on the view, where flask-smorest wrapped the view once per status): the
    document says the same, and the view the route calls is the documented one."""
    from chatsvc.api import TURN_DOCS
    from chatsvc.api.chat import TURN_ERRORS

    spec = client.get("/openapi.json").json
    for path in ("/api/{user_id}/chat", "/api/chat", "/api/chat/{session_id}"):
        responses = spec["paths"][path]["post"]["responses"]
        expected = {"default", "200", "202", *map(str, TURN_ERRORS)}
        expected |= {"410"} if "session_id" in path else set()
        assert set(responses) == expected, path
        for status in TURN_ERRORS:
            assert list(responses[str(status)]["content"]) == ["application/problem+json"]
        assert "Retry-After" in responses["503"]["headers"]
        assert responses["503"]["description"] == TURN_DOCS[503]["description"]
        assert "TurnAccepted" in json.dumps(responses["202"])
    view = app.view_functions["chat.chat_as_user"]
    assert "202" in {str(code) for code in view._apidoc["response"]["responses"]}
    layers = []  # flask-smorest's and webargs' for each of the two arguments, the response's
    while hasattr(view, "__wrapped__"):
        layers.append(view)
        view = view.__wrapped__
    assert view.__name__ == "chat_as_user" and len(layers) == 5  # 19 with a layer a status


def test_a_body_over_max_content_length_is_413(make_app):
    client = make_app({"MAX_CONTENT_LENGTH": 1024}).test_client()
    response = client.post("/api/alice/chat", json={"message": "x" * 2000})
    assert response.status_code == 413
    assert response.json["code"] == "payload_too_large"
