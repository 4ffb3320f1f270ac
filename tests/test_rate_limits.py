"""Rate limits (contract §1): one chat budget per caller, a default elsewhere, exemptions,
headers, 429 problems, fail-open, and a limit that holds across worker processes."""

from __future__ import annotations

import logging
import os
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from urllib.request import urlopen

import pytest
import redis
from conftest import require_service
from helpers import free_port, get

from chatsvc import auth

SECRET = "r" * 40


@pytest.fixture
def storage_uri():
    """Redis when TEST_REDIS_URL is set (as in CI), else the embedded memory storage. Callers
    are unique per test, and their keys are deleted afterwards."""
    url = os.environ.get("TEST_REDIS_URL")
    yield url or "memory://"
    if url:
        client = redis.Redis.from_url(url)
        for pattern in ("LIMITS:*edge-*", "LIMITS:*addr:*"):
            for found in client.scan_iter(match=pattern):
                client.delete(found)


@pytest.fixture
def limited(make_app, storage_uri):
    def build(**overrides):
        settings = {
            "RATELIMIT_ENABLED": True,
            "RATELIMIT_STORAGE_URI": storage_uri,
            "JWT_SECRET": SECRET,
            **overrides,
        }
        return make_app(settings).test_client()

    return build


def someone() -> str:
    return f"edge-{uuid.uuid4().hex[:12]}"


def bearer(user: str) -> dict[str, str]:
    return {"Authorization": "Bearer " + auth.create_token(user, secret=SECRET)}


def test_chat_posts_share_one_budget_per_caller(limited):
    client = limited(RATELIMIT_CHAT="3 per minute")
    user = someone()
    headers = bearer(user)
    first = client.post(f"/api/{user}/chat", json={"message": "hello"}, headers=headers)
    assert first.status_code == 200
    assert first.headers["X-RateLimit-Limit"] == "3"
    assert first.headers["X-RateLimit-Remaining"] == "2"
    assert int(first.headers["X-RateLimit-Reset"]) > time.time()
    session = client.post("/api/chat", json={"message": "hi"}, headers=headers).json["session_id"]
    assert (
        client.post(f"/api/chat/{session}", json={"message": "x"}, headers=headers).status_code
        == 200
    )
    refused = client.post(f"/api/{user}/chat", json={"message": "again"}, headers=headers)
    assert refused.status_code == 429
    assert refused.mimetype == "application/problem+json"
    assert refused.json["code"] == "rate_limited"
    assert refused.json["request_id"] == refused.headers["X-Request-ID"]
    assert 0 < int(refused.headers["Retry-After"]) <= 60
    assert refused.headers["X-RateLimit-Remaining"] == "0"
    # The budget is the caller's: someone else still chats, and other routes are unaffected.
    other = someone()
    assert client.post(f"/api/{other}/chat", json={"message": "hi"}).status_code == 200
    assert client.get(f"/api/{user}/tasks", headers=headers).status_code == 200


def test_every_request_counts_errors_and_replays_included(limited):
    client = limited(RATELIMIT_CHAT="4 per minute")
    user = someone()
    assert client.post(f"/api/{user}/chat", json={"message": ""}).status_code == 422
    assert client.post(f"/api/{user}/chat", data="hi", content_type="text/plain").status_code == 415
    key = {"Idempotency-Key": "once"}
    assert client.post(f"/api/{user}/chat", json={"message": "hi"}, headers=key).status_code == 200
    replay = client.post(f"/api/{user}/chat", json={"message": "hi"}, headers=key)
    assert replay.headers["Idempotent-Replayed"] == "true"
    assert client.post(f"/api/{user}/chat", json={"message": "hi"}).status_code == 429


def test_other_routes_have_the_default_limit_and_service_routes_none(limited):
    client = limited(RATELIMIT_DEFAULT="2 per minute")
    user = someone()
    assert [client.get(f"/api/{user}/tasks").status_code for _ in range(3)] == [200, 200, 429]
    for path in ("/health", "/health/live", "/metrics", "/docs", "/openapi.json"):
        responses = [client.get(path) for _ in range(4)]
        assert [r.status_code for r in responses] == [200] * 4, path
        assert "X-RateLimit-Limit" not in responses[-1].headers
        assert "Retry-After" not in responses[-1].headers


