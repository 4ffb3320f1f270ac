"""Alembic environment: the app's own engine and metadata (see chatsvc.db)."""

import logging
from logging.config import fileConfig

from alembic import context
from flask import current_app

from chatsvc.db import include_name

config = context.config
if config.config_file_name is not None and not logging.getLogger("chatsvc").handlers:
    fileConfig(config.config_file_name, disable_existing_loggers=False)

database = current_app.extensions["migrate"].db
options = current_app.extensions["migrate"].configure_args


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
