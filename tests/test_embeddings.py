"""Hybrid retrieval (issue 21): with an embeddings endpoint configured, passages get vectors at
ingest and a search fuses the passages nearest the query by meaning with its full-text ranking
(reciprocal rank fusion), within the turn's scope, one passage per document. The endpoint is
tests/fakellm.py over real HTTP: each text's vector is a bag of its hashed words with a few
synonyms made one ("automobile" is "car", "purchase" is "buy"), so a paraphrase finds by
vector what shares no word with it. Searches run as a model's `search_knowledge` call in a chat
turn (the offline agent's searches go through the same `find`). A failing endpoint loses
nothing: documents are stored and searchable by text, vectors come later (`kb embed`), and a
search falls back to text only, counted in chatsvc_embeddings_failures_total.

SQLite searches vectors (sqlite-vec); PostgreSQL has no pgvector here, so it searches by text
and says so at start-up: the tests of ranking are SQLite's, the start-up test covers both."""

from __future__ import annotations

import logging
import math
import re
from typing import Any

import pytest
from fakellm import EmbedFault, call, say
from helpers import free_port, ok, wait_for
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import func, select, text

from chatsvc.config import ConfigError
from chatsvc.db import database
from chatsvc.models import ChunkVector, EmbeddingModel
from chatsvc.services import embeddings

CARS = "# Buying a car\n\nVisit the dealer, compare prices and buy the car you can afford."
INSURANCE = "# Car insurance\n\nInsurance for your car covers damage and theft."
DOCTOR = "# Seeing a doctor\n\nBook an appointment with your doctor; bring your insurance card."
PARAPHRASE = "automobile purchase"  # no passage holds either word


# Vector search runs on SQLite only (sqlite-vec): this PostgreSQL server has no pgvector, and
# there it searches by text, which test_start_up_says_where_vectors_are_searched checks.
SQLITE_ONLY = pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)


@pytest.fixture
def hybrid(make_app, fake_llm, database_url):
    """Apps whose model and embeddings endpoint are the fake server (tests marked SQLITE_ONLY)."""
    assert database_url.startswith("sqlite"), "mark the test SQLITE_ONLY"

    def factory(**config: Any):
        return make_app({**model(fake_llm), **endpoint(fake_llm), **config})

    return factory


def model(fake) -> dict[str, Any]:
    return {
        "AGENT_PROVIDER": "openai", "OPENAI_BASE_URL": fake.url, "OPENAI_MODEL": "fake-model",
        "OPENAI_API_KEY": "sk-test", "AGENT_TIMEOUT_SECONDS": 5.0, "AGENT_MAX_RETRIES": 0,
    }  # fmt: skip


def endpoint(fake, name: str = "fake-embed") -> dict[str, Any]:
    return {
        "EMBEDDINGS_BASE_URL": fake.url, "EMBEDDINGS_MODEL": name,
        "EMBEDDINGS_TIMEOUT_SECONDS": 1.0, "EMBEDDINGS_BATCH_TIMEOUT_SECONDS": 5.0,
    }  # fmt: skip


def post(client, title: str, body: str, status: int = 201, **extra: Any) -> dict[str, Any]:
    return ok(client.post("/api/documents", json={"title": title, "text": body, **extra}), status)


def searched(client, fake, query: str, k: int = 3, **turn: Any) -> list[str]:
    """The titles a model's `search_knowledge` call got, best first."""
    fake.script(call(("search_knowledge", {"query": query, "k": k})), say("ok"))
    reply = ok(client.post("/api/chat", json={"message": "look it up", **turn}))
    return [hit["title"] for hit in reply["tool_calls"][0]["result"]["results"]]


def failures(client, stage: str, reason: str) -> float:
    """chatsvc_embeddings_failures_total{stage, reason}, as GET /metrics says it."""
    families = text_string_to_metric_families(client.get("/metrics").get_data(as_text=True))
    for family in families:
        for sample in family.samples:
            if sample.name == "chatsvc_embeddings_failures_total" and sample.labels == {
                "stage": stage, "reason": reason
            }:  # fmt: skip
                return sample.value
    raise AssertionError(f"/metrics has no failures of {stage}, {reason}")


def vectors(app) -> int:
    with database(app).read() as session:
        return session.scalar(select(func.count()).select_from(ChunkVector)) or 0


def passages(app) -> int:
    with database(app).read() as session:
        return session.scalar(text("SELECT count(*) FROM chunks")) or 0


