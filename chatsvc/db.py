"""The database: an engine and sessionmaker per app; a request-scoped session closed at teardown."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Any

from flask import Flask, current_app, g
from sqlalchemy import DateTime, MetaData, create_engine, event, text
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.orm import DeclarativeBase, Session, sessionmaker
from sqlalchemy.types import TypeDecorator

from .config import ConfigError

NAMING = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING)


class UTCDateTime(TypeDecorator):
    """Timezone-aware UTC datetimes on every backend (SQLite stores no zone)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to a UTC column")
        value = value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def utcnow() -> datetime:
    return datetime.now(UTC)


# The full-text index is database-specific and lives only in the migrations: SQLite's FTS5
# table (and its shadow tables), PostgreSQL's generated tsvector column and its GIN index.
FULL_TEXT = ("chunks_fts", "ix_chunks_fts")
# ... and the same for conversation search (titles and message text).
FULL_TEXT += ("messages_fts", "ix_messages_fts", "conversations_fts", "ix_conversations_fts")


def include_name(name: str | None, type_: str, parent_names: dict[str, Any]) -> bool:
    """Alembic's filter: what autogenerate compares between the models and the database."""
    if type_ == "column" and parent_names.get("table_name") == "chunks":
        return name != "fts"
    return not (name or "").startswith(FULL_TEXT)


class Database:
    """What `db.init_app` attaches to the app: the engine and the session factory."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.sessions = sessionmaker(engine, expire_on_commit=False)
        self.metadata = Base.metadata  # Flask-Migrate reads this

    @contextmanager
    def transaction(self) -> Iterator[Session]:
        """A unit of work: commits when the block ends, rolls back when it raises."""
        session = self.sessions()
        try:
            yield session
            session.commit()
        except BaseException:
            session.rollback()
            raise
        finally:
            session.close()

    @contextmanager
    def statements(self) -> Iterator[Connection]:
        """A unit of work of Core statements only (no ORM objects, no `session.add`): a
        connection in a transaction, committed when the block ends, rolled back when it
        raises. The same as `transaction()` without the Session's bookkeeping, which cost a
        chat turn's two units of work more CPU than their statements (bench/turncost.py)."""
        with self.engine.begin() as connection:
            yield connection

    @contextmanager
    def one_transaction(self) -> Iterator[Session]:
        """A unit of work made of steps that each end in `session.commit()` (the services
        do): those commits are not the database's; everything commits together when the block
        ends, or nothing does when it raises (a tool's effect and the record that it ran)."""
        with self.engine.connect() as connection, connection.begin():
            # rollback_only: the session's commit() leaves this transaction open (no SAVEPOINT,
            # which pysqlite would turn into a commit of its own)
            session = self.sessions(bind=connection, join_transaction_mode="rollback_only")
            try:
                yield session
                session.flush()
            finally:
                session.close()

    @contextmanager
    def read(self) -> Iterator[Session]:
        """Read-only queries: the transaction ends with a rollback, never a commit."""
        session = self.sessions()
        try:
            yield session
        finally:
            session.rollback()
            session.close()

    def ping(self) -> None:
        with self.engine.connect() as connection:
            connection.execute(text("SELECT 1"))


def init_app(app: Flask) -> None:
    url = app.config["DATABASE_URL"] or _default_sqlite_url(app)
    app.config["DATABASE_URL"] = url
    app.extensions["chatsvc.db"] = Database(make_engine(url, app.config))
    app.teardown_appcontext(_close_session)


def make_engine(url: str, config: dict[str, Any]) -> Engine:
    if url.startswith("sqlite"):
        vectors = bool(config.get("EMBEDDINGS_BASE_URL"))
        engine = create_engine(
            url,
            connect_args={"timeout": config["SQLITE_BUSY_TIMEOUT_MS"] / 1000},
            hide_parameters=True,  # statement values (message text) never reach an error or log
            **({"module": _sqlite_with_extensions()} if vectors else {}),
        )
        event.listen(engine, "connect", _sqlite_pragmas(config["SQLITE_BUSY_TIMEOUT_MS"]))
        if vectors:
            event.listen(engine, "connect", _load_sqlite_vec)
        return engine
    return create_engine(
        url,
        pool_size=config["DB_POOL_SIZE"],
        max_overflow=config["DB_MAX_OVERFLOW"],
        pool_timeout=config["DB_POOL_TIMEOUT"],
        pool_pre_ping=True,
        hide_parameters=True,
        connect_args={"connect_timeout": config["DB_CONNECT_TIMEOUT"]},
    )


def _sqlite_pragmas(busy_timeout_ms: int):
    def on_connect(dbapi_connection: Any, _record: Any) -> None:
        cursor = dbapi_connection.cursor()
        for pragma in (
            "journal_mode=WAL",
            f"busy_timeout={int(busy_timeout_ms)}",
            "synchronous=NORMAL",
            "foreign_keys=ON",
        ):
            cursor.execute(f"PRAGMA {pragma}")
        cursor.close()

    return on_connect


def _sqlite_with_extensions() -> Any:
    """The DB-API module of SQLite when vectors are searched (EMBEDDINGS_BASE_URL set): one
    that can load sqlite-vec. The standard library's sqlite3 when this Python was built with
    extension loading; else pysqlite3 (`pysqlite3-binary`, Linux x86-64: the same module built
    with its own SQLite and extension loading). One SQLite library per process for a database
    file: two would each release the other's POSIX locks (sqlite.org, "How To Corrupt An SQLite
    Database File", 2.2.1), so the engine uses that module for all of its connections, and
    only when embeddings are configured."""
    import sqlite3

    if hasattr(sqlite3.Connection, "enable_load_extension"):
        return sqlite3
    try:
        from pysqlite3 import dbapi2
    except ImportError:
        raise ConfigError(
            "EMBEDDINGS_BASE_URL on SQLite needs a sqlite3 module that loads extensions: this "
            "Python's cannot, and pysqlite3-binary (Linux x86-64) is not installed"
        ) from None
    return dbapi2


def _load_sqlite_vec(dbapi_connection: Any, _record: Any) -> None:
    """sqlite-vec's functions (vec_distance_cosine, ...) on every connection of the engine."""
    import sqlite_vec

    dbapi_connection.enable_load_extension(True)
    try:
        sqlite_vec.load(dbapi_connection)
    finally:
        dbapi_connection.enable_load_extension(False)


def _default_sqlite_url(app: Flask) -> str:
    os.makedirs(app.instance_path, exist_ok=True)
    return "sqlite:///" + os.path.join(app.instance_path, "chatsvc.db")


def database(app: Flask | None = None) -> Database:
    return (app or current_app).extensions["chatsvc.db"]


def session() -> Session:
    """The request's session; it holds a connection only inside a unit of work."""
    if "db_session" not in g:
        g.db_session = database().sessions()
    return g.db_session


def _close_session(_exc: BaseException | None) -> None:
    db_session = g.pop("db_session", None)
    if db_session is not None:
        db_session.close()
