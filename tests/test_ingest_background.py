"""Ingest that never blocks chat (issue 21): a document larger than INGEST_INLINE_BYTES is
stored at once (202, status `indexing`) and split in the background; a deleted document's job
stops and leaves nothing; a job whose worker died is taken over once its lease ends, and the
job that lost its lease writes nothing more."""

from __future__ import annotations

import json
import threading
import time
from datetime import timedelta
from urllib.error import HTTPError
from urllib.request import Request, urlopen

import pytest
from sqlalchemy import func, select, update

from chatsvc.db import database, utcnow
from chatsvc.models import Chunk, Document, Section
from chatsvc.services import chunking, knowledge

INLINE = 2000  # bytes indexed inside the POST in these tests


def large_text(word: str, paragraphs: int = 60) -> str:
    """Several kB of distinct paragraphs, `word` only in the last one."""
    body = "\n\n".join(
        f"## Part {n}\n\nThe marmot number {n} whistles at dawn near burrow {n * 7}. " * 3
        for n in range(paragraphs)
    )
    return f"# Marmots\n\n{body}\n\nThe {word} is found in the last paragraph only.\n"


@pytest.fixture
def app(make_app):
    return make_app({"INGEST_INLINE_BYTES": INLINE, "RATELIMIT_ENABLED": False})


def wait_ready(client, document_id: str, timeout: float = 30.0) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        response = client.get(f"/api/documents/{document_id}")
        assert response.status_code == 200, response.json
        if response.json["status"] != "indexing":
            return response.json
        time.sleep(0.02)
    raise AssertionError(f"document {document_id} still indexing after {timeout} s")


def wait_jobs(document_id: str, timeout: float = 30.0) -> None:
    """Until no indexing job of the document runs in this process."""
    for thread in threading.enumerate():
        if thread.name == f"index-{document_id}":
            thread.join(timeout)
            assert not thread.is_alive()


def stored(app, document_id: str) -> tuple[int, int, list[int]]:
    """(passages, sections, passage ordinals) stored for the document."""
    with database(app).read() as session:
        query = select(Chunk.ordinal).where(Chunk.document_id == document_id)
        ordinals = list(session.scalars(query.order_by(Chunk.ordinal)))
        sections = session.scalar(
            select(func.count()).select_from(Section).where(Section.document_id == document_id)
        )
    return len(ordinals), sections or 0, ordinals


def test_a_small_document_is_indexed_inside_its_post(client):
    response = client.post("/api/documents", json={"title": "Small", "text": "Marmots whistle."})
    assert response.status_code == 201
    assert response.json["status"] == "ready"
    assert response.json["chunk_count"] == 1
    assert "Location" not in response.headers


def test_a_large_document_is_accepted_at_once_and_indexed_in_the_background(app, client):
    text = large_text("quokka")
    assert len(text.encode()) > INLINE
    response = client.post("/api/documents", json={"title": "Marmots", "text": text})
    assert response.status_code == 202, response.json
    document = response.json
    assert document["status"] == "indexing"
    assert document["chunk_count"] == 0
    assert response.headers["Location"] == f"/api/documents/{document['id']}"

    ready = wait_ready(client, document["id"])
    assert ready["status"] == "ready"
    passages, sections, ordinals = stored(app, document["id"])
    assert ready["chunk_count"] == passages > 1
    assert ordinals == list(range(passages))  # each passage once, in document order
    assert sections == len(chunking.split("Marmots", knowledge.normalise(text)))
    with database(app).read() as session:
        hits = knowledge.search(session, "quokka")
    assert [hit.document_id for hit in hits] == [document["id"]]
    listed = client.get("/api/documents").json["items"]
    assert [(item["id"], item["status"]) for item in listed] == [(document["id"], "ready")]