def three(client) -> None:
    for title, body in (("Buying a car", CARS), ("Car insurance", INSURANCE),
                        ("Seeing a doctor", DOCTOR)):  # fmt: skip
        post(client, title, body)


# Ranking ----------------------------------------------------------------------------------


@SQLITE_ONLY
def test_a_paraphrase_is_found_by_meaning_where_text_finds_nothing(make_app, hybrid, fake_llm):
    app = hybrid()
    client = app.test_client()
    three(client)
    assert vectors(app) == passages(app) == 3  # embedded at ingest, one vector per passage
    assert searched(client, fake_llm, PARAPHRASE)[0] == "Buying a car"
    # The same database searched by text only: nothing holds "automobile" or "purchase".
    plain = make_app(model(fake_llm)).test_client()
    assert searched(plain, fake_llm, PARAPHRASE) == []


@SQLITE_ONLY
def test_fusion_puts_what_both_rankings_agree_on_first_and_adds_what_only_meaning_finds(
    make_app, hybrid, fake_llm
):
    client = hybrid().test_client()
    three(client)
    query = "automobile insurance"  # text: "insurance" only; meaning: car and insurance
    plain = make_app(model(fake_llm)).test_client()
    assert searched(plain, fake_llm, query) == ["Car insurance", "Seeing a doctor"]
    # Car insurance is first in both rankings; the doctor's page is second by text (third by
    # meaning) and so above the car purchase, which only meaning finds (second).
    assert searched(client, fake_llm, query) == ["Car insurance", "Seeing a doctor", "Buying a car"]
    scores = fused_scores(client, fake_llm, query)
    rrf = embeddings.RRF_K
    assert scores == pytest.approx([2 / (rrf + 1), 1 / (rrf + 2) + 1 / (rrf + 3), 1 / (rrf + 2)],
                                   abs=1e-4)  # fmt: skip


def fused_scores(client, fake, query: str) -> list[float]:
    fake.script(call(("search_knowledge", {"query": query, "k": 3})), say("ok"))
    reply = ok(client.post("/api/chat", json={"message": "look it up"}))
    return [hit["score"] for hit in reply["tool_calls"][0]["result"]["results"]]


@SQLITE_ONLY
def test_the_offline_agent_searches_the_same_way(make_app, fake_llm, database_url):
    """The offline agent's search is the tool's: its question is embedded too. (It answers only
    from a passage holding the question's weighed words, so a paraphrase that meaning alone
    finds gets "I don't know" from it; a model reads the passage.)"""
    client = make_app(endpoint(fake_llm)).test_client()
    three(client)
    question = "What does car insurance cover?"
    reply = ok(client.post("/api/chat", json={"message": question}))
    assert [source["title"] for source in reply["sources"]] == ["Car insurance"]
    assert fake_llm.embedding_requests[-1]["input"] == [question]


@SQLITE_ONLY
def test_one_passage_per_document_holds_for_vector_hits(hybrid, fake_llm):
    app = hybrid()
    client = app.test_client()
    three(client)
    sections = "\n\n".join(
        f"## Part {n}\n\nThe car {'and the car ' * n}needs buying parts: buy oil for the car."
        for n in range(6)
    )
    post(client, "Car upkeep", "# Car upkeep\n\n" + sections)
    assert passages(app) > 4
    titles = searched(client, fake_llm, PARAPHRASE, k=3)
    assert len(titles) == 3 and len(set(titles)) == 3, titles


@SQLITE_ONLY
def test_the_turns_scope_holds_for_vector_hits(hybrid, fake_llm):
    client = hybrid().test_client()
    post(client, "Buying a car", CARS, collection="shop", metadata={"country": "fr"})
    post(client, "Car insurance", INSURANCE, collection="cover", metadata={"country": "de"})
    assert searched(client, fake_llm, PARAPHRASE)[0] == "Buying a car"
    # By meaning the car purchase is nearest; out of the turn's scope, it is never returned.
    assert searched(client, fake_llm, PARAPHRASE, collections=["cover"]) == ["Car insurance"]
    assert searched(client, fake_llm, PARAPHRASE, collections=["none"]) == []
    assert searched(
        client, fake_llm, PARAPHRASE, document_metadata={"country": "de"}
    ) == ["Car insurance"]  # fmt: skip


