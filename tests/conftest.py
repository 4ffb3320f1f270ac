"""Fixtures: the app on a real database: SQLite always, PostgreSQL when TEST_DATABASE_URL is set."""

from __future__ import annotations

import os

os.environ["CHATSVC_ENV"] = "testing"  # before chatsvc reads its settings

import signal  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from collections.abc import Callable, Iterator  # noqa: E402
from dataclasses import dataclass  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

import pytest  # noqa: E402
from flask import Flask  # noqa: E402
from flask_migrate import upgrade  # noqa: E402
from helpers import free_port, get  # noqa: E402
from sqlalchemy import create_engine, text  # noqa: E402

from chatsvc import close_app, create_app  # noqa: E402
from chatsvc.agent.base import Agent  # noqa: E402
from chatsvc.db import Base, database  # noqa: E402

BACKENDS = ["sqlite", "postgresql"]
ROOT = Path(__file__).resolve().parent.parent


def require_service(variable: str, what: str) -> str:
    """The service's URL; skipped (with the reason) when absent — failed when CI demands it."""
    url = os.environ.get(variable)
    if url:
        return url
    reason = f"{what} not configured: set {variable} to run this test"
    if os.environ.get("CHATSVC_REQUIRE_SERVICES") == "1":
        pytest.fail(reason + " (CHATSVC_REQUIRE_SERVICES=1)")
    pytest.skip(reason)


@pytest.fixture(scope="session", params=BACKENDS)
def database_url(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> str:
    """A migrated, empty database of each backend, made once per test session."""
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path_factory.mktemp('db') / 'chatsvc.db'}"
    else:
        url = require_service("TEST_DATABASE_URL", "PostgreSQL")
        reset_postgres(url)
    app = create_app({"DATABASE_URL": url})
    with app.app_context():
        upgrade()
    database(app).engine.dispose()
    return url


def reset_postgres(url: str) -> None:
    engine = create_engine(url)
    with engine.begin() as connection:
        connection.execute(text("DROP SCHEMA public CASCADE"))
        connection.execute(text("CREATE SCHEMA public"))
    engine.dispose()


@pytest.fixture
def make_app(database_url: str) -> Iterator[Callable[..., Flask]]:
    """Build apps on the test database; every table is emptied after the test."""
    apps: list[Flask] = []

    def factory(config: dict[str, Any] | None = None, *, agent: Agent | None = None) -> Flask:
        app = create_app({"DATABASE_URL": database_url, **(config or {})}, agent=agent)
        apps.append(app)
        return app

    yield factory
    for app in apps:
        close_app(app)  # the agent's sockets too: none is left for a later test's GC to find
    if apps:
        empty_tables(database(apps[0]).engine)


def empty_tables(engine: Any) -> None:
    with engine.begin() as connection:
        for table in reversed(Base.metadata.sorted_tables):
            connection.execute(table.delete())
    engine.dispose()


@pytest.fixture
def app(make_app: Callable[..., Flask]) -> Flask:
    return make_app()


@pytest.fixture
def client(app: Flask):
    return app.test_client()


@pytest.fixture
def runner(app: Flask):
    return app.test_cli_runner()


@pytest.fixture
def fake_llm() -> Iterator[Any]:
    """A scripted OpenAI-compatible server on 127.0.0.1 (tests/fakellm.py)."""
    from fakellm import FakeLLM

    server = FakeLLM()
    yield server
    server.close()


@pytest.fixture(scope="module")
def shared_llm() -> Iterator[Any]:
    """One fake model for a module whose servers outlive a test: each test resets it."""
    from fakellm import FakeLLM

    server = FakeLLM()
    yield server
    server.close()


@pytest.fixture
def llm_app(make_app: Callable[..., Flask], fake_llm: Any) -> Callable[..., Flask]:
    """Apps whose agent is the OpenAI adapter talking to the fake server."""

    def factory(**config: Any) -> Flask:
        return make_app(
            {
                "AGENT_PROVIDER": "openai",
                "OPENAI_BASE_URL": fake_llm.url,
                "OPENAI_MODEL": "fake-model",
                "OPENAI_API_KEY": "sk-test",
                "AGENT_TIMEOUT_SECONDS": 2.0,
                "AGENT_MAX_RETRIES": 0,
                **config,
            }
        )

    return factory


@dataclass
class Server:
    url: str
    process: subprocess.Popen
    log: Path  # gunicorn's stderr: its own log and the app's JSON lines


def start_gunicorn(database_url: str, directory: Path, **environ: str) -> Server:
    """`gunicorn -c gunicorn.conf.py wsgi:app` on a free port, as `make run` starts it, its
    log and metrics in `directory`; the caller stops it (stop_gunicorn)."""
    port = free_port()
    env = {
        **os.environ, "CHATSVC_ENV": "development", "HOST": "127.0.0.1", "PORT": str(port),
        "DATABASE_URL": database_url, "LOG_LEVEL": "WARNING",
        "PROMETHEUS_MULTIPROC_DIR": str(directory / f"metrics-{port}"), **environ,
    }  # fmt: skip
    os.makedirs(env["PROMETHEUS_MULTIPROC_DIR"], exist_ok=True)
    log = directory / f"gunicorn-{port}.log"
    with open(log, "wb") as sink:  # a file, not a pipe: a full pipe would block the server
        process = subprocess.Popen(
            [sys.executable, "-m", "gunicorn", "--config", "gunicorn.conf.py", "wsgi:app"],
            cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=sink,
        )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while get(url + "/health/live") != 200:
        if process.poll() is not None or time.monotonic() > deadline:
            stop_gunicorn(process)
            raise RuntimeError("gunicorn did not start: " + log.read_text()[-2000:])
        time.sleep(0.1)
    return Server(url, process, log)


def stop_gunicorn(process: subprocess.Popen) -> None:
    """Stop after its tests and wait; killed after 30 s. gunicorn's quick shutdown (SIGQUIT):
    the graceful one (SIGTERM) waits in the gevent worker's one-second loop (1.85 s against
    0.95 s per server, measured); the tests of the graceful stop send SIGTERM themselves."""
    process.send_signal(signal.SIGQUIT)
    try:
        process.wait(timeout=30)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(timeout=10)


@pytest.fixture
def gunicorn(database_url: str, tmp_path: Path) -> Iterator[Callable[..., Server]]:
    """Start gunicorns for the test (start_gunicorn); stopped (and waited for) after it."""
    servers: list[Server] = []

    def start(**environ: str) -> Server:
        servers.append(start_gunicorn(database_url, tmp_path, **environ))
        return servers[-1]

    yield start
    for server in servers:
        stop_gunicorn(server.process)
    if servers:  # what the servers stored is not left for the next test to find
        empty_tables(create_engine(database_url))


@pytest.fixture(scope="module")
def shared_gunicorn(
    database_url: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Callable[..., Server]]:
    """Like `gunicorn`, but one server per distinct environment for the whole module (on each
    database), stopped after its last test: tests with the same settings share it and keep
    apart by their own users. `instance` names a second server of the same settings."""
    servers: dict[tuple[tuple[str, str], ...], Server] = {}
    directory = tmp_path_factory.mktemp("gunicorn")

    def start(instance: str = "", **environ: str) -> Server:
        key = (("", instance), *sorted(environ.items()))
        if key not in servers:
            servers[key] = start_gunicorn(database_url, directory, **environ)
        return servers[key]

    yield start
    for server in servers.values():
        stop_gunicorn(server.process)
    if servers:
        empty_tables(create_engine(database_url))
