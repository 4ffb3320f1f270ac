"""The knowledge base: documents in, passages out. Retrieval runs in the database itself —
SQLite FTS5 (BM25) or PostgreSQL full-text search — behind `search()`, one backend per dialect,
so another backend (e.g. pgvector) can be added without touching callers."""

from __future__ import annotations

import hashlib
import logging
import math
import re
import threading
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass, field
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from sqlalchemy import JSON, Connection, bindparam, delete, func, insert, select, text, update
from sqlalchemy.dialects import sqlite
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from ..db import UTCDateTime, utcnow
from ..errors import NotFound, database_unavailable
from ..models import Chunk, Document, Section, new_id
from ..text import LETTERS_OR_DIGITS, STOPWORDS, TERM
from . import chunking, embeddings, pages

if TYPE_CHECKING:
    from ..db import Database

log = logging.getLogger(__name__)

MAX_K = 10
INSERT_BATCH = 500  # passages per INSERT statement
# ... and per transaction of a background indexing. On SQLite the worker runs nothing else
# while a batch is stored (the index triggers: about 1 ms per passage on a busy 2-core machine),
# so a chat turn may wait for one batch: with 500, turns' p95 was 436 ms during a 2 MiB ingest
# (60 ms alone), with 50 it is 136 ms. PostgreSQL's driver yields while the server works, and
# its statement triggers run once per batch: it keeps 500 (bench/ingest_chat.py).
BACKGROUND_BATCH = {"sqlite": 50}
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


@dataclass(frozen=True)
class Scope:
    """What a search may return: passages of documents in one of `collections` (all when
    empty) whose metadata holds each (key, value) of `metadata` (string values, compared
    exactly; a number or another type never equals a string). Keys and values are bound
    parameters, never spliced into SQL or a JSON path."""

    collections: tuple[str, ...] = ()
    metadata: tuple[tuple[str, str], ...] = ()

    def __bool__(self) -> bool:
        return bool(self.collections or self.metadata)

    @property
    def empty(self) -> bool:
        """Nothing can be in it: a NUL in a metadata key or value (PostgreSQL's text cannot
        hold one, so no stored document is compared with it; SQLite agrees)."""
        return any("\x00" in key or "\x00" in value for key, value in self.metadata)


EVERYWHERE = Scope()  # every document
DEFAULT_COLLECTION = "default"


# Documents ------------------------------------------------------------------------------


def normalise(body: str) -> str:
    return "\n".join(line.rstrip() for line in body.replace("\r\n", "\n").split("\n")).strip()


def content_hash(body: str, *, normalised: bool = False) -> str:
    """sha256 of the normalised text (`normalised`: `body` already is)."""
    return hashlib.sha256((body if normalised else normalise(body)).encode()).hexdigest()


READY, INDEXING, FAILED = "ready", "indexing", "failed"


def ingest(
    session: Session,
    title: str,
    body: str,
    *,
    url: str | None = None,
    meta: dict[str, Any] | None = None,
    collection: str = DEFAULT_COLLECTION,
) -> tuple[Document, bool]:
    """Store a document and its passages in one transaction; the same text again returns the
    stored document. The flag says whether it is new. Splitting (which pauses for other
    requests) comes before the transaction, and nothing pauses inside it: SQLite has one
    writer, and a request of the same worker waiting for its lock blocks the whole worker, so
    the writer could never finish (a chat turn during a large inline ingest: 10 s, then 503).

    The text is split before anything is looked up: the unique hash decides whether it is new
    (`_store_new`), for a text stored long ago as for one another request stores at the same
    moment. Splitting a small document costs less than the look-up's round trip did (issue 21:
    a request per man page of 14 passages spent more on its statements than on its text)."""
    text = normalise(body)
    digest = content_hash(text, normalised=True)
    parts = chunking.split(title, text)
    return _ingest_split(session, _document_row(title, url, meta, collection, digest, parts), parts)


def _ingest_split(
    session: Session, row: dict[str, Any], parts: list[chunking.Section]
) -> tuple[Document, bool]:
    """`ingest` of a text already split: the new document (`row`) with its passages, or the
    document stored with the same text."""
    session.rollback()  # a transaction of its own, whatever the caller's session held
    # PostgreSQL's one statement is a transaction by itself (autocommit: no BEGIN and no
    # COMMIT, two round trips fewer); SQLite's three statements make one.
    options = _ONE_STATEMENT if _dialect(session) == "postgresql" else None
    for _ in range(3):  # the stored text deleted between its INSERT and its look-up: again
        if _store_new(session.connection(execution_options=options), row, parts):
            session.commit()
            # hybrid retrieval: the passages' vectors, after the commit (embeddings.py)
            embeddings.stored(session, row["id"])
            return _transient(row), True
        existing = _by_hash(session, row["content_hash"])
        if existing is not None:
            session.commit()
            return existing, False
        session.rollback()
    raise RuntimeError("a document's text was stored and deleted three times while ingested")


def _document_row(
    title: str,
    url: str | None,
    meta: dict[str, Any] | None,
    collection: str,
    digest: str,
    parts: list[chunking.Section],
) -> dict[str, Any]:
    """A new, indexed (`ready`) document's row, by column: its text lives in its passages."""
    return {
        "id": new_id(), "title": title, "url": url, "metadata": meta or {},
        "collection": collection, "content_hash": digest, "text": "",
        "chunk_count": sum(len(part.passages) for part in parts), "created_at": utcnow(),
        "status": READY, "lease_until": None,
    }  # fmt: skip