@SQLITE_ONLY
def test_a_change_of_model_searches_by_text_until_kb_embed_has_re_embedded(
    make_app, hybrid, fake_llm
):
    first = hybrid()
    three(first.test_client())
    app = make_app({**model(fake_llm), **endpoint(fake_llm, "other-embed")})
    client = app.test_client()
    # The old model's vectors are never compared with the new model's query.
    assert searched(client, fake_llm, PARAPHRASE) == []
    result = app.test_cli_runner().invoke(args=["kb", "embed"])
    assert result.exit_code == 0, result.output
    assert (
        "3 passages embedded by other-embed (256 dimensions); 0 without a vector" in result.output
    )
    assert searched(client, fake_llm, PARAPHRASE)[0] == "Buying a car"
    with database(app).read() as session:  # each passage holds the new model's vector only
        models = session.execute(
            select(EmbeddingModel.name, func.count())
            .join(ChunkVector, ChunkVector.model_id == EmbeddingModel.id)
            .group_by(EmbeddingModel.name)
        ).all()
    assert [tuple(row) for row in models] == [("other-embed", 3)]


@SQLITE_ONLY
def test_a_deleted_documents_vectors_go_with_it(hybrid):
    app = hybrid()
    client = app.test_client()
    three(client)
    doomed = post(client, "Car upkeep", "# Car upkeep\n\nOil for the car.")
    assert vectors(app) == 4
    assert client.delete(f"/api/documents/{doomed['id']}").status_code == 204
    assert vectors(app) == 3


@SQLITE_ONLY
def test_a_large_document_is_embedded_in_batches_by_the_background_job(hybrid, fake_llm):
    app = hybrid(INGEST_INLINE_BYTES=256, EMBEDDINGS_BATCH=4)
    client = app.test_client()
    sections = "\n\n".join(f"## Step {n}\n\nBuy the car part number {n} at the dealer." for n in
                           range(12))  # fmt: skip
    big = post(client, "Buying a car", "# Buying a car\n\n" + sections * 3, status=202)
    wait_for(lambda: ok(client.get(f"/api/documents/{big['id']}"))["status"] == "ready")
    count = passages(app)
    wait_for(lambda: vectors(app) == count, what="every passage's vector")
    batches = [r["input"] for r in fake_llm.embedding_requests if r["input"] != ["dimension"]]
    assert sum(map(len, batches)) == count and max(map(len, batches)) == 4
    assert len(batches) == math.ceil(count / 4)
    assert searched(client, fake_llm, PARAPHRASE)[0] == "Buying a car"


# Failures ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("fault", "reason"),
    [
        (EmbedFault("status", status=503), "unavailable"),
        (EmbedFault("slow", delay=3.0), "timeout"),
        (EmbedFault("nan"), "invalid"),
        (EmbedFault("dimension"), "invalid"),
        (EmbedFault("count"), "invalid"),
        (EmbedFault("strings"), "invalid"),
        (EmbedFault("garbage"), "invalid"),
    ],
    ids=lambda value: getattr(value, "kind", value),
)
@SQLITE_ONLY
def test_a_query_the_endpoint_fails_is_searched_by_text_and_counted(
    hybrid, fake_llm, fault, reason
):
    client = hybrid(EMBEDDINGS_TIMEOUT_SECONDS=0.5).test_client()
    three(client)
    before = failures(client, "query", reason)
    fake_llm.embed_script(fault)
    assert searched(client, fake_llm, "automobile insurance") == [
        "Car insurance",
        "Seeing a doctor",
    ]
    assert failures(client, "query", reason) == before + 1
    # The next query is embedded again: no state was left behind.
    assert searched(client, fake_llm, PARAPHRASE)[0] == "Buying a car"


@SQLITE_ONLY
def test_an_endpoint_that_is_down_at_start_up_and_for_every_query_costs_nothing_but_text(
    make_app, fake_llm, database_url
):
    closed = f"http://127.0.0.1:{free_port()}/v1"  # nothing listens there
    app = make_app({**model(fake_llm), **endpoint(fake_llm), "EMBEDDINGS_BASE_URL": closed})
    client = app.test_client()
    before = failures(client, "passages", "unavailable")
    three(client)  # stored all the same: 201
    assert vectors(app) == 0 and passages(app) == 3
    assert failures(client, "passages", "unavailable") == before + 3
    queries = failures(client, "query", "unavailable")
    assert searched(client, fake_llm, "car insurance")[0] == "Car insurance"
    assert failures(client, "query", "unavailable") == queries + 1


