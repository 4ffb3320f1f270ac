"""The knowledge base: documents in, passages out. Retrieval runs in the database itself —
SQLite FTS5 (BM25) or PostgreSQL full-text search — behind `search()`, one backend per dialect,
so another backend (e.g. pgvector) can be added without touching callers."""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

from sqlalchemy import delete, func, insert, select, text
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from ..errors import NotFound
from ..models import Chunk, Document, Section
from ..text import STOPWORDS, TERM
from . import chunking, pages

MAX_K = 10
INSERT_BATCH = 500  # passages per INSERT statement
# What a search hit carries: a passage is at most chunking.CAPACITY[1] characters and a
# section path at most chunking.MAX_SECTION_CHARS; the caps hold whatever the stored rows say.
MAX_SNIPPET_CHARS = chunking.CAPACITY[1]
MAX_TERMS = 32
MAX_TERM_CHARS = 64


class DocumentNotFound(NotFound):
    detail = "The document does not exist."


@dataclass(frozen=True)
class Hit:
    """A passage that matched a query, with what a citation shows."""

    document_id: str
    title: str
    url: str | None
    chunk_id: str
    snippet: str
    score: float
    section: str = ""  # the headings the passage sits under

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


# Documents ------------------------------------------------------------------------------


def normalise(body: str) -> str:
    return "\n".join(line.rstrip() for line in body.replace("\r\n", "\n").split("\n")).strip()


def content_hash(body: str) -> str:
    return hashlib.sha256(normalise(body).encode()).hexdigest()


def ingest(
    session: Session,
    title: str,
    body: str,
    *,
    url: str | None = None,
    meta: dict[str, Any] | None = None,
) -> tuple[Document, bool]:
    """Store a document and its passages; the same text again returns the stored document.
    The flag says whether it is new."""
    digest = content_hash(body)
    existing = _by_hash(session, digest)
    if existing is not None:
        session.commit()
        return existing, False
    text = normalise(body)
    parts = chunking.split(title, text)
    document = Document(
        title=title, url=url, meta=meta or {}, content_hash=digest, text=text,
        chunk_count=sum(len(part.passages) for part in parts),
    )  # fmt: skip
    session.add(document)
    try:
        session.flush()
    except IntegrityError:  # the same text, stored concurrently by another request
        session.rollback()
        winner = _by_hash(session, digest)
        if winner is None:
            raise
        session.commit()
        return winner, False
    _store_passages(session, document.id, parts)
    session.commit()
    return document, True


def _store_passages(session: Session, document_id: str, parts: list[chunking.Section]) -> None:
    """Each section path once, each passage pointing at its section; inserted in batches
    (thousands of ORM objects took 6 s for a 2 MiB document, these statements well under 1 s),
    with a cooperative pause between batches (see chunking.pause)."""
    section_ids = session.scalars(
        insert(Section).returning(Section.id, sort_by_parameter_order=True),
        [{"document_id": document_id, "ordinal": n, "path": p.path} for n, p in enumerate(parts)],
    ).all()
    rows = [
        {"document_id": document_id, "section_id": section_id, "text": passage}
        for section_id, part in zip(section_ids, parts, strict=True)
        for passage in part.passages
    ]
    for start in range(0, len(rows), INSERT_BATCH):
        batch = rows[start : start + INSERT_BATCH]
        for n, row in enumerate(batch, start):
            row["ordinal"] = n
        session.execute(insert(Chunk.__table__), batch)  # Core: no ORM bookkeeping per row
        chunking.pause()


def _by_hash(session: Session, digest: str) -> Document | None:
    return session.scalars(select(Document).where(Document.content_hash == digest)).first()


def get_document(session: Session, document_id: str) -> Document:
    document = session.get(Document, document_id) if len(document_id) <= 36 else None
    if document is None:
        session.rollback()
        raise DocumentNotFound()
    session.commit()
    return document