def _transient(row: dict[str, Any]) -> Document:
    """The stored row as a Document (for the response), without a look-up or a session."""
    values = {("meta" if key == "metadata" else key): value for key, value in row.items()}
    return Document(**values)


def _store_new(connection: Connection, row: dict[str, Any], parts: list[chunking.Section]) -> bool:
    """The document's row, its sections and its passages, unless a document with the same text
    is stored (or being stored by another transaction, which this one then waits for): the
    unique hash decides (ON CONFLICT DO NOTHING), so a text is never stored twice and nothing
    fails. Whether it stored them. One statement on PostgreSQL (a transaction per man page of
    14 passages: ten statements and an ORM flush were most of its cost); on SQLite, whose
    statements cost no round trip, three Core statements."""
    if connection.dialect.name == "postgresql":
        sections = [n for n, part in enumerate(parts) for _ in part.passages]
        params = {
            **row,
            "paths": [part.path for part in parts],
            "passage_sections": sections,
            "passage_texts": [passage for part in parts for passage in part.passages],
        }
        return connection.execute(_PG_INGEST, params).first() is not None
    stored = connection.execute(_SQLITE_NEW_DOCUMENT, row).first()
    if stored is None:
        return False
    section_ids = _insert_section_rows(connection, [(row["id"], part) for part in parts])
    for batch in _batches(row["id"], parts, section_ids):
        _insert_passages(connection, batch)
    return True


@dataclass(frozen=True)
class Incoming:
    """A document to ingest with `ingest_many`."""

    title: str
    body: str
    url: str | None = None
    meta: dict[str, Any] | None = None
    collection: str = DEFAULT_COLLECTION


@dataclass(frozen=True)
class Ingested:
    """What `ingest_many` did with one document: stored it (`created`), or found its text
    already stored (the stored document's id and passages)."""

    id: str
    chunk_count: int
    created: bool


LOOKUP_WINDOW = 100  # documents whose hashes are looked up in one statement (ingest_many)
# Passages stored per transaction by ingest_many (at least; a document is never split over
# two). A writer holds SQLite's one write lock that long: about 0.1 s for 500 passages.
INGEST_TRANSACTION_PASSAGES = INSERT_BATCH


def ingest_many(
    session: Session, documents: Iterable[Incoming], passages_per_transaction: int | None = None
) -> Iterator[Ingested]:
    """Ingest many documents (the CLI, bulk loads), as `ingest` would one by one, but with
    many documents per transaction (about `passages_per_transaction` passages each) and a
    statement per table per transaction: one transaction per document was most of the time
    of small documents (a commit, an fsync on PostgreSQL, and ten round trips each). Yields,
    in order, what was done with each document. Texts already stored are looked up a window
    at a time before splitting, so they are never split; no transaction is open while
    splitting. A transaction that meets a text stored meanwhile by another writer is rolled
    back and its documents are ingested one by one."""
    limit = passages_per_transaction or INGEST_TRANSACTION_PASSAGES
    window: list[Incoming] = []
    for incoming in documents:
        window.append(incoming)
        if len(window) == LOOKUP_WINDOW:
            yield from _ingest_window(session, window, limit)
            window = []
    if window:
        yield from _ingest_window(session, window, limit)


@dataclass
class _Pending:
    incoming: Incoming
    text: str
    digest: str
    parts: list[chunking.Section] = field(default_factory=list)
    count: int = 0
    done: Ingested | None = None


def _ingest_window(session: Session, window: list[Incoming], limit: int) -> Iterator[Ingested]:
    pending = []
    for incoming in window:
        text = normalise(incoming.body)
        pending.append(_Pending(incoming, text, content_hash(text, normalised=True)))
    stored = {
        row.content_hash: Ingested(row.id, row.chunk_count, False)
        for row in session.execute(
            select(Document.id, Document.chunk_count, Document.content_hash).where(
                Document.content_hash.in_({p.digest for p in pending})
            )
        )
    }
    session.rollback()  # no snapshot held across the split
    first: dict[str, _Pending] = {}  # the text's first occurrence in the window
    group: list[_Pending] = []
    size = 0
    for item in pending:
        if item.digest in stored:
            item.done = stored[item.digest]
            continue
        if item.digest in first:  # the same text twice: stored once, with the first
            continue
        first[item.digest] = item
        item.parts = chunking.split(item.incoming.title, item.text)
        item.count = sum(len(part.passages) for part in item.parts)
        group.append(item)
        size += item.count
        if size >= limit:
            _store_group(session, group)
            group, size = [], 0
    if group:
        _store_group(session, group)
    for item in pending:
        if item.done is None:  # a repeat of a text of this window
            original = first[item.digest].done
            assert original is not None
            item.done = Ingested(original.id, original.chunk_count, False)
        yield item.done