def test_the_same_large_text_again_is_the_same_document(client):
    text = large_text("wombat")
    first = client.post("/api/documents", json={"title": "Marmots", "text": text})
    again = client.post("/api/documents", json={"title": "Other title", "text": text})
    assert (first.status_code, again.status_code) == (202, 200)
    assert again.json["id"] == first.json["id"]
    assert again.json["status"] in ("indexing", "ready")
    wait_ready(client, first.json["id"])
    assert client.get("/api/documents").json["items"][0]["id"] == first.json["id"]
    assert len(client.get("/api/documents").json["items"]) == 1


def test_a_document_deleted_while_indexing_leaves_nothing(app, client):
    # Enough passages for several batches, so that the delete lands while the job runs.
    text = large_text("numbat", paragraphs=3000)
    response = client.post("/api/documents", json={"title": "Marmots", "text": text})
    assert response.status_code == 202
    document_id = response.json["id"]
    assert client.delete(f"/api/documents/{document_id}").status_code == 204
    wait_jobs(document_id)
    assert client.get(f"/api/documents/{document_id}").status_code == 404
    assert stored(app, document_id)[:2] == (0, 0)
    with database(app).read() as session:
        assert knowledge.search(session, "numbat") == []


def _accepted(app, text: str, lease_seconds: float) -> tuple[str, object]:
    """A document accepted for background indexing whose job never started (its worker died)."""
    with database(app).transaction() as session:
        document, created = knowledge.accept(session, "Marmots", text, lease_seconds=lease_seconds)
        assert created
        return document.id, document.lease_until


def test_an_indexing_left_by_a_dead_worker_is_taken_over_by_the_next_read(app, client):
    text = large_text("bilby")
    document_id, lease = _accepted(app, text, lease_seconds=60)
    # The dead worker had stored every passage but not yet said `ready`.
    parts = chunking.split("Marmots", knowledge.normalise(text))
    lease = knowledge._index(database(app), document_id, parts, lease, 60)
    # While its lease runs, nobody takes it over.
    assert client.get(f"/api/documents/{document_id}").json["status"] == "indexing"
    wait_jobs(document_id)
    assert client.get(f"/api/documents/{document_id}").json["status"] == "indexing"
    # Its lease ran out: the next read takes it over.
    with database(app).transaction() as session:
        session.execute(
            update(Document)
            .where(Document.id == document_id)
            .values(lease_until=utcnow() - timedelta(seconds=1))
        )
    ready = wait_ready(client, document_id)
    passages, _, ordinals = stored(app, document_id)
    assert ready["chunk_count"] == passages == sum(len(part.passages) for part in parts)
    assert ordinals == list(range(passages))  # the dead worker's rows were replaced, not doubled


def test_a_job_that_lost_its_lease_writes_nothing_more(app, client):
    text = large_text("dunnart")
    document_id, stale = _accepted(app, text, lease_seconds=-1)  # already run out
    with database(app).transaction() as session:
        taken = knowledge.take_over(session, session.get(Document, document_id), 60)
    assert taken is not None and taken != stale
    # The old worker wakes up and runs its job with the lease it had: nothing is written.
    knowledge.index(database(app), document_id, stale, 60)
    assert stored(app, document_id)[:2] == (0, 0)
    with database(app).read() as session:
        assert session.get(Document, document_id).status == "indexing"
    # A second taker that read the document before the first took it loses the race.
    with database(app).transaction() as session:
        seen = session.get(Document, document_id)
        seen.lease_until = stale  # what it read then
        session.expunge(seen)
        assert knowledge.take_over(session, seen, 60) is None
    # The new holder indexes it.
    knowledge.index(database(app), document_id, taken, 60)
    ready = client.get(f"/api/documents/{document_id}").json
    assert ready["status"] == "ready"
    assert ready["chunk_count"] == stored(app, document_id)[0] > 1


