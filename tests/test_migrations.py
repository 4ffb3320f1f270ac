"""`flask db upgrade` on an empty database gives exactly the models' schema, on both backends."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from conftest import require_service
from sqlalchemy import create_engine, inspect, text
from sqlalchemy.engine import make_url

from chatsvc import create_app
from chatsvc.db import Base, database, include_name


@pytest.fixture(params=["sqlite", "postgresql"])
def empty_database(request, tmp_path) -> Iterator[str]:
    """A brand-new database of its own, never the one the other tests share."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'empty.db'}"
        return
    server = make_url(require_service("TEST_DATABASE_URL", "PostgreSQL"))
    name = f"chatsvc_migrations_{uuid.uuid4().hex[:12]}"
    admin = create_engine(server, isolation_level="AUTOCOMMIT")
    with admin.connect() as connection:
        connection.execute(text(f'CREATE DATABASE "{name}"'))
    try:
        yield server.set(database=name).render_as_string(hide_password=False)
    finally:
        with admin.connect() as connection:
            connection.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


def flask(app, *args: str) -> str:
    result = app.test_cli_runner().invoke(args=list(args))
    assert result.exit_code == 0, f"{result.output}\n{result.exception!r}"
    return result.output


def test_upgrade_gives_exactly_the_models_schema(empty_database):
    app = create_app({"DATABASE_URL": empty_database})
    engine = database(app).engine
    try:
        flask(app, "db", "upgrade")
        with engine.connect() as connection:
            context = MigrationContext.configure(
                connection, opts={"compare_type": True, "include_name": include_name}
            )
            assert compare_metadata(context, Base.metadata) == []
        flask(app, "db", "check")  # exits non-zero on any drift
        tables = {t for t in inspect(engine).get_table_names() if include_name(t, "table", {})}
        assert tables == set(Base.metadata.tables) | {"alembic_version"}
    finally:
        engine.dispose()


def test_migrations_downgrade_to_nothing_and_up_again(empty_database):
    app = create_app({"DATABASE_URL": empty_database})
    engine = database(app).engine
    try:
        flask(app, "db", "upgrade")
        flask(app, "db", "downgrade", "base")
        assert set(inspect(engine).get_table_names()) <= {"alembic_version"}
        flask(app, "db", "upgrade")
        flask(app, "db", "check")  # exits non-zero on any drift
    finally:
        engine.dispose()
