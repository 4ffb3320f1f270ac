"""The knowledge base's documents: what the knowledge assistant answers from."""

from __future__ import annotations

from typing import Any

from flask import current_app, url_for

from .. import auth, db
from ..models import Document
from ..schemas import (
    DocumentCreateSchema,
    DocumentListArgsSchema,
    DocumentPageSchema,
    DocumentSchema,
)
from ..services import knowledge
from . import Blueprint, body_limit, cached, problems

bp = Blueprint("documents", __name__, url_prefix="/api/documents", description="Knowledge base.")


@bp.post("")
@body_limit("MAX_DOCUMENT_BYTES")
@bp.arguments(DocumentCreateSchema)
@bp.response(201, DocumentSchema)
@bp.alt_response(
    202,
    schema=DocumentSchema,
    description="A large document: stored, and being indexed in the background (status "
    "`indexing` until its passages are all searchable; `Location` is the document).",
)
@bp.alt_response(200, schema=DocumentSchema, description="The same text was already stored.")
@problems(bp, 400, 401, 403, 413, 415, 422, 429)
def create_document(body: dict[str, Any]) -> Any:
    """Add a document (split into passages and indexed); the same text again is not duplicated.
    A text larger than `INGEST_INLINE_BYTES` is indexed after the response (202)."""
    auth.require_admin()
    config = current_app.config
    lease_seconds = float(config["INGEST_LEASE_SECONDS"])
    args = (db.session(), body["title"], body["text"])
    given = {"url": body["url"], "meta": body["metadata"], "collection": body["collection"]}
    if len(body["text"].encode()) <= config["INGEST_INLINE_BYTES"]:
        document, created = knowledge.ingest(*args, **given)
        return document, 201 if created else 200
    document, created = knowledge.accept(*args, **given, lease_seconds=lease_seconds)
    if not created:
        _resume_indexing(document)
        return document, 200
    assert document.lease_until is not None
    knowledge.start_indexing(db.database(), document.id, document.lease_until, lease_seconds)
    location = url_for("documents.get_document", document_id=document.id, _external=False)
    return document, 202, {"Location": location}


@bp.get("")
@bp.arguments(DocumentListArgsSchema, location="query")
@cached(bp)
@bp.response(200, DocumentPageSchema)
@problems(bp, 401, 422, 429)
def list_documents(args: dict[str, Any]) -> dict[str, Any]:
    """The documents, newest first (of one collection, with `collection`)."""
    auth.require_reader()
    items, next_cursor = knowledge.list_documents(
        db.session(), args["limit"], args["cursor"], args["collection"]
    )
    return {"items": items, "next_cursor": next_cursor}


@bp.get("/<document_id>")
@cached(bp)
@bp.response(200, DocumentSchema)
@problems(bp, 401, 404, 422, 429)
def get_document(document_id: str) -> Document:
    """One document."""
    auth.require_reader()
    document = knowledge.get_document(db.session(), document_id)
    _resume_indexing(document)
    return document


def _resume_indexing(document: Document) -> None:
    """A document whose background indexing stopped with its worker (the lease ran out) is
    taken over by the request that finds it."""
    seconds = float(current_app.config["INGEST_LEASE_SECONDS"])
    lease = knowledge.take_over(db.session(), document, seconds)
    if lease is not None:
        knowledge.start_indexing(db.database(), document.id, lease, seconds)


@bp.delete("/<document_id>")
@bp.response(204)
@problems(bp, 401, 403, 404, 422, 429)
def delete_document(document_id: str) -> None:
    """Delete a document; its passages leave search at once."""
    auth.require_admin()
    knowledge.delete_document(db.session(), document_id)
