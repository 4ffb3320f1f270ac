"""Ingesting many documents at once (`flask kb ingest`, knowledge.ingest_many: many documents
per transaction, issue 21's ingest rate), on both databases: each document is stored exactly
as `ingest` stores it alone, a text is stored once however often it comes, and a text another
writer stores meanwhile loses nothing."""

from __future__ import annotations

from pathlib import Path

import pytest
from helpers import expected, race_the_split, stored
from sqlalchemy import select, text

from chatsvc.db import database
from chatsvc.models import Document
from chatsvc.services import knowledge

CORPUS = Path(__file__).parent / "corpus"


def titled(path: Path) -> tuple[str, str]:
    body = path.read_text()
    return body.splitlines()[0].lstrip("# "), body


@pytest.mark.parametrize("per_transaction", [1, 7, 10_000])
def test_documents_ingested_together_are_stored_as_each_alone(app, client, per_transaction):
    """Several documents per transaction (or one, or all): each gets its own passages,
    numbered from 0 under its own sections, and is found by search."""
    documents = [titled(path) for path in sorted(CORPUS.glob("*.md"))[:6]]
    with database(app).sessions() as session:
        done = list(
            knowledge.ingest_many(
                session,
                (
                    knowledge.Incoming(
                        title,
                        body,
                        url=f"https://example.com/{n}",
                        meta={"n": str(n)},
                        collection="bulk",
                    )
                    for n, (title, body) in enumerate(documents)
                ),
                passages_per_transaction=per_transaction,
            )
        )
    assert [d.created for d in done] == [True] * len(documents)
    for (title, body), result in zip(documents, done, strict=True):
        assert stored(app, result.id) == expected(title, body)
        assert result.chunk_count == len(expected(title, body))
        listed = client.get(f"/api/documents/{result.id}").json
        assert (listed["title"], listed["status"], listed["collection"]) == (title, "ready", "bulk")
        n = [t for t, _ in documents].index(title)
        assert (listed["url"], listed["metadata"]) == (f"https://example.com/{n}", {"n": str(n)})
        assert listed["chunk_count"] == result.chunk_count
    burns = done[[title for title, _ in documents].index(titled(CORPUS / "burns.md")[0])]
    answer = client.post(
        "/api/chat", json={"message": "What should I do for a burn?", "collections": ["bulk"]}
    ).json
    assert answer["sources"][0]["document_id"] == burns.id


def test_a_text_is_stored_once_however_often_it_comes(app):
    tea = (CORPUS / "tea.md").read_text()
    knots = "Knots: the bowline makes a loop that does not slip.\n"
    with database(app).sessions() as session:
        first = list(
            knowledge.ingest_many(
                session,
                [
                    knowledge.Incoming("Tea", tea),
                    knowledge.Incoming("Knots", knots),
                    knowledge.Incoming("Tea again", tea + "\n\n"),  # the same text, normalised
                ],
            )
        )
        second = list(knowledge.ingest_many(session, [knowledge.Incoming("Knots 2", knots)]))
    assert [d.created for d in first] == [True, True, False]
    assert first[2].id == first[0].id and first[2].chunk_count == first[0].chunk_count
    assert second[0].id == first[1].id and not second[0].created
    with database(app).read() as session:
        titles = sorted(session.scalars(select(Document.title)))
    assert titles == ["Knots", "Tea"]


def test_a_text_another_writer_stores_meanwhile_is_not_stored_twice(app, monkeypatch):
    """Between the look-up of a window's texts and their transaction, another writer stores
    one of them: that transaction fails on the unique hash, and its documents are stored one
    by one: the others are all kept, the raced one is the other writer's."""
    tea, knots = (CORPUS / "tea.md").read_text(), "The bowline makes a loop that does not slip."
    raced = race_the_split(app, monkeypatch, "Knots", knots)
    with database(app).sessions() as session:
        done = list(
            knowledge.ingest_many(
                session, [knowledge.Incoming("Tea", tea), knowledge.Incoming("Knots", knots)]
            )
        )
    assert [d.created for d in done] == [True, False]
    assert done[1].id == raced[0]
    assert stored(app, done[0].id) == expected("Tea", tea)
    with database(app).read() as session:
        assert session.scalar(select(Document.title).where(Document.id == raced[0])) == (
            "Knots elsewhere"
        )
        assert session.scalar(select(text("count(*)")).select_from(Document)) == 2


@pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)
def test_postgresql_counts_each_words_passages_through_a_batched_ingest(app):
    """The statement triggers count every passage of a multi-document INSERT once."""
    recount = text(
        "SELECT lexeme, count(*) FROM chunks, unnest(tsvector_to_array(fts)) AS lexeme"
        " GROUP BY lexeme UNION ALL SELECT '', count(*) FROM chunks"
    )
    kept = text("SELECT lexeme, passages FROM chunks_fts_terms WHERE passages <> 0")
    documents = [titled(path) for path in sorted(CORPUS.glob("*.md"))]
    with database(app).sessions() as session:
        incoming = (knowledge.Incoming(title, body) for title, body in documents)
        assert all(d.created for d in knowledge.ingest_many(session, incoming, 20))
    with database(app).read() as session:
        assert dict(session.execute(recount).all()) == dict(session.execute(kept).all())


@pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)
def test_postgresql_indexes_a_passage_as_its_trigger_would(app, client):
    """The INSERT computes each passage's vector (each heading's once); the trigger, which any
    other writer and every UPDATE of a text goes through, must compute the very same."""
    body = (
        "# Digests\n\n## SHA-256 and UTF-8\n\nThe SHA-256 digest of a UTF-8 text, or sha256.\n\n"
        "## Plain words\n\nNothing hyphenated here; a well-known e-mail from 2024-11.\n"
    )
    assert client.post("/api/documents", json={"title": "Digests", "text": body}).status_code == 201
    with database(app).sessions() as session:
        incoming = [knowledge.Incoming(*titled(path)) for path in sorted(CORPUS.glob("*.md"))[:3]]
        list(knowledge.ingest_many(session, incoming))
    vectors = text("SELECT id, fts::text FROM chunks ORDER BY id")
    with database(app).transaction() as session:
        inserted = session.execute(vectors).all()
        session.execute(text("UPDATE chunks SET text = text"))  # the trigger, again
        assert session.execute(vectors).all() == inserted
        assert "'sha256'" in inserted[0][1] and "'utf8'" in inserted[0][1]


def test_the_cli_says_what_it_did_with_each_file_in_order(app, runner, tmp_path, monkeypatch):
    """Files are read a window ahead of what is stored: each line still names its own file,
    across windows, with empty files skipped and a repeated text reported unchanged."""
    monkeypatch.setattr(knowledge, "LOOKUP_WINDOW", 2)
    bodies = {
        "a.md": "# Anchors\n\nAn anchor holds a boat.",
        "b.md": "  \n",
        "c.md": "# Bells\n\nA bell rings on the hour.",
        "d.md": "# Anchors\n\nAn anchor holds a boat.",
        "e.txt": "Capstans wind the anchor chain.",
    }
    for name, body in bodies.items():
        (tmp_path / name).write_text(body)
    result = runner.invoke(args=["kb", "ingest", str(tmp_path)])
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert sorted(line.split()[0:2] for line in lines) == sorted(
        [
            ["ingested", str(tmp_path / "a.md")],
            ["skipped", str(tmp_path / "b.md")],
            ["ingested", str(tmp_path / "c.md")],
            ["unchanged", str(tmp_path / "d.md")],
            ["ingested", str(tmp_path / "e.txt")],
        ]
    )
    stored = [line for line in lines if not line.startswith("skipped")]
    assert [line.split()[1] for line in stored] == [
        str(tmp_path / name) for name in ("a.md", "c.md", "d.md", "e.txt")
    ]
    ids = {line.split()[1]: line.split()[3] for line in stored}
    assert ids[str(tmp_path / "a.md")] == ids[str(tmp_path / "d.md")]
    with database(app).read() as session:
        assert sorted(session.scalars(select(Document.title))) == ["Anchors", "Bells", "e"]