def test_without_a_token_the_caller_is_the_path_user_then_the_session_then_the_address(limited):
    client = limited(RATELIMIT_CHAT="1 per minute")
    alice, bob = someone(), someone()
    assert client.post(f"/api/{alice}/chat", json={"message": "hi"}).status_code == 200
    assert client.post(f"/api/{alice}/chat", json={"message": "hi"}).status_code == 429
    assert client.post(f"/api/{bob}/chat", json={"message": "hi"}).status_code == 200
    # A token's subject is the same caller as its path user.
    assert (
        client.post(f"/api/{bob}/chat", json={"message": "hi"}, headers=bearer(bob)).status_code
        == 429
    )


def test_the_client_address_comes_from_trusted_proxies_only(limited):
    def sessions_started(client, forwarded_for):
        return [
            client.post(
                "/api/chat", json={"message": "hi"}, headers={"X-Forwarded-For": address},
                environ_base={"REMOTE_ADDR": proxy},
            ).status_code
            for address in forwarded_for
        ]  # fmt: skip

    proxy = f"10.{uuid.uuid4().int % 250}.{uuid.uuid4().int % 250}.{uuid.uuid4().int % 250}"
    one, two = f"203.0.113.{uuid.uuid4().int % 250}", f"198.51.100.{uuid.uuid4().int % 250}"
    behind_proxy = limited(RATELIMIT_CHAT="1 per minute", PROXY_FIX_X_FOR=1)
    assert sessions_started(behind_proxy, [one, two, one]) == [200, 200, 429]
    direct = limited(RATELIMIT_CHAT="1 per minute", PROXY_FIX_X_FOR=0)
    assert sessions_started(direct, [f"192.0.2.{uuid.uuid4().int % 250}", two]) == [200, 429]


def test_storage_down_fails_open_and_says_so(make_app, caplog):
    closed_port = free_port()  # nothing listens here once the probe is closed
    client = make_app(
        {
            "RATELIMIT_ENABLED": True,
            "RATELIMIT_STORAGE_URI": f"redis://127.0.0.1:{closed_port}/0",
            "RATELIMIT_CHAT": "2 per minute",
        }
    ).test_client()
    limiter_log = logging.getLogger("flask-limiter")
    limiter_log.addHandler(caplog.handler)
    try:
        user = someone()
        statuses = [
            client.post(f"/api/{user}/chat", json={"message": "hi"}).status_code for _ in range(3)
        ]
    finally:
        limiter_log.removeHandler(caplog.handler)
    # Still answering, still limiting (per process, in memory) — and the operator is told.
    assert statuses == [200, 200, 429]
    assert any("unreachable" in record.getMessage() for record in caplog.records)


def test_rejections_are_counted_in_metrics(limited):
    client = limited(RATELIMIT_DEFAULT="1 per minute")
    before = _metric(client, 'chatsvc_rate_limited_total{scope="default"}')
    user = someone()
    client.get(f"/api/{user}/tasks")
    assert client.get(f"/api/{user}/tasks").status_code == 429
    assert _metric(client, 'chatsvc_rate_limited_total{scope="default"}') == before + 1


def _metric(client, name: str) -> float:
    for line in client.get("/metrics").get_data(as_text=True).splitlines():
        if line.startswith(name + " "):
            return float(line.split()[-1])
    return 0.0


# Across processes -------------------------------------------------------------------------


def test_a_limit_holds_in_total_across_two_gunicorn_workers(gunicorn, storage_uri):
    redis_url = require_service("TEST_REDIS_URL", "Redis")
    base = gunicorn(
        WEB_CONCURRENCY="2", RATELIMIT_STORAGE_URI=redis_url, RATELIMIT_DEFAULT="10 per minute"
    ).url
    user = someone()
    with ThreadPoolExecutor(max_workers=8) as pool:
        statuses = list(pool.map(lambda _: get(f"{base}/api/{user}/tasks"), range(24)))
    assert statuses.count(200) == 10
    assert statuses.count(429) == 14
    # Both workers served, so memory:// would have let up to 20 through: /metrics adds up
    # every worker's counts (multiprocess mode) and sees all 24 requests.
    with urlopen(base + "/metrics", timeout=10) as response:
        text = response.read().decode()
    counted = sum(
        float(line.split()[-1])
        for line in text.splitlines()
        if line.startswith('chatsvc_http_requests_total{method="GET",route="/api/<user_id>/tasks"')
    )
    assert counted >= 24
