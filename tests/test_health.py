"""Service endpoints: index, readiness, liveness (contract §7)."""

from __future__ import annotations

import time

import pytest
from helpers import assert_problem, ok

from chatsvc import __version__, create_app
from chatsvc.db import database

UNREACHABLE = {
    "postgresql": "postgresql+psycopg://postgres@127.0.0.1:1/x",
    "sqlite": "sqlite:////nonexistent-directory/chatsvc.db",
}


@pytest.fixture(params=sorted(UNREACHABLE))
def broken_client(request):
    app = create_app({"DATABASE_URL": UNREACHABLE[request.param], "DB_CONNECT_TIMEOUT": 1})
    yield app.test_client()
    database(app).engine.dispose()


def test_index_names_the_service_and_links_its_docs(client):
    body = ok(client.get("/"))
    assert body["name"] == "chatsvc"
    assert body["version"] == __version__
    assert ok(client.get(body["links"]["openapi"]))["openapi"].startswith("3.")
    assert ok(client.get(body["links"]["health"]))["status"] == "ok"


def test_health_checks_the_database(client):
    assert ok(client.get("/health")) == {"status": "ok", "checks": {"database": "ok"}}


def test_liveness_needs_nothing(client):
    assert ok(client.get("/health/live"))["status"] == "ok"


def test_health_is_503_quickly_when_the_database_is_unreachable(broken_client):
    started = time.monotonic()
    response = broken_client.get("/health")
    body = assert_problem(response, 503, "unavailable")
    assert body["checks"] == {"database": "unavailable"}
    assert time.monotonic() - started < 5
    assert ok(broken_client.get("/health/live"))["status"] == "ok"


@pytest.mark.parametrize("path", ["/api/alice/chat", "/api/chat", "/api/alice/tasks"])
def test_requests_are_503_not_500_without_a_database(broken_client, path):
    body = {"title": "t"} if path.endswith("tasks") else {"message": "hello"}
    response = broken_client.post(path, json=body)
    body = assert_problem(response, 503, "unavailable")
    assert "127.0.0.1" not in body["detail"] and "nonexistent" not in body["detail"]
