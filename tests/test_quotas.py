"""Quotas (contract §10): tokens per user per UTC day, the admin's override, /usage, and the
service the turn path calls (admit before the model, settle after), on both databases."""

from __future__ import annotations

import threading
from datetime import UTC, datetime, timedelta

import pytest
from helpers import assert_problem, ok
from sqlalchemy import select

from chatsvc import auth
from chatsvc.db import database
from chatsvc.models import QuotaUsage
from chatsvc.services import quotas

SECRET = "q" * 40
CAP = 1000


@pytest.fixture
def quota_app(make_app):
    return make_app({"QUOTA_TOKENS_PER_DAY": CAP, "JWT_SECRET": SECRET})


def bearer(user: str, admin: bool = False) -> dict[str, str]:
    return {"Authorization": f"Bearer {auth.create_token(user, secret=SECRET, admin=admin)}"}


def settle(app, who: str, tokens: int, now: datetime | None = None) -> None:
    """What the turn path does when a turn finishes (its own unit of work commits)."""
    with database(app).sessions() as session:
        quotas.settle(session, who, tokens, now)
        session.commit()


def quota_of(client, user: str = "alice") -> dict:
    return ok(client.get(f"/api/{user}/usage"))["quota"]


def next_midnight() -> str:
    tomorrow = datetime.now(UTC).date() + timedelta(days=1)
    return f"{tomorrow.isoformat()}T00:00:00.000Z"


def test_usage_shows_no_quota_by_default(client):
    assert quota_of(client) == {
        "tokens_per_day": None, "used_today": 0, "remaining": None, "resets_at": next_midnight()
    }  # fmt: skip


def test_usage_shows_todays_tokens_against_the_cap(quota_app):
    client = quota_app.test_client()
    assert quota_of(client) == {
        "tokens_per_day": CAP, "used_today": 0, "remaining": CAP, "resets_at": next_midnight()
    }  # fmt: skip
    settle(quota_app, "user:alice", 300)
    settle(quota_app, "user:alice", 250)
    settle(quota_app, "user:bob", 999)
    settle(quota_app, "user:alice", 400, datetime.now(UTC) - timedelta(days=1))  # yesterday
    assert quota_of(client)["used_today"] == 550 and quota_of(client)["remaining"] == 450
    settle(quota_app, "user:alice", 700)  # a turn that overran: it counts, remaining stops at 0
    assert (quota_of(client)["used_today"], quota_of(client)["remaining"]) == (1250, 0)
    assert quota_of(client, "bob")["remaining"] == 1


def test_admit_refuses_a_spent_quota_until_the_next_utc_day(quota_app):
    settle(quota_app, "user:alice", CAP - 1)
    with database(quota_app).sessions() as session:
        assert quotas.admit(session, "user:alice", CAP).remaining == 1
    settle(quota_app, "user:alice", 1)
    now = datetime.now(UTC).replace(hour=23, minute=59, second=30, microsecond=0)
    settle(quota_app, "user:carol", CAP, now)
    with database(quota_app).sessions() as session:
        with pytest.raises(quotas.QuotaExceeded) as refused:
            quotas.admit(session, "user:carol", CAP, now)
        assert quotas.admit(session, "user:carol", CAP, now + timedelta(seconds=31)).remaining
    assert refused.value.headers == {"Retry-After": "30", "X-Quota-Remaining": "0"}
    # The service's own error handler turns it into the contract's problem body.
    with quota_app.test_request_context("/api/carol/chat", method="POST"):
        response = quota_app.handle_user_exception(refused.value)
    problem = response.get_json()
    assert (response.status_code, response.mimetype) == (429, "application/problem+json")
    assert (problem["code"], problem["quota"]["remaining"]) == ("quota_exceeded", 0)
    assert response.headers["Retry-After"] == "30"


def test_anonymous_callers_count_per_address(quota_app):
    anonymous = quotas.subject(None, "203.0.113.9")
    assert anonymous == "address:203.0.113.9" and quotas.subject("alice", "1.2.3.4") == "user:alice"
    settle(quota_app, anonymous, CAP)
    with database(quota_app).sessions() as session:
        with pytest.raises(quotas.QuotaExceeded):
            quotas.admit(session, anonymous, CAP)
        assert quotas.admit(session, quotas.subject(None, "203.0.113.10"), CAP).remaining == CAP