def _store_group(session: Session, group: list[_Pending]) -> None:
    """The group's documents and passages in one transaction; one by one when another writer
    stored one of their texts meanwhile."""
    try:
        rows = [_row(item) for item in group]
        session.execute(insert(Document.__table__), rows)
        sections = [
            (row["id"], part) for row, item in zip(rows, group, strict=True) for part in item.parts
        ]
        section_ids = _insert_section_rows(session, sections)
        passages = [
            {"document_id": document_id, "section_id": section_id, "text": passage}
            for section_id, (document_id, part) in zip(section_ids, sections, strict=True)
            for passage in part.passages
        ]
        ordinal: dict[str, int] = {}
        for row in passages:
            row["ordinal"] = ordinal[row["document_id"]] = ordinal.get(row["document_id"], -1) + 1
        for start in range(0, len(passages), INSERT_BATCH):
            _insert_passages(session, passages[start : start + INSERT_BATCH])
        session.commit()
    except IntegrityError:  # a text of the group stored concurrently by another writer
        session.rollback()
        for item in group:
            document, created = _ingest_split(session, _row(item), item.parts)
            item.done = Ingested(document.id, document.chunk_count, created)
        return
    for row, item in zip(rows, group, strict=True):
        item.done = Ingested(row["id"], item.count, True)
        embeddings.stored(session, row["id"])  # hybrid retrieval (as `ingest` does)


def _row(item: _Pending) -> dict[str, Any]:
    incoming = item.incoming
    return _document_row(
        incoming.title, incoming.url, incoming.meta, incoming.collection, item.digest, item.parts
    )


def accept(
    session: Session,
    title: str,
    body: str,
    *,
    url: str | None = None,
    meta: dict[str, Any] | None = None,
    collection: str = DEFAULT_COLLECTION,
    lease_seconds: float,
) -> tuple[Document, bool]:
    """Store a document to be indexed in the background (`index`): status `indexing`, leased
    to the caller for `lease_seconds`. The same text again returns the stored document, in
    whatever state it is. The flag says whether it is new."""
    text = normalise(body)
    document, created = _store_indexing(
        session, title, text, url, meta, collection, _lease(lease_seconds)
    )
    session.commit()
    return document, created


def _store_indexing(
    session: Session,
    title: str,
    text: str,
    url: str | None,
    meta: dict[str, Any] | None,
    collection: str,
    lease_until: datetime,
) -> tuple[Document, bool]:
    """The new document's row, to be indexed in the background (its text is kept until its
    passages hold it), or the one stored with the same text."""
    digest = content_hash(text, normalised=True)
    existing = _by_hash(session, digest)
    if existing is not None:
        return existing, False
    document = Document(
        title=title, url=url, meta=meta or {}, collection=collection, content_hash=digest,
        text=text, chunk_count=0, status=INDEXING, lease_until=lease_until,
    )  # fmt: skip
    session.add(document)
    try:
        session.flush()
    except IntegrityError:  # the same text, stored concurrently by another request
        session.rollback()
        winner = _by_hash(session, digest)
        if winner is None:
            raise
        return winner, False
    return document, True


# Background indexing ----------------------------------------------------------------------
#
# A large document is split and stored by a job in the worker that accepted it, so that the
# POST returns at once and the worker's other requests keep their latency. The job commits
# every batch of passages (SQLite has one writer: a 2 MiB document's rows in one transaction
# kept every chat turn's writes waiting about a second) and renews its lease with each one.
# The lease is also the job's fencing token: each renewal is a compare-and-set on the value
# the job last wrote, so a job whose document was taken over (its lease ran out: the worker
# died, or stalled that long) or deleted stops at its next batch and writes nothing more.
# Passages are searchable as they land; the document says `indexing` until the last one has.


class _Lost(Exception):
    """The document was deleted, or another worker took its indexing over."""


def index(database: Database, document_id: str, lease: datetime, lease_seconds: float) -> None:
    """Split and store the passages of a document accepted with `accept` (or taken over with
    `take_over`), holding `lease`; the document ends `ready` (or `failed` when splitting
    raised). Returns quietly when the document is deleted or taken over meanwhile; a database
    that goes away leaves it `indexing` for the next worker to take over once the lease ends."""
    try:
        with database.read() as session:
            found = session.execute(
                select(Document.title, Document.text).where(
                    Document.id == document_id, Document.lease_until == lease
                )
            ).first()
        if found is None:
            return
        try:
            parts = chunking.split(found.title, found.text)
        except Exception as error:  # a bug in splitting: say so rather than retry forever
            log.error("indexing document %s failed: %s", document_id, type(error).__name__)
            with database.transaction() as session:
                _renew(session, document_id, lease, None, status=FAILED)
            return
        lease = _index(database, document_id, parts, lease, lease_seconds)
        with database.transaction() as session:
            count = sum(len(part.passages) for part in parts)
            # The text is kept while it may have to be indexed again (a dead worker's job is
            # taken over from it); once indexed, it lives in its passages only.
            _renew(session, document_id, lease, None, status=READY, chunk_count=count, text="")
        with database.sessions() as session:  # hybrid retrieval: the passages' vectors
            embeddings.stored(session, document_id)
    except (_Lost, IntegrityError):  # deleted (its passages' foreign key) or taken over
        log.info("indexing document %s stopped: deleted or taken over", document_id)
    except Exception as error:
        if database_unavailable(error) is None:
            raise
        log.error("indexing document %s waits for the database: %s", document_id,
                  type(error).__name__)  # fmt: skip


