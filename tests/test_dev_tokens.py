"""Tokens in development (issue 20): with no JWT_SECRET, the development profile makes a secret
under instance/ that the server and `make token` share; no other profile ever does."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import threading
from pathlib import Path
from urllib.request import Request, urlopen

import jwt
from conftest import ROOT
from helpers import assert_problem

from chatsvc import config, create_app


def make_token(user: str, *extra: str) -> str:
    env = {**os.environ, "CHATSVC_ENV": "development"}
    env.pop("JWT_SECRET", None)
    result = subprocess.run(
        ["make", "-s", "token", f"USER={user}", *extra],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    return result.stdout.strip().splitlines()[-1]


def call(url: str, token: str | None = None) -> tuple[int, dict]:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    try:
        with urlopen(Request(url, headers=headers), timeout=10) as response:
            return response.status, json.load(response)
    except Exception as error:  # HTTPError carries the problem body
        return error.code, json.load(error)


def test_make_run_accepts_tokens_from_make_token(gunicorn):
    server = gunicorn(JWT_SECRET="")  # as a fresh `make run`: no secret configured
    alice = make_token("alice")
    assert jwt.decode(alice, options={"verify_signature": False})["sub"] == "alice"
    assert call(f"{server.url}/api/alice/tasks", alice) == (200, {"items": [], "next_cursor": None})
    status, problem = call(f"{server.url}/api/bob/tasks", alice)
    assert (status, problem["code"]) == (403, "forbidden")
    forged = jwt.encode({"sub": "alice", "exp": 4102444800}, "x" * 32, algorithm="HS256")
    status, problem = call(f"{server.url}/api/alice/tasks", forged)
    assert (status, problem["code"]) == (401, "unauthorized")
    admin = make_token("root", "ADMIN=1")
    assert jwt.decode(admin, options={"verify_signature": False})["role"] == "admin"
    secret = Path(ROOT, "instance", config.DEV_SECRET_FILE)
    assert stat.S_IMODE(secret.stat().st_mode) == 0o600
    assert len(secret.read_text().strip()) == 64


def test_one_secret_for_processes_starting_at_once(tmp_path):
    found: list[str] = []
    workers = [
        threading.Thread(target=lambda: found.append(config.development_secret(str(tmp_path))))
        for _ in range(8)
    ]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(timeout=10)
    assert len(found) == 8 and len(set(found)) == 1 and len(found[0]) == 64
    assert [p.name for p in tmp_path.iterdir()] == [config.DEV_SECRET_FILE]  # no drafts left
    assert config.development_secret(str(tmp_path)) == found[0]


def test_other_profiles_never_make_one(database_url):
    for profile in ("production", "testing"):
        app = create_app(
            {"CHATSVC_ENV": profile, "DATABASE_URL": database_url, "AUTH_MODE": "optional"}
        )
        assert app.config["JWT_SECRET"] == ""
        token = jwt.encode({"sub": "alice", "exp": 4102444800}, "x" * 32, algorithm="HS256")
        response = app.test_client().get(
            "/api/alice/tasks", headers={"Authorization": f"Bearer {token}"}
        )
        assert "accepts no tokens" in assert_problem(response, 401, "unauthorized")["detail"]
