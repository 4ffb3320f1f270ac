"""`POST /api/documents` of a small document, indexed inside its request (knowledge.ingest, issue
21's ingest rate): the document, its sections and its passages go in one statement on
PostgreSQL (autocommit) and three on SQLite, with no look-up first; the unique hash decides
whether a text is new, whether it was stored before the request, while the request split it,
or by a transaction still open when the request's INSERT came."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest
from helpers import expected, race_the_split, stored
from sqlalchemy import delete, func, insert, select, text

from chatsvc.db import database, utcnow
from chatsvc.models import Chunk, Document, Section
from chatsvc.services import knowledge

CORPUS = Path(__file__).parent / "corpus"
# Headings with a letters-hyphen-digits pair (indexed twice over on PostgreSQL), a section of
# one short passage, one of several, and text before the first heading.
CRAFTED = (
    "Some words before any heading.\n\n# SHA-256 digests\n\nShort.\n\n## UTF-8 and SHA-512\n\n"
    + "\n\n".join(
        f"Paragraph {n} on the digest of a text, long enough to count. " * 6 for n in range(12)
    )
    + "\n\n## Last\n\nThe end of the crafted text.\n"
)


def count(app, model) -> int:
    with database(app).read() as session:
        return session.scalar(select(func.count()).select_from(model)) or 0


def test_the_response_is_the_stored_document_with_every_passage(client, app):
    body = {
        "title": "Digests",
        "text": CRAFTED,
        "url": "https://example.com/digests",
        "metadata": {"kind": "crafted", "n": 3},
        "collection": "crafted",
    }
    created = client.post("/api/documents", json=body)
    assert created.status_code == 201, created.json
    document = created.json
    assert client.get(f"/api/documents/{document['id']}").json == document
    assert (document["status"], document["collection"], document["metadata"]) == (
        "ready", "crafted", {"kind": "crafted", "n": 3},
    )  # fmt: skip
    passages = stored(app, document["id"])
    assert passages == expected("Digests", CRAFTED)
    assert document["chunk_count"] == len(passages) >= 5
    with database(app).read() as session:
        paths = session.scalars(
            select(Section.path)
            .where(Section.document_id == document["id"])
            .order_by(Section.ordinal)
        ).all()
    assert paths == list(dict.fromkeys(path for path, _, _ in passages))  # each path once
    with database(app).read() as session:
        hits = knowledge.search(session, "crafted text", scope=knowledge.Scope(("crafted",)))
    assert [(hit.document_id, hit.snippet) for hit in hits[:1]] == [
        (document["id"], "The end of the crafted text.")
    ]


def test_a_text_stored_while_the_request_splits_it_is_not_stored_twice(client, app, monkeypatch):
    """No look-up comes before the split: another writer stores the same text meanwhile, and
    the request's INSERT finds it by its hash (200, the other writer's document)."""
    knots = (CORPUS / "knots.md").read_text()
    raced = race_the_split(app, monkeypatch, "Knots", knots)
    response = client.post("/api/documents", json={"title": "Knots", "text": knots})
    assert response.status_code == 200, response.json
    assert (response.json["id"], response.json["title"]) == (raced[0], "Knots elsewhere")
    assert count(app, Document) == 1
    assert stored(app, raced[0]) == expected("Knots elsewhere", knots)
    assert count(app, Chunk) == response.json["chunk_count"]


@pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)
@pytest.mark.parametrize("outcome", ["commit", "rollback"])
def test_the_same_text_in_an_open_transaction_is_waited_for(client, app, outcome):
    """Another transaction inserted the same text and has not committed: the request's INSERT
    waits on the unique hash, then finds that document (200) when it commits, or stores its
    own (201) when it rolls back; one document either way."""
    tea = (CORPUS / "tea.md").read_text()
    engine = database(app).engine
    other = engine.connect()
    transaction = other.begin()
    other.execute(
        insert(Document.__table__),
        {
            "id": "other-writer", "title": "Tea elsewhere", "url": None, "metadata": {},
            "collection": "default", "content_hash": knowledge.content_hash(tea), "text": "",
            "chunk_count": 0, "created_at": utcnow(), "status": "ready", "lease_until": None,
        },
    )  # fmt: skip
    responses = []
    request = threading.Thread(
        target=lambda: responses.append(
            client.post("/api/documents", json={"title": "Tea", "text": tea})
        )
    )
    request.start()
    waiting = text(
        "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()"
        " AND wait_event_type = 'Lock'"
    )
    try:
        with engine.connect() as watcher:
            for _ in range(1000):  # until the request's INSERT waits on the other's row
                if watcher.scalar(waiting):
                    break
                watcher.rollback()
                time.sleep(0.01)
            else:
                raise AssertionError("the request never waited for the open transaction")
        transaction.commit() if outcome == "commit" else transaction.rollback()
    finally:
        other.close()
        request.join(60)
    response = responses[0]
    if outcome == "commit":
        assert response.status_code == 200, response.json
        assert (response.json["id"], response.json["title"]) == ("other-writer", "Tea elsewhere")
        assert count(app, Chunk) == 0  # the other writer's document had none
    else:
        assert response.status_code == 201, response.json
        assert stored(app, response.json["id"]) == expected("Tea", tea)
    assert count(app, Document) == 1


@pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)
def test_the_connection_is_transactional_again_after_an_inline_ingest(make_app):
    """The ingest's statement runs in autocommit; the pool's connection (the only one here)
    must be back in transactions for the next unit of work, which may roll back."""
    app = make_app({"DB_POOL_SIZE": 1, "DB_MAX_OVERFLOW": 0})
    client = app.test_client()
    posted = client.post("/api/documents", json={"title": "Tea", "text": "Green tea, 80 °C."})
    assert posted.status_code == 201
    with pytest.raises(RuntimeError), database(app).transaction() as session:
        session.execute(delete(Chunk))
        session.execute(delete(Section))
        session.execute(delete(Document))
        raise RuntimeError("rolled back")
    assert client.get(f"/api/documents/{posted.json['id']}").status_code == 200
    assert count(app, Chunk) == posted.json["chunk_count"] == 1