def _index(
    database: Database,
    document_id: str,
    parts: list[chunking.Section],
    lease: datetime,
    lease_seconds: float,
) -> datetime:
    """Store the passages batch by batch, each batch with a renewal of the lease; the lease
    held at the end."""
    with database.transaction() as session:
        lease = _renew(session, document_id, lease, _lease(lease_seconds))
        # What an earlier attempt stored before its worker died (passages first: SQLite's
        # index trigger reads their section's path).
        session.execute(delete(Chunk).where(Chunk.document_id == document_id))
        session.execute(delete(Section).where(Section.document_id == document_id))
        section_ids = _insert_sections(session, document_id, parts)
    size = BACKGROUND_BATCH.get(database.engine.dialect.name, INSERT_BATCH)
    for batch in _batches(document_id, parts, section_ids, size):
        chunking.pause()
        with database.transaction() as session:
            lease = _renew(session, document_id, lease, _lease(lease_seconds))
            _insert_passages(session, batch)
    return lease


def _renew(
    session: Session, document_id: str, held: datetime, new: datetime | None, **values: Any
) -> datetime:
    """Compare-and-set of the lease: `new` (with `values`) when the document is still indexing
    under `held`, else _Lost."""
    done = session.execute(
        update(Document)
        .where(
            Document.id == document_id,
            Document.status == INDEXING,
            Document.lease_until == held,
        )
        .values(lease_until=new, **values)
    )
    if done.rowcount != 1:
        raise _Lost()
    return new or held


def take_over(session: Session, document: Document, lease_seconds: float) -> datetime | None:
    """The lease of a document whose indexing stopped (its lease ran out), now held by the
    caller, who must run `index`; None when it is not such a document or another caller won."""
    now = utcnow()
    if document.status != INDEXING or document.lease_until is None or document.lease_until > now:
        return None
    lease = _lease(lease_seconds)
    done = session.execute(
        update(Document)
        .where(
            Document.id == document.id,
            Document.status == INDEXING,
            Document.lease_until == document.lease_until,
        )
        .values(lease_until=lease)
    )
    session.commit()
    if done.rowcount != 1:
        return None
    document.lease_until = lease
    return lease


def start_indexing(
    database: Database, document_id: str, lease: datetime, lease_seconds: float
) -> None:
    """Run `index` in a thread of its own (a greenlet under gunicorn's gevent worker)."""
    threading.Thread(
        target=index, args=(database, document_id, lease, lease_seconds),
        daemon=True, name=f"index-{document_id}",
    ).start()  # fmt: skip


def _lease(seconds: float) -> datetime:
    return utcnow() + timedelta(seconds=seconds)


def _insert_sections(
    session: Session, document_id: str, parts: list[chunking.Section]
) -> list[int]:
    return _insert_section_rows(session, [(document_id, part) for part in parts])


def _insert_section_rows(
    session: Session | Connection, sections: list[tuple[str, chunking.Section]]
) -> list[int]:
    """Each (document, section) a row, numbered in order within its document; their ids (Core:
    no ORM bookkeeping per row)."""
    rows, ordinal = [], {}
    for document_id, part in sections:
        ordinal[document_id] = ordinal.get(document_id, -1) + 1
        rows.append(
            {"document_id": document_id, "ordinal": ordinal[document_id], "path": part.path}
        )
    table = Section.__table__
    returning = insert(table).returning(table.c.id, sort_by_parameter_order=True)
    return list(session.execute(returning, rows).scalars().all())


def _batches(
    document_id: str,
    parts: list[chunking.Section],
    section_ids: list[int],
    size: int = INSERT_BATCH,
) -> Iterator[list[dict[str, Any]]]:
    """The passages' rows, numbered in document order, `size` at a time."""
    rows = [
        {"document_id": document_id, "section_id": section_id, "text": passage}
        for section_id, part in zip(section_ids, parts, strict=True)
        for passage in part.passages
    ]
    for start in range(0, len(rows), size):
        batch = rows[start : start + size]
        for n, row in enumerate(batch, start):
            row["ordinal"] = n
        yield batch


# A text's words as PostgreSQL indexes them: "SHA-256" also as "SHA256 SHA 256" (migration
# a9c3e5f7b1d2), rewritten only when the text holds such a pair (f2a4c6e8b0d1; the trigger
# chunks_fts_fill says the same for any other writer).
_PG_WORDS = (
    "CASE WHEN {0} ~ '[[:alpha:]]-[[:digit:]]'"
    " THEN regexp_replace({0}, '([[:alpha:]]+)-([[:digit:]]+)', '\\1\\2 \\1 \\2', 'g')"
    " ELSE {0} END"
)
_PG_INSERT_PASSAGES = (
    "WITH heading AS MATERIALIZED (SELECT id, setweight(to_tsvector('english'::regconfig, "
    + _PG_WORDS.format("path")
    + "), 'A') AS fts FROM sections WHERE id = ANY(CAST(:sections AS integer[])))"
    " INSERT INTO chunks (document_id, section_id, ordinal, text, fts)"
    " SELECT r.document_id, r.section_id, r.ordinal, r.text, heading.fts"
    " || setweight(to_tsvector('english'::regconfig, "
    + _PG_WORDS.format("r.text")
    + "), 'B') FROM unnest(CAST(:document_id AS varchar[]), CAST(:section_id AS integer[]),"
    " CAST(:ordinal AS integer[]), CAST(:text AS text[])) WITH ORDINALITY"
    " AS r(document_id, section_id, ordinal, text, n)"
    " JOIN heading ON heading.id = r.section_id ORDER BY r.n"
)