def list_documents(
    session: Session, limit: int, cursor: str | None = None
) -> tuple[list[Document], str | None]:
    """Documents, newest first."""
    query = select(Document)
    return pages.newest_first(session, query, Document.created_at, Document.id, limit, cursor)


def count_documents(session: Session) -> int:
    total = session.scalar(select(func.count()).select_from(Document)) or 0
    session.commit()
    return total


def delete_document(session: Session, document_id: str) -> None:
    """Delete a document; its passages leave the index in the same transaction."""
    document = get_document(session, document_id)
    # Passages first: the SQLite index's trigger reads their section's path.
    session.execute(delete(Chunk).where(Chunk.document_id == document.id))
    session.execute(delete(Section).where(Section.document_id == document.id))
    session.execute(delete(Document).where(Document.id == document.id))
    session.commit()


# Search ---------------------------------------------------------------------------------


def terms(query: str) -> list[str]:
    """The words of a query that can be matched: letters and digits only, so that no input is
    ever read as full-text query syntax; stop words dropped, duplicates removed."""
    found: dict[str, None] = {}  # ordered, with constant-time membership
    for match in TERM.finditer(query.casefold()):
        word = match.group()
        if word not in STOPWORDS and len(word) <= MAX_TERM_CHARS:
            found[word] = None
            if len(found) == MAX_TERMS:
                break
    return list(found)


def search(session: Session, query: str, k: int = 5) -> list[Hit]:
    """The k passages that best match the query, best first; any passage matching any of its
    words may be returned, ranked by the database's own relevance."""
    words = terms(query)
    if not words or k < 1:
        return []
    backend = BACKENDS.get(session.get_bind().dialect.name)
    if backend is None:
        raise RuntimeError(f"no full-text backend for {session.get_bind().dialect.name}")
    rows = backend(session, words, min(k, MAX_K))
    session.commit()
    return [
        Hit(
            document_id=row.document_id, title=row.title,
            url=row.url or f"/api/documents/{row.document_id}#chunk-{row.ordinal}",
            chunk_id=f"{row.document_id}:{row.ordinal}",
            snippet=chunking.cap(row.text, MAX_SNIPPET_CHARS), score=round(float(row.score), 4),
            section=chunking.cap(row.heading, chunking.MAX_SECTION_CHARS),
        )
        for row in rows
    ]  # fmt: skip


def _sqlite(session: Session, words: list[str], k: int) -> list[Any]:
    # Every word quoted: FTS5 reads it as a string, never as an operator or a column filter.
    match = " OR ".join(f'"{word}"' for word in words)
    return list(
        session.execute(
            text(
                "SELECT c.document_id, c.ordinal, s.path AS heading, c.text, d.title, d.url,"
                " -bm25(chunks_fts, 2.0, 1.0) AS score"
                " FROM chunks_fts JOIN chunks c ON c.id = chunks_fts.rowid"
                " JOIN sections s ON s.id = c.section_id JOIN documents d ON d.id = c.document_id"
                " WHERE chunks_fts MATCH :match ORDER BY bm25(chunks_fts, 2.0, 1.0), c.id"
                " LIMIT :k"
            ),
            {"match": match, "k": k},
        )
    )


def _postgres(session: Session, words: list[str], k: int) -> list[Any]:
    # websearch_to_tsquery never raises on syntax; the words are plain letters and digits.
    return list(
        session.execute(
            text(
                "SELECT c.document_id, c.ordinal, s.path AS heading, c.text, d.title, d.url,"
                " ts_rank_cd(c.fts, q, 1) AS score"
                " FROM chunks c JOIN sections s ON s.id = c.section_id"
                " JOIN documents d ON d.id = c.document_id,"
                " websearch_to_tsquery('english', :query) q"
                " WHERE c.fts @@ q ORDER BY score DESC, c.id LIMIT :k"
            ),
            {"query": " or ".join(words), "k": k},
        )
    )


BACKENDS: dict[str, Callable[[Session, list[str], int], list[Any]]] = {
    "sqlite": _sqlite,
    "postgresql": _postgres,
}
