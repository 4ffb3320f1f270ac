"""The knowledge base's documents: what the knowledge assistant answers from."""

from __future__ import annotations

from typing import Any

from .. import auth, db
from ..models import Document
from ..schemas import DocumentCreateSchema, DocumentPageSchema, DocumentSchema, PageArgsSchema
from ..services import knowledge
from . import Blueprint, body_limit, cached, problems

bp = Blueprint("documents", __name__, url_prefix="/api/documents", description="Knowledge base.")


@bp.post("")
@body_limit("MAX_DOCUMENT_BYTES")
@bp.arguments(DocumentCreateSchema)
@bp.response(201, DocumentSchema)
@bp.alt_response(200, schema=DocumentSchema, description="The same text was already stored.")
@problems(bp, 400, 401, 403, 413, 415, 422, 429)
def create_document(body: dict[str, Any]) -> tuple[Document, int]:
    """Add a document (split into passages and indexed); the same text again is not duplicated."""
    auth.require_admin()
    document, created = knowledge.ingest(
        db.session(), body["title"], body["text"], url=body["url"], meta=body["metadata"]
    )
    return document, 201 if created else 200


@bp.get("")
@bp.arguments(PageArgsSchema, location="query")
@cached(bp)
@bp.response(200, DocumentPageSchema)
@problems(bp, 401, 422, 429)
def list_documents(args: dict[str, Any]) -> dict[str, Any]:
    """The documents, newest first."""
    auth.require_reader()
    items, next_cursor = knowledge.list_documents(db.session(), args["limit"], args["cursor"])
    return {"items": items, "next_cursor": next_cursor}


@bp.get("/<document_id>")
@cached(bp)
@bp.response(200, DocumentSchema)
@problems(bp, 401, 404, 422, 429)
def get_document(document_id: str) -> Document:
    """One document."""
    auth.require_reader()
    return knowledge.get_document(db.session(), document_id)


@bp.delete("/<document_id>")
@bp.response(204)
@problems(bp, 401, 403, 404, 422, 429)
def delete_document(document_id: str) -> None:
    """Delete a document; its passages leave search at once."""
    auth.require_admin()
    knowledge.delete_document(db.session(), document_id)
