"""Alembic environment: the app's own engine and metadata (see chatsvc.db)."""

import logging
from logging.config import fileConfig

from alembic import context
from flask import current_app

config = context.config
if config.config_file_name is not None and not logging.getLogger("chatsvc").handlers:
    fileConfig(config.config_file_name, disable_existing_loggers=False)

database = current_app.extensions["migrate"].db
options = current_app.extensions["migrate"].configure_args

# The full-text index is database-specific and lives only in the migrations: SQLite's FTS5
# table (and its shadow tables), PostgreSQL's generated tsvector column and its GIN index.
FULL_TEXT = ("chunks_fts", "ix_chunks_fts")


def include_name(name, type_, parent_names):
    if type_ == "column" and parent_names.get("table_name") == "chunks":
        return name != "fts"
    return not (name or "").startswith(FULL_TEXT)


def run_migrations_offline() -> None:
    context.configure(
        url=str(database.engine.url),
        target_metadata=database.metadata,
        literal_binds=True,
        include_name=include_name,
        **options,
    )
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_online() -> None:
    with database.engine.connect() as connection:
        context.configure(
            connection=connection,
            target_metadata=database.metadata,
            include_name=include_name,
            **options,
        )
        with context.begin_transaction():
            context.run_migrations()


if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()