@pytest.mark.parametrize("inline", [False, True], ids=["background", "inline"])
def test_chat_turns_on_the_same_worker_go_on_during_an_ingest(gunicorn, inline):
    """One gevent worker: turns that write while a document is stored are answered. (On
    SQLite a transaction that paused for other requests held the one writer's lock, and a turn
    waiting for it blocked the whole worker: 10 s, then 503 for the turn.)"""
    environ = {"WEB_CONCURRENCY": "1", "RATELIMIT_ENABLED": "false"}
    if inline:
        environ["INGEST_INLINE_BYTES"] = str(2 * 1024 * 1024)
    server = gunicorn(**environ)
    text = large_text("quoll", paragraphs=2500)  # about 500 kB, 2500+ passages
    outcome: dict = {}

    def ingest() -> None:
        status, document = _post(server.url + "/api/documents", {"title": "M", "text": text})
        while status in (200, 201, 202) and document["status"] == "indexing":
            time.sleep(0.05)
            status, document = _get(f"{server.url}/api/documents/{document['id']}")
        outcome.update(status=status, document=document)

    worker = threading.Thread(target=ingest)
    worker.start()
    answered = []
    while worker.is_alive() or not answered:
        status, body = _post(server.url + "/api/chat", {"message": "Where do marmots whistle?"})
        answered.append((status, body.get("code")))
    worker.join()
    # inline: the POST's 201; background: the last GET's 200
    assert outcome["status"] == (201 if inline else 200), outcome
    assert outcome["document"]["status"] == "ready", outcome
    assert set(answered) == {(200, None)}, answered


def _post(url: str, body: dict) -> tuple[int, dict]:
    request = Request(url, json.dumps(body).encode(), {"Content-Type": "application/json"})
    return _open(request)


def _get(url: str) -> tuple[int, dict]:
    return _open(Request(url))


def _open(request: Request) -> tuple[int, dict]:
    try:
        with urlopen(request, timeout=60) as response:
            return response.status, json.loads(response.read())
    except HTTPError as error:
        return error.code, json.loads(error.read() or b"{}")


def _stored_text(app, document_id: str) -> str:
    with database(app).read() as session:
        return session.get(Document, document_id).text


def test_a_documents_text_is_stored_once_in_its_passages(app, client):
    """The text is kept on the document only while it waits to be indexed."""
    small = client.post("/api/documents", json={"title": "Small", "text": "Marmots whistle."})
    assert small.status_code == 201
    assert _stored_text(app, small.json["id"]) == ""
    text = large_text("potoroo")
    document_id, lease = _accepted(app, text, lease_seconds=60)
    assert _stored_text(app, document_id) == knowledge.normalise(text)  # to index from
    knowledge.index(database(app), document_id, lease, 60)
    assert client.get(f"/api/documents/{document_id}").json["status"] == "ready"
    assert _stored_text(app, document_id) == ""
    with database(app).read() as session:
        assert [hit.document_id for hit in knowledge.search(session, "potoroo")] == [document_id]
    # The same text again is still the same document (its hash is kept).
    again = client.post("/api/documents", json={"title": "Again", "text": text})
    assert (again.status_code, again.json["id"]) == (200, document_id)


def test_boilerplate_shared_by_many_documents_is_cited_once(client):
    footer = "Report bugs to the maintainers of the marmot observatory mailing list."
    for n in range(6):
        body = f"# Burrow {n}\n\nBurrow {n} has {n + 2} entrances.\n\n## Bugs\n\n{footer}\n"
        response = client.post("/api/documents", json={"title": f"Burrow {n}", "text": body})
        assert response.status_code == 201
    unique = "The marmot observatory mailing list meets on Mondays to report sightings."
    response = client.post("/api/documents", json={"title": "Observatory", "text": unique})
    assert response.status_code == 201
    with database(client.application).read() as session:
        hits = knowledge.search(session, "report bugs marmot observatory mailing list", k=5)
    snippets = [" ".join(hit.snippet.split()) for hit in hits]
    assert len(snippets) == len(set(snippets)), snippets  # the footer once, not six times
    assert sum(footer in snippet for snippet in snippets) == 1, snippets
    assert any("meets on Mondays" in snippet for snippet in snippets), snippets
