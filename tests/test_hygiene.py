"""Security hygiene (contract §1, quality guide): no internals in any response, streamed errors
included, and no token or message text in any log line the service writes — on the happy path
and every error path, the OpenAI adapter's logging included."""

from __future__ import annotations

import json
import logging

import pytest
from fakellm import drop, fail, garbage, say
from fakes import ScriptedAgent
from helpers import assert_problem, sse_events
from sqlalchemy import text

from chatsvc import auth, db
from chatsvc.observability import LOGGERS, JsonFormatter

SECRET = "h" * 40
WORDS = "my-pin-is-4921"  # in every message: must never reach a log line


class Lines(logging.Handler):
    def __init__(self, level: int) -> None:
        super().__init__(level)
        self.setFormatter(JsonFormatter())
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(self.format(record))


@pytest.fixture
def written():
    """Every line the service writes: its own loggers at DEBUG (they do not propagate) and what
    reaches the root logger at WARNING (what Python and gunicorn print by default)."""
    ours, root = Lines(logging.DEBUG), Lines(logging.WARNING)
    loggers = [logging.getLogger(name) for name in LOGGERS]
    for logger in loggers:
        logger.addHandler(ours)
    logging.getLogger().addHandler(root)
    yield lambda: ours.lines + root.lines
    for logger in loggers:
        logger.removeHandler(ours)
    logging.getLogger().removeHandler(root)


def test_no_token_or_message_text_in_the_logs_of_turns_that_work_and_fail(
    llm_app, fake_llm, written
):
    app = llm_app(
        LOG_LEVEL="DEBUG", AUTH_MODE="required", JWT_SECRET=SECRET, AGENT_MAX_RETRIES=1,
        AGENT_TIMEOUT_SECONDS=3.0,
    )  # fmt: skip
    token = auth.create_token("alice", secret=SECRET)
    headers = {"Authorization": f"Bearer {token}"}
    client = app.test_client()

    @app.post("/_test/db-error")
    def db_error():  # an IntegrityError whose parameters hold message text
        insert = text("INSERT INTO task_counters (user_id, last_task_id) VALUES (:user, 1)")
        db.session().execute(insert, {"user": WORDS})
        db.session().execute(insert, {"user": WORDS})

    def turn(**extra: str):
        body = {"message": f"please remember {WORDS}"}
        return client.post("/api/alice/chat", json=body, headers={**headers, **extra})

    fake_llm.script(say(f"noted {WORDS}"))
    assert turn().status_code == 200
    fake_llm.script(say(f"noted {WORDS}"))
    assert sse_events(turn(Accept="text/event-stream"))[-1][0] == "done"
    fake_llm.script(fail(500), fail(500))  # retried once (AGENT_MAX_RETRIES=1), then given up
    assert turn().status_code == 502
    fake_llm.script(garbage())
    assert turn().status_code == 502
    fake_llm.script(drop(), say(f"noted {WORDS}"))  # a dropped connection is retried
    assert turn().status_code == 200
    fake_llm.script(drop(midstream=True))
    assert sse_events(turn(Accept="text/event-stream"))[-1][0] == "error"
    bad = client.post("/api/alice/chat", json={"message": WORDS}, headers={"Authorization": WORDS})
    assert bad.status_code == 401
    assert_problem(client.post("/_test/db-error", headers=headers), 500, "internal_error")

    lines = written()
    assert any('"status": 502' in line for line in lines), "the access log was captured"
    assert any("unhandled error" in line for line in lines), "the error log was captured"
    for line in lines:
        assert WORDS not in line and token not in line and "Bearer" not in line, line


def test_a_stream_that_fails_unexpectedly_shows_no_internals(make_app):
    agent = ScriptedAgent([RuntimeError("bug with secret=hunter2 in /srv/chatsvc/agent.py")])
    client = make_app(agent=agent).test_client()
    response = client.post(
        "/api/alice/chat", json={"message": "hi"}, headers={"Accept": "text/event-stream"}
    )
    assert response.headers["X-Content-Type-Options"] == "nosniff"
    name, _, problem = sse_events(response)[-1]
    assert name == "error" and problem["code"] == "internal_error"
    raw = response.get_data(as_text=True)
    for leak in ("hunter2", "Traceback", ".py", "RuntimeError"):
        assert leak not in raw


PAGES = ["/demo", "/docs"]
OTHERS = [
    ("get", "/"), ("get", "/openapi.json"), ("get", "/metrics"), ("get", "/health/live"),
    ("get", "/demo/app.js"), ("options", "/api/alice/chat"), ("put", "/api/alice/chat"),
    ("get", "/api/alice/tasks/1"), ("post", "/api/chat"),
]  # fmt: skip


def test_nosniff_everywhere_and_a_same_origin_csp_on_html(client, subtests):
    for path in PAGES:
        with subtests.test(path):
            page = client.get(path)
            assert page.status_code == 200 and page.mimetype == "text/html"
            assert page.headers["X-Content-Type-Options"] == "nosniff"
            policy = dict(
                part.strip().split(" ", 1)
                for part in page.headers["Content-Security-Policy"].split(";")
            )
            assert policy["default-src"] == "'self'"
            assert policy["frame-ancestors"] == "'none'"
            assert "script-src" not in policy  # scripts fall back to 'self': none inline
            for sources in policy.values():
                assert "*" not in sources and "http" not in sources
    for method, path in OTHERS:
        with subtests.test(path=path, method=method):
            response = getattr(client, method)(path, data="{}", content_type="application/json")
            assert response.headers["X-Content-Type-Options"] == "nosniff"
    streamed = client.post(
        "/api/alice/chat", json={"message": "hi"}, headers={"Accept": "text/event-stream"}
    )
    assert streamed.headers["X-Content-Type-Options"] == "nosniff"
    assert json.loads(streamed.get_data(as_text=True).split("data: ")[-1])["status"] == "completed"