def _insert_passages(session: Session | Connection, batch: list[dict[str, Any]]) -> None:
    """One statement per batch. On PostgreSQL an executemany is one INSERT per row (psycopg),
    and the index's statement triggers then ran once per passage (a crafted 2 MiB document:
    24 s instead of 3); four arrays unnested make one statement of a constant shape, which
    SQLAlchemy need not compile per batch as it would a VALUES list of 500 rows. It computes
    the passages' vectors too, each section's once (the row trigger computed its heading's for
    every passage, in PL/pgSQL: 0.2 ms a passage, most of an ingest's time on the server)."""
    if _dialect(session) != "postgresql":
        session.execute(insert(Chunk.__table__), batch)  # Core: no ORM bookkeeping per row
        return
    columns = ("document_id", "section_id", "ordinal", "text")
    params: dict[str, Any] = {column: [row[column] for row in batch] for column in columns}
    params["sections"] = sorted(set(params["section_id"]))
    session.execute(text(_PG_INSERT_PASSAGES), params)


# A new document, its sections and its passages in one statement (`_store_new`): nothing when
# its text is stored, and then neither are the sections nor the passages, which hang off the
# document's RETURNING. Each section's heading vector is computed once, by the INSERT that
# stores it; the passages' are as `_insert_passages` computes them. The foreign keys are
# checked at the end of the statement, when every row is in.
_PG_INGEST = text(
    "WITH document AS (INSERT INTO documents (id, title, url, metadata, collection,"
    " content_hash, text, chunk_count, created_at, status, lease_until)"
    " VALUES (:id, :title, :url, CAST(:metadata AS json), :collection, :content_hash, :text,"
    " :chunk_count, :created_at, :status, :lease_until)"
    " ON CONFLICT (content_hash) DO NOTHING RETURNING id),"
    " section AS (INSERT INTO sections (document_id, ordinal, path)"
    " SELECT document.id, s.n - 1, s.path FROM document,"
    " unnest(CAST(:paths AS text[])) WITH ORDINALITY AS s(path, n) ORDER BY s.n"
    " RETURNING id, ordinal, setweight(to_tsvector('english'::regconfig, "
    + _PG_WORDS.format("path")
    + "), 'A') AS fts),"
    " passage AS (INSERT INTO chunks (document_id, section_id, ordinal, text, fts)"
    " SELECT document.id, section.id, p.n - 1, p.text, section.fts"
    " || setweight(to_tsvector('english'::regconfig, "
    + _PG_WORDS.format("p.text")
    + "), 'B') FROM document, unnest(CAST(:passage_sections AS integer[]),"
    " CAST(:passage_texts AS text[])) WITH ORDINALITY AS p(section, text, n)"
    " JOIN section ON section.ordinal = p.section ORDER BY p.n)"
    " SELECT id FROM document"
).bindparams(
    bindparam("metadata", type_=JSON()),
    bindparam("created_at", type_=UTCDateTime()),
    bindparam("lease_until", type_=UTCDateTime()),
)
_ONE_STATEMENT = {"isolation_level": "AUTOCOMMIT"}  # reset when the connection is returned
_SQLITE_NEW_DOCUMENT = (
    sqlite.insert(Document.__table__)
    .on_conflict_do_nothing(index_elements=["content_hash"])
    .returning(Document.__table__.c.id)
)


def _dialect(session: Session | Connection) -> str:
    bind = session if isinstance(session, Connection) else session.get_bind()
    return bind.dialect.name


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
    session: Session, limit: int, cursor: str | None = None, collection: str | None = None
) -> tuple[list[Document], str | None]:
    """Documents, newest first (of one collection, when given)."""
    query = select(Document)
    if collection is not None:
        query = query.where(Document.collection == collection)
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
#
# Latency must not grow with the corpus (issue 21: OR-ing every word matched 17 % of 100k
# passages, and both backends ranked every match: 94 ms SQLite, 540 ms PostgreSQL). So a search
# first asks how many passages hold each word (bounded counts), then ranks two bounded sets:
# the passages holding every known word, and those holding one of the rarest words (as many
# rare words as fit a budget of passages). Common words are left to the first set; they weigh
# little in a ranking with inverse document frequency anyway.

CANDIDATES = 2000  # passages one ranking may score: about 5 ms on either backend
RANKED_TERMS = 8  # the rarest words a ranking weighs
# ts_rank's weights of the labels D, C, B (a passage's text) and A (its headings)
WEIGHTS = "'{0.1, 0.2, 0.4, 1.0}'"
SPREAD = 3  # passages ranked per passage returned, to return several documents' (_spread)
SHORTLIST = 100  # passages PostgreSQL ranks with ts_rank (see PostgresSearch.rank)


@dataclass(frozen=True)
class Term:
    """A word of a query. One that mixes letters and digits ("sha256", or "SHA-256" written
    with a hyphen) also matches its parts side by side ("sha 256"), since documents write it
    either way and the index splits the hyphenated form."""

    word: str
    parts: tuple[str, ...] = ()