def test_counts_add_up_across_workers(quota_app, make_app):
    """Turns finishing at once on two workers (two apps, two connection pools) all count."""
    workers = [quota_app, make_app({"QUOTA_TOKENS_PER_DAY": CAP, "JWT_SECRET": SECRET})]

    def finish_turns(app):
        for _ in range(25):
            settle(app, "user:alice", 7)

    threads = [threading.Thread(target=finish_turns, args=(workers[n % 2],)) for n in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert quota_of(workers[1].test_client())["used_today"] == 6 * 25 * 7


def test_deleting_conversations_gives_no_tokens_back(quota_app):
    client = quota_app.test_client()
    conversation = ok(client.post("/api/alice/chat", json={"message": "hello"}))["conversation_id"]
    settle(quota_app, "user:alice", 600)
    assert client.delete(f"/api/alice/conversations/{conversation}").status_code == 204
    assert quota_of(client)["used_today"] == 600


def test_admin_sets_a_users_own_cap(quota_app):
    client = quota_app.test_client()
    path = "/api/admin/users/alice/quota"
    settle(quota_app, "user:alice", 100)
    body = ok(client.put(path, json={"tokens_per_day": 5000}, headers=bearer("root", admin=True)))
    assert body == {
        "tokens_per_day": 5000, "used_today": 100, "remaining": 4900, "resets_at": next_midnight()
    }  # fmt: skip
    assert quota_of(client)["tokens_per_day"] == 5000
    assert quota_of(client, "bob")["tokens_per_day"] == CAP  # only alice's
    ok(client.put(path, json={"tokens_per_day": 50}, headers=bearer("root", admin=True)))
    assert quota_of(client)["remaining"] == 0
    none = ok(client.put(path, json={"tokens_per_day": 0}, headers=bearer("root", admin=True)))
    assert (none["tokens_per_day"], none["remaining"]) == (None, None)
    with database(quota_app).sessions() as session:
        assert quotas.admit(session, "user:alice", CAP).remaining is None  # no quota for her
    back = ok(client.put(path, json={"tokens_per_day": None}, headers=bearer("root", admin=True)))
    assert back["tokens_per_day"] == CAP


def test_only_an_admin_sets_quotas(quota_app, subtests):
    client = quota_app.test_client()
    path = "/api/admin/users/alice/quota"
    body = {"tokens_per_day": 10**6}
    assert_problem(client.put(path, json=body), 401, "unauthorized")  # even in development
    assert_problem(client.put(path, json=body, headers=bearer("alice")), 403, "forbidden")
    assert quota_of(client)["tokens_per_day"] == CAP
    admin = bearer("root", admin=True)
    for bad in [{}, {"tokens_per_day": -1}, {"tokens_per_day": "5"}, {"tokens_per_day": 1.5},
                {"tokens_per_day": 10**13}, {"tokens_per_day": 5, "user": "x"}]:  # fmt: skip
        with subtests.test(repr(bad)):
            assert_problem(client.put(path, json=bad, headers=admin), 422, "validation_error")
    response = client.put("/api/admin/users/not%20a%20user/quota", json=body, headers=admin)
    assert_problem(response, 404, "not_found")
    assert quota_of(client)["tokens_per_day"] == CAP


def test_cleanup_forgets_counters_of_past_days(quota_app):
    now = datetime.now(UTC)
    for days_ago in (0, 1, 2, 30):
        settle(quota_app, "user:alice", 10 + days_ago, now - timedelta(days=days_ago))
    result = quota_app.test_cli_runner().invoke(args=["sessions", "cleanup"])
    assert result.exit_code == 0, result.output
    with database(quota_app).sessions() as session:
        kept = session.execute(select(QuotaUsage.day, QuotaUsage.tokens)).all()
    assert sorted(tokens for _, tokens in kept) == [10, 11]  # today and yesterday
    assert quota_of(quota_app.test_client())["used_today"] == 10
