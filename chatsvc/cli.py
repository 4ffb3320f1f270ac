"""Flask commands: `sessions cleanup`, `token create`."""

from __future__ import annotations

from datetime import timedelta

import click
from flask import Flask, current_app
from flask.cli import AppGroup

from . import auth, db
from .services import conversations, idempotency

sessions_cli = AppGroup("sessions", help="Knowledge sessions.")
token_cli = AppGroup("token", help="Development tokens.")


@sessions_cli.command("cleanup")
def cleanup_sessions() -> None:
    """Delete sessions expired longer than SESSION_RETENTION_SECONDS; fail stuck turns; purge
    expired idempotency keys."""
    with db.database().sessions() as session:
        report = conversations.cleanup(session, current_app.config)
        keys = idempotency.purge_expired(session)
    click.echo(
        f"deleted {report.sessions_deleted} sessions and {report.conversations_deleted} "
        f"conversations; failed {report.turns_failed} stuck turns; purged {keys} expired "
        "idempotency keys"
    )


@token_cli.command("create")
@click.argument("user_id")
@click.option("--admin", is_flag=True, help="Add the claim role=admin.")
@click.option("--hours", default=24, show_default=True, help="Lifetime of the token.")
def create_token(user_id: str, admin: bool, hours: int) -> None:
    """Print a bearer token for USER_ID signed with JWT_SECRET."""
    config = current_app.config
    if not config["JWT_SECRET"]:
        raise click.ClickException("JWT_SECRET is not set")
    if not auth.USER_ID.match(user_id):
        raise click.ClickException("USER_ID may hold 1-128 of A-Z a-z 0-9 . _ @ : -")
    click.echo(
        auth.create_token(
            user_id, secret=config["JWT_SECRET"], admin=admin, ttl=timedelta(hours=hours),
            issuer=config["JWT_ISSUER"], audience=config["JWT_AUDIENCE"],
        )
    )  # fmt: skip


def init_app(app: Flask) -> None:
    app.cli.add_command(sessions_cli)
    app.cli.add_command(token_cli)