def terms(query: str) -> list[Term]:
    """The words of a query that can be matched: letters and digits only, so that no input is
    ever read as full-text query syntax; stop words dropped, duplicates removed."""
    found: dict[str, Term] = {}  # ordered, with constant-time membership
    for word in _words(query.casefold()):
        if word not in STOPWORDS and len(word) <= MAX_TERM_CHARS and word not in found:
            parts = tuple(LETTERS_OR_DIGITS.findall(word))
            found[word] = Term(word, parts if len(parts) > 1 else ())
            if len(found) == MAX_TERMS:
                break
    return list(found.values())


def _words(text: str) -> Iterator[str]:
    """TERM's matches, with a letters-hyphen-digits pair ("sha-256", "utf-8") made one word."""
    held: re.Match[str] | None = None
    for match in TERM.finditer(text):
        if held is not None:
            if match.start() == held.end() + 1 and text[held.end()] == "-" and _mixed(held, match):
                yield held.group() + match.group()
                held = None
                continue
            yield held.group()
        held = match
    if held is not None:
        yield held.group()


def _mixed(left: re.Match[str], right: re.Match[str]) -> bool:
    """Letters then digits ("sha-256"); "e-mail" or "2024-11" stay two words."""
    return left.group().isalpha() and right.group().isdigit()


@dataclass(frozen=True)
class Plan:
    """What a search ranks: every known word together, then the rarest ones alone."""

    every: list[Term]  # all words some passage holds, rarest first
    rare: list[Term]  # the rarest words whose passages fit CANDIDATES
    weights: dict[str, float]  # inverse document frequency of each ranked word
    idf: dict[str, float]  # of every word of the query; 0 for a word no passage holds
    common: bool = False  # even the rarest word is in more than CANDIDATES passages


def plan(words: list[Term], frequencies: list[int], total: int) -> Plan | None:
    """The plan for words held by `frequencies` passages each, of `total`; None when no
    passage holds any of them."""
    known = sorted(
        ((df, n, term) for n, (term, df) in enumerate(zip(words, frequencies, strict=True)) if df),
        key=lambda entry: entry[:2],
    )
    if not known:
        return None
    rare, budget = [], CANDIDATES
    for df, _, term in known:
        if rare and df > budget:
            break
        rare.append(term)
        budget -= df
    total = max(total, known[-1][0])
    idf = {  # a word no passage holds says nothing (it may be another backend's stop word)
        term.word: math.log(1 + (total - df + 0.5) / (df + 0.5)) if df else 0.0
        for term, df in zip(words, frequencies, strict=True)
    }
    weights = {term.word: idf[term.word] for _, _, term in known[:RANKED_TERMS]}
    common = known[0][0] > CANDIDATES
    return Plan([term for _, _, term in known], rare, weights, idf, common)


@dataclass(frozen=True)
class Found:
    """What a search found, and how much each word of the query says: its inverse document
    frequency (0 for a word no passage holds), for a reader to judge whether a passage answers
    at all (agent/answers.py)."""

    hits: list[Hit]
    weights: dict[str, float]


def search(session: Session, query: str, k: int = 5, scope: Scope = EVERYWHERE) -> list[Hit]:
    """The k passages that best match the query, best first (see `find`)."""
    return find(session, query, k, scope).hits


def find(session: Session, query: str, k: int = 5, scope: Scope = EVERYWHERE) -> Found:
    """The k passages that best match the query, best first: those holding every word the
    index knows, then those holding its rarest words, each ranked by relevance with inverse
    document frequency and heading matches weighted up; at most one per document while other
    documents match."""
    words = terms(query)
    if not words or k < 1 or scope.empty:
        return Found([], {})
    backend = BACKENDS.get(session.get_bind().dialect.name)
    if backend is None:
        raise RuntimeError(f"no full-text backend for {session.get_bind().dialect.name}")
    k = min(k, MAX_K)
    wanted = k * SPREAD
    # Hybrid retrieval (services/embeddings.py; [] when no embeddings endpoint is configured):
    # the passages nearest the query by meaning, asked before any statement of this search,
    # so that no transaction is open while the endpoint answers.
    nearest = embeddings.nearest(session, query, wanted, _condition(scope, backend))
    found = backend.plan(session, words)
    if found is None and not nearest:  # no passage holds any of the words
        session.commit()
        return Found([], {})
    ranked: dict[int, float] = {}
    tiers = ([found.every, found.rare] if len(found.every) > 1 else [found.rare]) if found else []
    for tier, required in zip(tiers, (True, False)[2 - len(tiers) :], strict=True):
        for chunk_id, score in backend.rank(session, found, tier, required, wanted, scope):
            ranked.setdefault(chunk_id, score)
        if len(ranked) >= wanted:
            break
    ranked = embeddings.fuse(ranked, nearest)  # reciprocal rank fusion, when any are near
    rows = {row.id: row for row in _rows(session, list(ranked))}
    session.commit()
    best = _spread([(rows[i], score) for i, score in ranked.items() if i in rows], k)
    hits = [
        Hit(
            document_id=row.document_id, title=row.title,
            url=row.url or f"/api/documents/{row.document_id}#chunk-{row.ordinal}",
            chunk_id=f"{row.document_id}:{row.ordinal}",
            snippet=chunking.cap(row.text, MAX_SNIPPET_CHARS), score=round(score, 4),
            section=chunking.cap(row.heading, chunking.MAX_SECTION_CHARS),
        )
        for row, score in best
    ]  # fmt: skip
    idf = found.idf if found is not None else {term.word: 0.0 for term in words}
    return Found(hits, {word: round(weight, 6) for word, weight in idf.items()})


