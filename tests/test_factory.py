import pytest

from chatsvc import create_app
from chatsvc.config import ConfigError, load


def test_testing_profile(app):
    assert app.config["TESTING"]
    assert app.config["CHATSVC_ENV"] == "testing"


def test_environment_overrides_defaults():
    settings = load({"CHATSVC_ENV": "development", "HISTORY_LIMIT": "7", "AUTH_MODE": "optional"})
    assert settings["HISTORY_LIMIT"] == 7
    assert settings["MAX_MESSAGE_CHARS"] == 4000


@pytest.mark.parametrize(
    "environ",
    [
        {"CHATSVC_ENV": "staging"},
        {"HISTORY_LIMIT": "many"},
        {"AGENT_PROVIDER": "magic"},
        {"AUTH_MODE": "sometimes"},
        {"ALLOW_ANONYMOUS_SESSIONS": "perhaps"},
    ],
)
def test_bad_settings_refuse_to_start(environ):
    with pytest.raises(ConfigError):
        load(environ)


def test_production_needs_a_database_and_a_strong_secret():
    with pytest.raises(ConfigError, match="DATABASE_URL"):
        load({"CHATSVC_ENV": "production", "JWT_SECRET": "x" * 32})
    with pytest.raises(ConfigError, match="JWT_SECRET"):
        load({"CHATSVC_ENV": "production", "DATABASE_URL": "sqlite://", "JWT_SECRET": "short"})
    settings = load(
        {"CHATSVC_ENV": "production", "DATABASE_URL": "sqlite://", "JWT_SECRET": "s" * 32}
    )
    assert settings["AUTH_MODE"] == "required"
    assert settings["ALLOW_ANONYMOUS_SESSIONS"] is False


def test_two_apps_keep_their_own_databases(tmp_path):
    first = create_app({"DATABASE_URL": f"sqlite:///{tmp_path / 'a.db'}"})
    second = create_app({"DATABASE_URL": f"sqlite:///{tmp_path / 'b.db'}"})
    assert first.config["DATABASE_URL"] != second.config["DATABASE_URL"]
    assert first.test_client().get("/openapi.json").json["info"]["title"] == "chatsvc"
    assert second.test_client().get("/openapi.json").status_code == 200


def test_a_function_made_for_one_request_is_not_kept(app):
    """The app remembers which functions are plain (speedups.App) only while they live: a
    closure made for one request (after_this_request) is not kept by that memory."""
    import gc
    import weakref

    from flask import after_this_request

    seen: list[weakref.ref] = []

    @app.get("/made-per-request")
    def made_per_request():
        @after_this_request
        def stamp(response):
            response.headers["X-Stamped"] = "yes"
            return response

        seen.append(weakref.ref(stamp))
        return {"ok": True}

    client = app.test_client()
    for _ in range(3):
        response = client.get("/made-per-request")
        assert response.status_code == 200 and response.headers["X-Stamped"] == "yes"
    gc.collect()
    assert [ref() for ref in seen] == [None, None, None]
    assert app.ensure_sync(made_per_request) is made_per_request  # remembered: it lives
