"""Flask commands: `chat`, `sessions cleanup`, `token create`,
`kb ingest|list|delete|seed|embed`."""

from __future__ import annotations

import signal
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import timedelta
from pathlib import Path

import click
from flask import Flask, current_app
from flask.cli import AppGroup, with_appcontext

from . import auth, db
from .agent.base import TextDelta, ToolCallDone
from .agent.embeddings import EmbeddingsFailed
from .errors import ApiError
from .models import MessageStatus
from .services import conversations, embeddings, idempotency, knowledge
from .services.conversations import SESSION, USER, Access
from .services.turns import TurnEngine, TurnFailed, TurnHandle, TurnRequest, TurnResult

sessions_cli = AppGroup("sessions", help="Knowledge sessions.")
token_cli = AppGroup("token", help="Development tokens.")
kb_cli = AppGroup("kb", help="The knowledge base.")
KB_SUFFIXES = {".md", ".markdown", ".txt"}
# The project's documentation: beside the package in a checkout, else the working directory's.
PROJECT = Path(__file__).resolve().parent.parent
if not (PROJECT / "README.md").is_file():
    PROJECT = Path.cwd()


@sessions_cli.command("cleanup")
def cleanup_sessions() -> None:
    """Delete sessions expired longer than SESSION_RETENTION_SECONDS; fail stuck turns; purge
    expired idempotency keys."""
    with db.database().transaction() as session:
        report = conversations.cleanup(session, current_app.config)
        keys = idempotency.purge_expired(session)
    engine: TurnEngine = current_app.extensions["chatsvc.turns"]
    engine.interrupted(report.failed_turns)  # their event logs end with `error`
    events = engine.events.expire() if engine.events is not None else 0
    click.echo(
        f"deleted {report.sessions_deleted} sessions and {report.conversations_deleted} "
        f"conversations; failed {report.turns_failed} stuck turns; purged {keys} expired "
        f"idempotency keys; deleted {events} expired turn events"
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
        raise click.ClickException("USER_ID may hold 1-128 of A-Z a-z 0-9 . _ @ -")
    click.echo(
        auth.create_token(
            user_id, secret=config["JWT_SECRET"], admin=admin, ttl=timedelta(hours=hours),
            issuer=config["JWT_ISSUER"], audience=config["JWT_AUDIENCE"],
        )
    )  # fmt: skip


@kb_cli.command("ingest")
@click.argument("paths", nargs=-1, required=True, type=click.Path(exists=True, path_type=Path))
def ingest_documents(paths: tuple[Path, ...]) -> None:
    """Ingest Markdown and text files (folders recursively); stored texts are skipped."""
    _ingest(paths)


@kb_cli.command("seed")
def seed_documents() -> None:
    """Ingest the project's README.md and docs/ when the knowledge base is empty."""
    with db.database().sessions() as session:
        if knowledge.count_documents(session):
            click.echo("knowledge base not empty: nothing to seed")
            return
    _ingest(tuple(p for p in (PROJECT / "README.md", PROJECT / "docs") if p.exists()))


@kb_cli.command("embed")
def embed_passages() -> None:
    """Embed the passages without a vector of EMBEDDINGS_MODEL: those an endpoint outage left
    (searchable by text meanwhile), or all of them after a change of model."""
    database = db.database()
    index = embeddings.index_for(database)
    if index is None:
        why = (
            "EMBEDDINGS_BASE_URL is not set"
            if not current_app.config["EMBEDDINGS_BASE_URL"]
            else "this database searches by text only (PostgreSQL: no pgvector path)"
        )
        raise click.ClickException(f"nothing to embed: {why}")
    done = [0]

    def progress(count: int) -> None:
        done[0] = count
        click.echo(f"embedded {count} passages")

    with database.sessions() as session:
        try:
            index.fill(session, progress=progress)
        except EmbeddingsFailed as error:
            left = index.missing(session)
            raise click.ClickException(
                f"the embeddings endpoint failed ({error}) after {done[0]} passages; {left} "
                "left: run it again"
            ) from None
        left = index.missing(session)
    click.echo(
        f"done: {done[0]} passages embedded by {index.embedder.model} "
        f"({index.embedder.dimension} dimensions); {left} without a vector"
    )


@kb_cli.command("list")
def list_documents() -> None:
    """Print the documents: id, passages, title."""
    with db.database().sessions() as session:
        cursor = None
        while True:
            items, cursor = knowledge.list_documents(session, 100, cursor)
            for document in items:
                click.echo(f"{document.id}  {document.chunk_count:>4}  {document.title}")
            if cursor is None:
                break


@kb_cli.command("delete")
@click.argument("document_id")
def delete_document(document_id: str) -> None:
    """Delete a document and its passages."""
    with db.database().sessions() as session:
        try:
            knowledge.delete_document(session, document_id)
        except knowledge.DocumentNotFound:
            raise click.ClickException(f"no document {document_id}") from None
    click.echo(f"deleted {document_id}")


def _ingest(paths: tuple[Path, ...]) -> None:
    files = sorted(
        {f for p in paths for f in ([p] if p.is_file() else p.rglob("*"))
         if f.is_file() and f.suffix.lower() in KB_SUFFIXES}
    )  # fmt: skip
    with db.database().sessions() as session:
        for path in files:
            body = path.read_text(encoding="utf-8", errors="replace")
            if not body.strip():
                click.echo(f"skipped {path} (empty)")
                continue
            document, created = knowledge.ingest(
                session, _title(path, body), body, meta={"path": _shown(path)}
            )
            verb = "ingested" if created else "unchanged"
            click.echo(f"{verb} {path} -> {document.id} ({document.chunk_count} passages)")


def _title(path: Path, body: str) -> str:
    for line in body.splitlines():
        if line.startswith("# "):
            return line[2:].strip()[:200] or path.stem
    return path.stem.replace("-", " ").replace("_", " ")[:200]


def _shown(path: Path) -> str:
    try:
        return str(path.resolve().relative_to(PROJECT))
    except ValueError:
        return path.name


@click.command("chat")
@with_appcontext
@click.option("--user", help="Talk to the Todo assistant as USER (else: a knowledge session).")
@click.option("--session", "conversation_id", help="Continue this conversation or session.")
@click.option("--stream", is_flag=True, help="Print the answer as it is generated.")
def chat(user: str | None, conversation_id: str | None, stream: bool) -> None:
    """Chat in the terminal through the same turn service as the API; Ctrl-C cancels the
    answer being written (what was said is kept, `cancelled`); an empty line or EOF ends it."""
    if user is not None and not auth.USER_ID.match(user):
        raise click.ClickException("--user may hold 1-128 of A-Z a-z 0-9 . _ @ -")
    access = Access(user) if user else Access(None, kind=SESSION)
    while True:
        click.echo("you> ", nl=False)
        message = sys.stdin.readline().strip()
        if not message:
            return
        if len(message) > current_app.config["MAX_MESSAGE_CHARS"]:
            click.echo("error: the message is too long", err=True)
            continue
        conversation_id = _chat_turn(access, message, conversation_id, stream)


def _chat_turn(access: Access, message: str, conversation_id: str | None, stream: bool) -> str:
    """One turn through the turn engine, printed; the conversation's id to continue with."""
    engine: TurnEngine = current_app.extensions["chatsvc.turns"]
    kind = USER if access.user_id and access.kind is None else SESSION
    try:
        handle = engine.take(TurnRequest(access, kind, message, conversation_id))
    except ApiError as error:
        raise click.ClickException(error.detail) from error
    if conversation_id is None:
        click.echo(f"(conversation {handle.started.conversation_id})")
    click.echo("assistant> ", nl=False)
    with _ctrl_c_cancels(handle):
        for event in handle.events(wait=3600):
            if isinstance(event, TextDelta) and stream:
                click.echo(event.text, nl=False)
            elif isinstance(event, ToolCallDone):
                click.echo(f"[{event.call.tool} {event.call.result}] ", nl=False)
            elif isinstance(event, TurnResult):
                click.echo("" if stream else event.text, nl=False)
                click.echo(" (cancelled)" if event.status == MessageStatus.CANCELLED else "")
            elif isinstance(event, TurnFailed):
                click.echo(f"\nerror: {event.error.code}: {event.error.detail}", err=True)
    return handle.started.conversation_id


@contextmanager
def _ctrl_c_cancels(handle: TurnHandle) -> Iterator[None]:
    """While a turn runs, Ctrl-C (SIGINT) cancels it as `POST …/cancel` would, instead of
    ending the chat; at the prompt it ends the chat as usual."""
    if threading.current_thread() is not threading.main_thread():
        yield  # signal handlers belong to the main thread
        return
    previous = signal.signal(signal.SIGINT, lambda _signum, _frame: handle.cancel())
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


def init_app(app: Flask) -> None:
    app.cli.add_command(chat)
    app.cli.add_command(sessions_cli)
    app.cli.add_command(token_cli)
    app.cli.add_command(kb_cli)