@SQLITE_ONLY
@pytest.mark.parametrize("fault", ["status", "nan", "dimension"])
def test_passages_the_endpoint_fails_are_stored_searchable_by_text_and_kb_embed_fills_them_in(
    hybrid, fake_llm, fault
):
    app = hybrid(EMBEDDINGS_DIMENSIONS=256)  # known: no first request to learn it
    client = app.test_client()
    fake_llm.embed_always = EmbedFault(fault)
    reason = "unavailable" if fault == "status" else "invalid"
    before = failures(client, "passages", reason)
    three(client)
    assert ok(client.get("/api/documents"))["items"][0]["status"] == "ready"
    assert vectors(app) == 0 and failures(client, "passages", reason) == before + 3
    fake_llm.embed_always = None
    assert searched(client, fake_llm, "car insurance")[0] == "Car insurance"  # by text
    assert searched(client, fake_llm, PARAPHRASE) == []  # no vector to find it by yet
    runner = app.test_cli_runner()
    fake_llm.embed_always = EmbedFault(fault)
    failed = runner.invoke(args=["kb", "embed"])
    assert failed.exit_code == 1 and "3 left: run it again" in failed.output, failed.output
    fake_llm.embed_always = None
    result = runner.invoke(args=["kb", "embed"])
    assert result.exit_code == 0 and "0 without a vector" in result.output, result.output
    assert vectors(app) == 3
    assert searched(client, fake_llm, PARAPHRASE)[0] == "Buying a car"
    again = runner.invoke(args=["kb", "embed"])  # nothing left: nothing asked
    assert "done: 0 passages embedded" in again.output, again.output


# Configuration and start-up ---------------------------------------------------------------


class Said(logging.Handler):
    """The records one logger emitted, each once."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


def test_start_up_says_where_vectors_are_searched(make_app, fake_llm, database_url):
    """SQLite: vectors searched, nothing to say. PostgreSQL (no pgvector on this server, nor
    a pgvector path in chatsvc): one warning at start-up, and text only — no request to the
    endpoint, at ingest or at search."""
    logger = logging.getLogger("chatsvc.services.embeddings")
    said = Said()
    logger.addHandler(said)
    try:
        app = make_app({**model(fake_llm), **endpoint(fake_llm)})
    finally:
        logger.removeHandler(said)
    warnings = [r.getMessage() for r in said.records if r.levelno == logging.WARNING]
    client = app.test_client()
    three(client)
    if database_url.startswith("sqlite"):
        assert warnings == []
        assert searched(client, fake_llm, PARAPHRASE)[0] == "Buying a car"
        return
    with database(app).read() as session:
        available = session.scalar(
            text("SELECT count(*) FROM pg_available_extensions WHERE name = 'vector'")
        )
    assert warnings == [embeddings.PGVECTOR_UNUSED if available else embeddings.PGVECTOR_MISSING]
    assert "pgvector is missing: PostgreSQL searches by text only" in embeddings.PGVECTOR_MISSING
    assert searched(client, fake_llm, PARAPHRASE) == []
    assert searched(client, fake_llm, "car insurance")[0] == "Car insurance"
    assert fake_llm.embedding_requests == []
    result = app.test_cli_runner().invoke(args=["kb", "embed"])
    assert result.exit_code == 1 and "searches by text only" in result.output


def test_off_unless_configured_and_nothing_is_asked(make_app, fake_llm):
    client = make_app(model(fake_llm)).test_client()
    three(client)
    assert searched(client, fake_llm, "car insurance")[0] == "Car insurance"
    assert fake_llm.embedding_requests == []
    result = client.application.test_cli_runner().invoke(args=["kb", "embed"])
    assert result.exit_code == 1 and "EMBEDDINGS_BASE_URL is not set" in result.output


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"EMBEDDINGS_BASE_URL": "http://127.0.0.1:1/v1"}, "go together"),
        ({"EMBEDDINGS_MODEL": "m"}, "go together"),
        ({"EMBEDDINGS_BASE_URL": "ftp://x", "EMBEDDINGS_MODEL": "m"}, "http"),
        ({"EMBEDDINGS_DIMENSIONS": -1}, "EMBEDDINGS_DIMENSIONS"),
        ({"EMBEDDINGS_BATCH": 0}, "EMBEDDINGS_BATCH"),
        ({"EMBEDDINGS_TIMEOUT_SECONDS": 0.0}, "must be positive"),
    ],
)
def test_bad_settings_refuse_to_start(make_app, settings, message):
    with pytest.raises(ConfigError, match=re.escape(message)):
        make_app(settings)
