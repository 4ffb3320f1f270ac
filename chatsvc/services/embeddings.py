"""Hybrid retrieval: passages embedded by an OpenAI-compatible endpoint (agent/embeddings.py),
their vectors stored beside them, and a search's nearest passages by meaning fused with its
full-text ranking (reciprocal rank fusion). Off — search exactly as before — unless an
endpoint is configured; on SQLite only (sqlite-vec): PostgreSQL searches by text, and says so
at start-up, until chatsvc has a pgvector path.

Nothing here may lose a document or fail a search. Passages are stored and searchable by text
first; their vectors follow after the commit, in batches, each asked of the endpoint with no
transaction open, then stored in a short one. A failing endpoint leaves the passages without
vectors (counted, logged): `kb embed` fills them in later, as it re-embeds everything when the
model changes. A query is embedded within EMBEDDINGS_TIMEOUT_SECONDS; when that fails the
search is the text ranking alone (counted by reason)."""

from __future__ import annotations

import logging
import math
from array import array
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol
from weakref import WeakKeyDictionary

from sqlalchemy import delete, select, text
from sqlalchemy.engine import Engine
from sqlalchemy.exc import IntegrityError, SQLAlchemyError
from sqlalchemy.orm import Session

from ..agent.embeddings import EmbeddingsFailed
from ..models import ChunkVector, EmbeddingModel

if TYPE_CHECKING:
    from ..db import Database

log = logging.getLogger(__name__)

# Reciprocal rank fusion: a passage scores 1 / (RRF_K + its rank) in each list that holds it.
# 60 is the constant of Cormack, Clarke and Büttcher (SIGIR 2009); bench/knowledge.py's hybrid
# column measures it.
RRF_K = 60
# The vector search's first pass keeps this many candidates per passage wanted, compared by
# their sign bits alone, for the second to rank by cosine distance. A full scan of the vectors
# cost 200 ms of CPU at 100k passages of 384 dimensions; the bits' index scan 10 ms.
CANDIDATES_PER_HIT = 20
MAX_TEXT_CHARS = 2000  # of a passage (with its title and headings) sent to be embedded
MAX_QUERY_CHARS = 2000
# Where a failure happened: the metric's other label (chatsvc_embeddings_failures_total).
QUERY, PASSAGES = "query", "passages"
STAGES = (QUERY, PASSAGES)


class Embedder(Protocol):
    """The endpoint's port (agent/embeddings.OpenAIEmbeddings): `dimension` is 0 until known."""

    model: str
    dimension: int

    def embed(self, texts: list[str], timeout: float) -> list[list[float]]: ...

    def close(self) -> None: ...


@dataclass(frozen=True)
class VectorSettings:
    query_timeout: float  # EMBEDDINGS_TIMEOUT_SECONDS
    batch_timeout: float  # EMBEDDINGS_BATCH_TIMEOUT_SECONDS
    batch_size: int  # EMBEDDINGS_BATCH