def _condition(scope: Scope, backend: Any) -> embeddings.Condition | None:
    """The scope as a condition on the document `d` of a vector search's passages."""
    if not scope:
        return None
    return lambda params: _scope_filter(scope, params, backend.metadata)


def _spread(ranked: list[tuple[Any, float]], k: int) -> list[tuple[Any, float]]:
    """The k best, at most one passage per document while other documents are left: three
    passages of one page say less than three pages do. A passage whose words repeat one ranked
    above it (boilerplate that many documents share: "Report bugs to …", a licence) is left out
    altogether: citing the same text twice says nothing more, and it would crowd out the rest."""
    first: list[int] = []
    rest: list[int] = []
    seen: set[str] = set()
    said: set[str] = set()
    for n, (row, _) in enumerate(ranked):
        words = " ".join(row.text.casefold().split())
        if words in said:
            continue
        said.add(words)
        (rest if row.document_id in seen else first).append(n)
        seen.add(row.document_id)
    return [ranked[n] for n in sorted((first + rest)[:k])]


def _rows(session: Session, ids: list[int]) -> list[Any]:
    if not ids:
        return []
    return list(
        session.execute(
            select(
                Chunk.id, Chunk.document_id, Chunk.ordinal, Chunk.text,
                Section.path.label("heading"), Document.title, Document.url,
            )
            .join(Section, Section.id == Chunk.section_id)
            .join(Document, Document.id == Chunk.document_id)
            .where(Chunk.id.in_(ids))
        )
    )  # fmt: skip


class SQLiteSearch:
    """FTS5: its bm25() has inverse document frequency; the heading column weighs double."""

    @staticmethod
    def plan(session: Session, words: list[Term]) -> Plan | None:
        # Each count stops at CANDIDATES + 1: anything above is "common" all the same (and its
        # inverse document frequency, for the agent's weights, is overestimated a little).
        counts = " UNION ALL ".join(
            f"SELECT {n}, (SELECT count(*) FROM (SELECT 1 FROM chunks_fts"
            f" WHERE chunks_fts MATCH :m{n} LIMIT {CANDIDATES + 1}))"
            for n in range(len(words))
        )
        params = {f"m{n}": SQLiteSearch.phrase(term) for n, term in enumerate(words)}
        frequencies = {n: df for n, df in session.execute(text(counts), params)}
        total = session.scalar(text("SELECT max(id) FROM chunks")) or 0
        return plan(words, [frequencies[n] for n in range(len(words))], total)

    @staticmethod
    def phrase(term: Term) -> str:
        # Every word quoted: FTS5 reads it as a string, never as an operator or a column filter.
        if not term.parts:
            return f'"{term.word}"'
        return f'("{term.word}" OR "{" ".join(term.parts)}")'

    @staticmethod
    def rank(
        session: Session, found: Plan, tier: list[Term], required: bool, k: int, scope: Scope
    ) -> list[tuple[int, float]]:
        """bm25 over at most CANDIDATES passages: when more may match (a query of common
        words only), the newest of them. FTS5 scores every match before its LIMIT, so the
        bound is a rowid floor read from the match's doclist backwards ("name value type list
        string default" at 100k: 78 ms unbounded; the floor costs ~10 ms, so it is read only
        when the plan says the rarest word is common). A scope joins each match to its
        document (a primary-key look-up per match: the matches bound its cost as before)."""
        match = (" AND " if required else " OR ").join(map(SQLiteSearch.phrase, tier))
        params: dict[str, Any] = {"match": match, "limit": CANDIDATES, "k": k}
        joined, where = "", ""
        if scope:
            joined = (
                " JOIN chunks c ON c.id = chunks_fts.rowid JOIN documents d ON d.id = c.document_id"
            )
            where = " AND " + _scope_filter(scope, params, SQLiteSearch.metadata)
        params["floor"] = found.common and session.scalar(
            text(
                f"SELECT chunks_fts.rowid FROM chunks_fts{joined} WHERE chunks_fts MATCH :match"
                f"{where} ORDER BY chunks_fts.rowid DESC LIMIT 1 OFFSET :limit"
            ),
            params,
        )
        above = " AND chunks_fts.rowid > :floor" if params["floor"] else ""
        rows = session.execute(
            text(
                "SELECT chunks_fts.rowid AS rowid, -bm25(chunks_fts, 2.0, 1.0) AS score"
                f" FROM chunks_fts{joined} WHERE chunks_fts MATCH :match{above}{where}"
                " ORDER BY bm25(chunks_fts, 2.0, 1.0), chunks_fts.rowid LIMIT :k"
            ),
            params,
        )
        return [(row.rowid, float(row.score)) for row in rows]

    @staticmethod
    def metadata(key: str, value: str) -> str:
        # json_each, not a JSON path: a key is any string, and no quoting is spliced.
        return (
            "EXISTS (SELECT 1 FROM json_each(d.metadata) AS m"
            f" WHERE m.key = :{key} AND m.type = 'text' AND m.value = :{value})"
        )


