"""The knowledge assistant: documents, full-text retrieval in the database, citations."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from fakes import ScriptedAgent
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from chatsvc.agent.base import Reply
from chatsvc.auth import create_token
from chatsvc.db import database
from chatsvc.services import knowledge

CORPUS = Path(__file__).parent / "corpus"
SECRET = "s" * 32
# question → the corpus document that answers it
QUESTIONS = {
    "How often should I feed my sourdough starter?": "sourdough",
    "When do I need to replace a bike chain?": "bicycle-chain",
    "How do I know when a houseplant needs water?": "houseplants",
    "How should I protect my password vault?": "passwords",
    "How do I squash commits together?": "git-rebase",
    "What is the best time to visit tide pools?": "tide-pools",
    "What temperature should the water be for pour-over coffee?": "pour-over",
    "What should I not put in my compost heap?": "composting",
    "Which knot makes a loop that does not slip?": "knots",
    "What should I do for a burn?": "burns",
    "Which direction should solar panels face?": "solar-panels",
    "How do birds find their way when migrating?": "bird-migration",
    "Why do stratovolcanoes erupt explosively?": "volcanoes",
    "How did the Romans bring water into cities?": "aqueducts",
    "How long should I train for a marathon?": "marathon",
    "On which wheels do snow chains go?": "snow-chains",
}
NASTY = [
    '"', '""', "'", "*", "^", "-", "!", ":", "(", ")))", "NEAR(a b)", "a AND OR NOT b",
    "title:secret", "text : x", '"unterminated', "x'; DROP TABLE chunks; --", "\\", "%_%",
    "<->", "&|!", ":*", "a:*B", "{}[]", "🔥🦛", "שלום עולם", "‮rtl‏", "é" * 300,
    "word " * 400, "1e999", "-- comment", "/* c */", "NULL", "OR", "AND NOT", "$1", "?",
]  # fmt: skip


def post_document(client, name: str, **headers):
    body = (CORPUS / f"{name}.md").read_text()
    title = body.splitlines()[0].lstrip("# ")
    return client.post("/api/documents", json={"title": title, "text": body}, headers=headers)


@pytest.fixture
def corpus(client) -> dict[str, str]:
    """Every corpus document, ingested through the API: name → document id."""
    ids = {}
    for path in sorted(CORPUS.glob("*.md")):
        response = post_document(client, path.stem)
        assert response.status_code == 201, response.json
        ids[path.stem] = response.json["id"]
    return ids


def bearer(user: str, *, admin: bool = False) -> dict[str, str]:
    return {"Authorization": f"Bearer {create_token(user, secret=SECRET, admin=admin)}"}


def sse_events(response) -> list[tuple[str, dict]]:
    events = []
    for block in response.get_data(as_text=True).strip().split("\n\n"):
        lines = dict(line.split(": ", 1) for line in block.splitlines() if ": " in line)
        if "event" in lines:
            events.append((lines["event"], json.loads(lines["data"])))
    return events


# Retrieval ------------------------------------------------------------------------------


def test_recall_at_3_on_the_fixture_corpus(app, corpus):
    by_id = {v: k for k, v in corpus.items()}
    found = 0
    with app.app_context(), database(app).sessions() as session:
        for question, expected in QUESTIONS.items():
            hits = knowledge.search(session, question, 3)
            found += expected in {by_id[hit.document_id] for hit in hits}
    recall = found / len(QUESTIONS)
    backend = app.config["DATABASE_URL"].split(":")[0]
    print(f"recall@3 on {backend}: {recall:.2f} ({found}/{len(QUESTIONS)})")
    assert recall >= 0.9


def test_nasty_queries_never_fail(client, corpus):
    for message in NASTY:
        response = client.post("/api/chat", json={"message": message[:4000]})
        assert response.status_code == 200, (message, response.json)


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(query=st.text(max_size=200))
def test_any_query_text_is_safe_to_search(app, query):
    with app.app_context(), database(app).sessions() as session:
        assert isinstance(knowledge.search(session, query, 5), list)


# Citations ------------------------------------------------------------------------------


def test_answers_cite_their_sources(client, corpus):
    response = client.post("/api/chat", json={"message": "How should I water houseplants?"})
    assert response.status_code == 200
    body = response.json
    assert body["sources"], body
    first = body["sources"][0]
    assert set(first) == {"document_id", "title", "url", "chunk_id", "snippet", "score"}
    assert first["document_id"] == corpus["houseplants"]
    assert first["title"] == "Watering houseplants"
    assert "[1]" in body["response"]
    assert "water" in first["snippet"].lower()

    history = client.get(f"/api/session/{body['session_id']}").json["messages"]
    assert history[-1]["sources"] == body["sources"]


def test_streamed_sources_match_the_stored_answer(client, corpus):
    response = client.post(
        "/api/chat",
        json={"message": "How do I fit snow chains?"},
        headers={"Accept": "text/event-stream"},
    )
    events = sse_events(response)
    names = [name for name, _ in events]
    assert names.index("sources") < names.index("done")
    streamed = dict(events)["sources"]["sources"]
    done = dict(events)["done"]
    assert streamed and streamed == done["sources"]
    assert streamed[0]["document_id"] == corpus["snow-chains"]
    history = client.get(f"/api/session/{done['session_id']}").json["messages"]
    assert history[-1]["sources"] == streamed


def test_an_unrelated_question_gets_i_dont_know(client, corpus):
    response = client.post("/api/chat", json={"message": "Who won the football world cup?"})
    assert response.status_code == 200
    assert "don't know" in response.json["response"]
    assert response.json["sources"] == []


def test_user_turns_may_search_the_knowledge_base_too(client, corpus):
    response = client.post(
        "/api/alice/chat", json={"message": "Which knot makes a loop that does not slip?"}
    )
    assert response.status_code == 200
    assert response.json["sources"][0]["document_id"] == corpus["knots"]
    assert "bowline" in response.json["response"].lower()


def test_any_agent_gets_citations_from_the_toolbox(make_app):
    """An agent that searches and cites [n] (as a model would) gets `sources` without
    building them itself."""

    def answer(turn, tools):
        call = tools.call("search_knowledge", {"query": "Arctic tern migration"})
        ref = call.result["results"][0]["ref"]
        return Reply(f"The Arctic tern flies pole to pole [{ref}].", "scripted", [call])

    app = make_app(agent=ScriptedAgent([answer]))
    client = app.test_client()
    document = post_document(client, "bird-migration").json
    body = client.post("/api/chat", json={"message": "tern?"}).json
    assert [s["document_id"] for s in body["sources"]] == [document["id"]]
    assert body["tool_calls"][0]["tool"] == "search_knowledge"


# Documents ------------------------------------------------------------------------------


def test_posting_the_same_text_again_returns_the_stored_document(client):
    first = post_document(client, "tea")
    assert first.status_code == 201
    assert first.json["chunk_count"] >= 1
    assert set(first.json) >= {"id", "title", "url", "chunk_count", "created_at"}
    again = client.post(
        "/api/documents",
        json={"title": "Another title", "text": (CORPUS / "tea.md").read_text() + "\n\n"},
    )
    assert again.status_code == 200
    assert again.json["id"] == first.json["id"]
    assert len(client.get("/api/documents").json["items"]) == 1


def test_documents_are_listed_newest_first_a_page_at_a_time(client):
    ids = [post_document(client, name).json["id"] for name in ("tea", "knots", "burns")]
    page = client.get("/api/documents?limit=2").json
    assert [d["id"] for d in page["items"]] == ids[::-1][:2]
    rest = client.get(f"/api/documents?limit=2&cursor={page['next_cursor']}").json
    assert [d["id"] for d in rest["items"]] == ids[:1]
    assert rest["next_cursor"] is None
    assert client.get(f"/api/documents/{ids[0]}").json["title"] == "Green, black and oolong tea"


def test_a_deleted_document_leaves_search_at_once(client):
    document = post_document(client, "lighthouses").json
    question = {"message": "What does a Fresnel lens do in a lighthouse?"}
    assert client.post("/api/chat", json=question).json["sources"]
    assert client.delete(f"/api/documents/{document['id']}").status_code == 204
    assert client.get(f"/api/documents/{document['id']}").status_code == 404
    after = client.post("/api/chat", json=question).json
    assert after["sources"] == []
    assert "don't know" in after["response"]
    assert post_document(client, "lighthouses").status_code == 201  # can come back


@pytest.mark.parametrize("document_id", ["nope", "x" * 300, "00000000-0000-0000-0000-000000000000"])
def test_unknown_or_malformed_document_ids_are_404(client, document_id):
    for method in (client.get, client.delete):
        response = method(f"/api/documents/{document_id}")
        assert response.status_code == 404
        assert response.json["code"] == "not_found"


def test_documents_have_their_own_body_limit(make_app):
    config = {"MAX_DOCUMENT_BYTES": 200_000, "INGEST_INLINE_BYTES": 200_000}  # indexed inline
    client = make_app(config).test_client()
    paragraph = "Lighthouses guide ships along dangerous coasts at night. " * 20 + "\n\n"
    big = client.post("/api/documents", json={"title": "Big", "text": paragraph * 90})
    assert big.status_code == 201  # above MAX_CONTENT_LENGTH (64 KiB), within the document limit
    assert big.json["chunk_count"] > 50
    too_big = client.post("/api/documents", json={"title": "Huge", "text": "x" * 250_000})
    assert too_big.status_code == 413
    assert too_big.json["code"] == "payload_too_large"
    assert too_big.headers["Content-Type"] == "application/problem+json"


@pytest.mark.parametrize(
    "body",
    [
        {"text": "no title"},
        {"title": "no text"},
        {"title": "", "text": "empty title"},
        {"title": "blank", "text": "  \n "},
        {"title": "nul", "text": "a\x00b"},
        {"title": "two\nlines", "text": "x"},
        {"title": "t" * 201, "text": "x"},
        {"title": "bad url", "text": "x", "url": "javascript:alert(1)"},
        {"title": "bad metadata", "text": "x", "metadata": ["not", "an", "object"]},
        {"title": "unknown field", "text": "x", "author": "me"},
    ],
)
def test_invalid_documents_are_422(client, body):
    response = client.post("/api/documents", json=body)
    assert response.status_code == 422
    assert response.json["code"] == "validation_error"


def test_list_limits_are_validated(client):
    for query in ("limit=0", "limit=101", "cursor=garbage"):
        assert client.get(f"/api/documents?{query}").status_code == 422


def test_writing_needs_an_admin_when_auth_is_required(make_app):
    client = make_app({"AUTH_MODE": "required", "JWT_SECRET": SECRET}).test_client()
    assert post_document(client, "tea").status_code == 401
    assert post_document(client, "tea", **bearer("bob")).status_code == 403
    created = post_document(client, "tea", **bearer("root", admin=True))
    assert created.status_code == 201
    path = f"/api/documents/{created.json['id']}"
    assert client.get("/api/documents").status_code == 401
    assert client.get(path).status_code == 401
    assert client.get("/api/documents", headers=bearer("bob")).json["items"][0]["title"]
    assert client.get(path, headers=bearer("bob")).status_code == 200
    assert client.delete(path, headers=bearer("bob")).status_code == 403
    assert client.delete(path, headers=bearer("root", admin=True)).status_code == 204


# Command line ---------------------------------------------------------------------------


def test_cli_ingest_is_idempotent(app, runner, client, tmp_path):
    (tmp_path / "nested").mkdir()
    (tmp_path / "nested" / "tea.md").write_text((CORPUS / "tea.md").read_text())
    (tmp_path / "notes.txt").write_text("Knots: the bowline makes a loop that does not slip.\n")
    (tmp_path / "image.png").write_bytes(b"\x89PNG")
    first = runner.invoke(args=["kb", "ingest", str(tmp_path)])
    assert first.exit_code == 0, first.output
    assert first.output.count("ingested") == 2
    second = runner.invoke(args=["kb", "ingest", str(tmp_path)])
    assert second.output.count("unchanged") == 2
    titles = sorted(d["title"] for d in client.get("/api/documents").json["items"])
    assert titles == ["Green, black and oolong tea", "notes"]
    listing = runner.invoke(args=["kb", "list"]).output.splitlines()
    assert len(listing) == 2
    doomed = listing[0].split()[0]
    assert runner.invoke(args=["kb", "delete", doomed]).exit_code == 0
    assert runner.invoke(args=["kb", "delete", doomed]).exit_code != 0
    assert len(client.get("/api/documents").json["items"]) == 1


def test_seed_fills_only_an_empty_knowledge_base(runner, client):
    first = runner.invoke(args=["kb", "seed"])
    assert first.exit_code == 0, first.output
    seeded = client.get("/api/documents?limit=100").json["items"]
    assert len(seeded) >= 5
    assert "nothing to seed" in runner.invoke(args=["kb", "seed"]).output
    answer = client.post("/api/chat", json={"message": "How do I configure the rate limit?"})
    assert "RATELIMIT_CHAT" in answer.json["response"]
    assert answer.json["sources"][0]["title"] == "Rate limits"


def test_migrations_match_the_models_with_the_full_text_index_in_place(app, runner):
    """The FTS5 table / tsvector column live only in the migrations; autogenerate sees no drift."""
    result = runner.invoke(args=["db", "check"])
    assert result.exit_code == 0, result.output


def test_every_citation_can_be_opened(client):
    """A citation's url is the document's own, or a link into GET /api/documents/{id}."""
    own = client.post(
        "/api/documents",
        json={"title": "Returns", "text": "Items can be returned within 30 days of delivery.",
              "url": "https://example.com/returns"},
    ).json  # fmt: skip
    bare = client.post(
        "/api/documents",
        json={"title": "Refunds", "text": "Refunds are paid within 30 days of a return."},
    ).json
    body = client.post("/api/chat", json={"message": "How many days for returns and refunds?"}).json
    urls = {source["document_id"]: source["url"] for source in body["sources"]}
    assert urls[own["id"]] == "https://example.com/returns"
    link = urls[bare["id"]]
    assert link.startswith(f"/api/documents/{bare['id']}#chunk-")
    assert client.get(link.split("#")[0]).json["title"] == "Refunds"