class VectorIndex:
    """The vectors of one database (SQLite) and the endpoint that makes them."""

    def __init__(
        self,
        embedder: Embedder,
        settings: VectorSettings,
        failed: Callable[[str, str], None] = lambda stage, reason: None,
    ) -> None:
        self.embedder = embedder
        self.settings = settings
        self.failed = failed  # (stage, reason): counted by the caller's metric

    # Search ---------------------------------------------------------------------------

    def nearest(
        self, session: Session, query: str, k: int, condition: Condition | None = None
    ) -> list[int]:
        """The ids of the k passages nearest the query by cosine distance, nearest first,
        among those of the model configured and of documents meeting `condition` (a search's
        scope); [] when the query cannot be embedded (counted, logged)."""
        query = query.strip()[:MAX_QUERY_CHARS]
        if not query or k < 1:
            return []
        try:
            vector = self.embedder.embed([query], self.settings.query_timeout)[0]
        except EmbeddingsFailed as error:
            self.failed(QUERY, error.reason)
            log.warning("the query could not be embedded (%s): searching by text only", error)
            return []
        model = self._model(session, len(vector), create=False)
        if model is None:  # nothing was embedded by this model yet
            return []
        query_vector = pack(vector)
        params: dict[str, Any] = {
            "model": model, "query": query_vector, "k": k, "candidates": k * CANDIDATES_PER_HIT,
            "bits": session.scalar(text("SELECT vec_quantize_binary(:v)"), {"v": query_vector}),
        }  # fmt: skip
        joined, where = "", ""
        if condition is not None:
            joined = " JOIN chunks c ON c.id = v.chunk_id JOIN documents d ON d.id = c.document_id"
            where = " AND " + condition(params)
        # Two passes: the candidates nearest by their sign bits (Hamming distance, a scan of
        # the covering index ix_chunk_vectors_model_bits), then those by cosine distance.
        rows = session.execute(
            text(
                f"WITH candidate AS (SELECT v.chunk_id FROM chunk_vectors v{joined}"
                f" WHERE v.model_id = :model{where}"
                " ORDER BY vec_distance_hamming(vec_bit(v.bits), vec_bit(:bits)) LIMIT :candidates)"
                " SELECT v.chunk_id FROM chunk_vectors v JOIN candidate USING (chunk_id)"
                " ORDER BY vec_distance_cosine(v.vector, :query), v.chunk_id LIMIT :k"
            ),
            params,
        )
        return [row.chunk_id for row in rows]

    # Ingest ---------------------------------------------------------------------------

    def fill(
        self, session: Session, document_id: str | None = None, progress: Progress | None = None
    ) -> int:
        """Embed every passage (of one document, or all) that has no vector of the configured
        model, EMBEDDINGS_BATCH at a time; how many were embedded. Each batch is asked of the
        endpoint with no transaction open, then stored in one; EmbeddingsFailed stops it,
        with the batches before stored."""
        dimension = self._dimension()
        model = self._model(session, dimension, create=True)
        assert model is not None
        done, after = 0, 0
        while True:
            batch = self._missing(session, model, after, document_id)
            session.commit()  # the read's transaction ends before the endpoint is asked
            if not batch:
                return done
            vectors = self.embedder.embed(
                [passage for _, passage in batch], self.settings.batch_timeout
            )
            ids = [chunk_id for chunk_id, _ in batch]
            # A passage deleted meanwhile is not given a vector (its foreign key would refuse).
            session.execute(delete(ChunkVector).where(ChunkVector.chunk_id.in_(ids)))
            session.execute(
                text(
                    "INSERT INTO chunk_vectors (chunk_id, model_id, vector, bits) SELECT"
                    " :chunk_id, :model_id, :vector, vec_quantize_binary(:vector)"
                    " WHERE EXISTS (SELECT 1 FROM chunks WHERE id = :chunk_id)"
                ),
                [
                    {"chunk_id": chunk_id, "model_id": model, "vector": pack(vector)}
                    for chunk_id, vector in zip(ids, vectors, strict=True)
                ],
            )
            session.commit()
            done, after = done + len(batch), ids[-1]
            if progress is not None:
                progress(done)

    def missing(self, session: Session) -> int:
        """Passages without a vector of the configured model (0 while its dimension is not
        known yet and nothing was embedded)."""
        dimension = self.embedder.dimension
        model = self._model(session, dimension, create=False) if dimension else None
        total = session.scalar(
            text(
                "SELECT count(*) FROM chunks c LEFT JOIN chunk_vectors v"
                " ON v.chunk_id = c.id AND v.model_id = :model WHERE v.chunk_id IS NULL"
            ),
            {"model": model or 0},
        )
        session.commit()
        return int(total or 0)

    def _missing(
        self, session: Session, model: int, after: int, document_id: str | None
    ) -> list[tuple[int, str]]:
        """The next batch of passages without a vector of `model`, with the text to embed:
        the document's title and the passage's headings, then the passage."""
        params: dict[str, Any] = {"model": model, "after": after, "n": self.settings.batch_size}
        one = ""
        if document_id is not None:
            one, params["document"] = " AND c.document_id = :document", document_id
        rows = session.execute(
            text(
                "SELECT c.id, d.title, s.path, c.text FROM chunks c"
                " JOIN sections s ON s.id = c.section_id JOIN documents d ON d.id = c.document_id"
                " LEFT JOIN chunk_vectors v ON v.chunk_id = c.id AND v.model_id = :model"
                f" WHERE v.chunk_id IS NULL AND c.id > :after{one} ORDER BY c.id LIMIT :n"
            ),
            params,
        )
        return [(row.id, passage_text(row.title, row.path, row.text)) for row in rows]

    def _dimension(self) -> int:
        """The configured model's dimension: set, or read from a first small request."""
        if not self.embedder.dimension:
            self.embedder.embed(["dimension"], self.settings.query_timeout)
        return self.embedder.dimension

    def _model(self, session: Session, dimension: int, *, create: bool) -> int | None:
        """The id of (EMBEDDINGS_MODEL, dimension), recorded when `create`."""
        name = self.embedder.model
        query = select(EmbeddingModel.id).where(
            EmbeddingModel.name == name, EmbeddingModel.dimension == dimension
        )
        found = session.scalar(query)
        if found is not None or not create:
            return found
        try:
            session.add(EmbeddingModel(name=name, dimension=dimension))
            session.commit()
        except IntegrityError:  # another worker recorded it first
            session.rollback()
        return session.scalar(query)