def _scope_filter(scope: Scope, params: dict[str, Any], metadata: Callable[[str, str], str]) -> str:
    """The SQL condition on the document `d` a scope asks for, its values added to `params`."""
    conditions = []
    if scope.collections:
        names = [f"scope_c{n}" for n in range(len(scope.collections))]
        params.update(zip(names, scope.collections, strict=True))
        conditions.append(f"d.collection IN ({', '.join(':' + name for name in names)})")
    for n, (key, value) in enumerate(scope.metadata):
        params[f"scope_k{n}"], params[f"scope_v{n}"] = key, value
        conditions.append(metadata(f"scope_k{n}", f"scope_v{n}"))
    return " AND ".join(conditions)


class PostgresSearch:
    """tsvector and a GIN index. ts_rank has no inverse document frequency, so each word's
    rank is weighted by its own, from the number of passages holding it (chunks_fts_terms,
    kept by statement triggers on chunks; see the migration a9c3e5f7b1d2); headings (weight
    A) count 2.5 times the text (B)."""

    @staticmethod
    def plan(session: Session, words: list[Term]) -> Plan | None:
        rows = session.execute(
            text(
                "SELECT t.n, coalesce(max(s.passages), 0) FROM"
                " unnest(CAST(:words AS text[])) WITH ORDINALITY AS t(word, n)"
                " LEFT JOIN LATERAL unnest(tsvector_to_array(to_tsvector('english', t.word)))"
                " AS l(lexeme) ON true"
                " LEFT JOIN chunks_fts_terms s ON s.lexeme = l.lexeme GROUP BY t.n"
                " UNION ALL SELECT 0, passages FROM chunks_fts_terms WHERE lexeme = ''"
            ),
            {"words": [term.word for term in words]},
        )
        frequencies = {n: df for n, df in rows}  # 0: every passage (see the migration)
        return plan(words, [frequencies[n + 1] for n in range(len(words))], frequencies.get(0, 0))

    @staticmethod
    def metadata(key: str, value: str) -> str:
        name = f"CAST(:{key} AS text)"
        return (
            f"json_typeof(d.metadata -> {name}) = 'string' AND (d.metadata ->> {name}) = :{value}"
        )

    @staticmethod
    def query(term: Term, name: str) -> str:
        """A tsquery built by functions that never raise, from bound words."""
        word = f"plainto_tsquery('english', :{name})"
        if not term.parts:
            return word
        return f"({word} || phraseto_tsquery('english', :{name}_parts))"

    @staticmethod
    def rank(
        session: Session, found: Plan, tier: list[Term], required: bool, k: int, scope: Scope
    ) -> list[tuple[int, float]]:
        """Two steps, so that ts_rank (which reads, and decompresses, each passage's whole
        tsvector) runs on a short list only: the passages holding every word of the tier, or
        those holding the most of its rare words by weight (index and heap only), are short-
        listed; the short list is ranked by every weighed word's ts_rank times its weight."""
        terms = list(dict.fromkeys([*tier, *(t for t in found.every if t.word in found.weights)]))
        params: dict[str, Any] = {"k": k, "limit": CANDIDATES, "shortlist": SHORTLIST}
        query = {}
        for n, term in enumerate(terms):
            query[term.word] = PostgresSearch.query(term, f"q{n}")
            params.update({f"q{n}": term.word, f"q{n}_parts": " ".join(term.parts)})
            params[f"w{n}"] = found.weights.get(term.word, 0.0)
        # A scope: each match's document is looked up (the matches bound the cost; a scope
        # that holds few of them may read all of a common word's matches to fill the list).
        where = ""
        if scope:
            condition = _scope_filter(scope, params, PostgresSearch.metadata)
            where = f" AND document_id IN (SELECT d.id FROM documents d WHERE {condition})"
        if required:
            every = " && ".join(query[term.word] for term in tier)
            shortlist = f"SELECT id FROM chunks WHERE fts @@ ({every}){where} LIMIT :shortlist"
        else:
            each = " UNION ALL ".join(
                f"(SELECT id, CAST(:w{terms.index(term)} AS float) + 0.001 AS weight FROM chunks"
                f" WHERE fts @@ {query[term.word]}{where} LIMIT :limit)"
                for term in tier
            )
            shortlist = (
                f"SELECT id FROM ({each}) AS hit GROUP BY id"
                " ORDER BY sum(weight) DESC, id LIMIT :shortlist"
            )
        score = " + ".join(
            f"CAST(:w{n} AS float) * ts_rank({WEIGHTS}, c.fts, {query[term.word]}, 1)"
            for n, term in enumerate(terms)
            if term.word in found.weights
        )
        rows = session.execute(
            text(
                f"WITH shortlist AS ({shortlist}) SELECT c.id, {score} AS score"
                " FROM chunks c JOIN shortlist ON shortlist.id = c.id"
                " ORDER BY score DESC, c.id LIMIT :k"
            ),
            params,
        )
        return [(row.id, float(row.score)) for row in rows]


BACKENDS: dict[str, Any] = {"sqlite": SQLiteSearch, "postgresql": PostgresSearch}