Condition = Callable[[dict[str, Any]], str]  # adds its values to the params, returns the SQL
Progress = Callable[[int], None]


def passage_text(title: str, path: str, passage: str) -> str:
    """What is embedded for a passage: its document's title and its headings say what it is
    about when the passage itself does not name it."""
    heading = path if path.startswith(title) else f"{title} — {path}" if path else title
    return f"{heading}\n\n{passage}"[:MAX_TEXT_CHARS]


def pack(vector: list[float]) -> bytes:
    """float32 of unit length, as sqlite-vec reads a BLOB (cosine distance needs no unit
    length, but a unit vector makes the stored bytes comparable by any later method)."""
    norm = math.sqrt(sum(x * x for x in vector)) or 1.0
    return array("f", [x / norm for x in vector]).tobytes()


def fuse(ranked: dict[int, float], nearest: list[int]) -> dict[int, float]:
    """Reciprocal rank fusion of the text ranking (passage id → score, best first) and the
    nearest passages by meaning: each passage's score is the sum of 1 / (RRF_K + rank) over
    the lists that hold it; best first. The text ranking as it is when `nearest` is empty."""
    if not nearest:
        return ranked
    fused: dict[int, float] = {}
    for ranking in (list(ranked), nearest):
        for rank, chunk_id in enumerate(ranking, 1):
            fused[chunk_id] = fused.get(chunk_id, 0.0) + 1.0 / (RRF_K + rank)
    return dict(sorted(fused.items(), key=lambda item: (-item[1], item[0])))


# The index of each database's engine: what `knowledge.find` asks through its session.
_INDEXES: WeakKeyDictionary[Engine, VectorIndex] = WeakKeyDictionary()

PGVECTOR_MISSING = "embeddings configured but pgvector is missing: PostgreSQL searches by text only"
PGVECTOR_UNUSED = (
    "embeddings configured and the server has pgvector, but chatsvc has no pgvector search "
    "yet: PostgreSQL searches by text only"
)
PGVECTOR_UNKNOWN = (
    "embeddings configured but whether the server has pgvector could not be checked (the "
    "database did not answer): PostgreSQL searches by text only"
)


def open_index(
    database: Database,
    embedder: Embedder,
    settings: VectorSettings,
    failed: Callable[[str, str], None],
) -> VectorIndex | None:
    """The database's vector index, attached so that its searches and ingests use it; None
    (one warning logged, the embedder closed) where vectors cannot be searched."""
    if database.engine.dialect.name == "sqlite":
        index = VectorIndex(embedder, settings, failed)
        _INDEXES[database.engine] = index
        return index
    log.warning(_postgres_warning(database))
    embedder.close()
    return None


def _postgres_warning(database: Database) -> str:
    try:
        with database.engine.connect() as connection:
            available = connection.scalar(
                text("SELECT count(*) FROM pg_available_extensions WHERE name = 'vector'")
            )
    except SQLAlchemyError:
        return PGVECTOR_UNKNOWN
    return PGVECTOR_UNUSED if available else PGVECTOR_MISSING


def close(database: Database) -> None:
    index = _INDEXES.pop(database.engine, None)
    if index is not None:
        index.embedder.close()


def index_of(session: Session) -> VectorIndex | None:
    """The vector index of the session's database; None when embeddings are off there."""
    if not _INDEXES:
        return None
    return _INDEXES.get(session.get_bind().engine)


def index_for(database: Database) -> VectorIndex | None:
    return _INDEXES.get(database.engine)


# The hooks knowledge.py calls --------------------------------------------------------------


def nearest(session: Session, query: str, k: int, condition: Condition | None) -> list[int]:
    """The passages nearest the query by meaning (VectorIndex.nearest); [] when off."""
    index = index_of(session)
    return [] if index is None else index.nearest(session, query, k, condition)


def stored(session: Session, document_id: str) -> None:
    """A document's passages were committed: embed them. A failing endpoint loses nothing:
    the passages stay searchable by text, and `kb embed` fills their vectors in later."""
    index = index_of(session)
    if index is None:
        return
    try:
        index.fill(session, document_id)
    except EmbeddingsFailed as error:
        session.rollback()
        index.failed(PASSAGES, error.reason)
        log.warning(
            "the passages of document %s could not be embedded (%s): searchable by text only "
            "until `kb embed` fills their vectors in", document_id, error,
        )  # fmt: skip
