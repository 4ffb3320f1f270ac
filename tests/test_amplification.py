"""Derived data is bounded (contract §1, "Bounded work"): a section path, a snippet, a tool
result and an answer have documented caps, and a heading is stored once, not once per passage.

Before: a 56 kB heading made each cited answer 170 kB, and a 164 kB document took 23 MB of
database."""

from __future__ import annotations

import json

import pytest
from fakellm import call, say
from helpers import chat, ok
from sqlalchemy import text

from chatsvc.agent.local import MAX_LISTED_TASKS
from chatsvc.db import database
from chatsvc.services.chunking import MAX_HEADING_CHARS, MAX_SECTION_CHARS, MAX_SECTIONS
from chatsvc.services.citations import MAX_SOURCES
from chatsvc.services.knowledge import MAX_SNIPPET_CHARS
from chatsvc.services.toolbox import MAX_TOOL_RESULT_CHARS

BODY = "".join(
    f"The marmot number {n} whistles at dawn when a hawk circles the meadow. " for n in range(1500)
)  # ~108 kB of sentences: about a hundred passages under the heading


def long_heading(kind: str) -> str:
    """Heading lines of about 56 kB, crafted several ways."""
    return {
        "words": "# " + "marmot meadow " * 4000,
        "one word": "# " + "m" * 56_000,
        "emoji": "# " + "🦫 " * 28_000,
        "nested": "\n".join("#" * level + " " + "marmot " * 1400 for level in range(1, 7)),
        "closing hashes": "# marmot" + " #" * 28_000,
    }[kind]


HEADINGS = ["words", "one word", "emoji", "nested", "closing hashes"]


def response_chars(response) -> int:
    return len(response.get_data(as_text=True))


@pytest.mark.parametrize("kind", HEADINGS)
def test_a_long_heading_is_capped_in_every_cited_answer(client, kind):
    document = f"{long_heading(kind)}\n\n{BODY}"
    assert len(document) > 150_000
    ok(client.post("/api/documents", json={"title": "Marmots", "text": document}), 201)
    response = client.post("/api/chat", json={"message": "When does the marmot whistle?"})
    body = ok(response)
    results = body["tool_calls"][0]["result"]["results"]
    assert results and body["sources"]
    for hit in results:
        assert len(hit["section"]) <= MAX_SECTION_CHARS
        assert hit["section"].startswith("Marmots › ")
        assert len(hit["snippet"]) <= MAX_SNIPPET_CHARS
    # Three passages of at most 1000 characters, their capped paths, and the answer.
    assert response_chars(response) < 12_000, response_chars(response)


def test_each_heading_name_in_a_path_is_capped(client):
    names = [f"{level}" + "x" * 5000 for level in range(1, 4)]
    headings = "\n".join("#" * level + " " + name for level, name in enumerate(names, 1))
    ok(client.post("/api/documents", json={"title": "T", "text": f"{headings}\n\n{BODY}"}), 201)
    body = ok(client.post("/api/chat", json={"message": "When does the marmot whistle?"}))
    section = body["tool_calls"][0]["result"]["results"][0]["section"]
    parts = section.split(" › ")
    assert parts[0] == "T" and len(parts) >= 2
    assert all(len(part) <= MAX_HEADING_CHARS for part in parts)
    assert parts[1].startswith("1xxx") and parts[1].endswith("…")


def test_an_unbroken_word_gives_capped_snippets(client):
    word = "marmot " + "x" * 150_000 + " marmot"
    ok(client.post("/api/documents", json={"title": "Marmot", "text": word}), 201)
    body = ok(client.post("/api/chat", json={"message": "Tell me about the Marmot"}))
    hits = body["tool_calls"][0]["result"]["results"]
    assert hits and all(len(hit["snippet"]) <= MAX_SNIPPET_CHARS for hit in hits)
    assert all(len(source["snippet"]) <= MAX_SNIPPET_CHARS for source in body["sources"])


def test_a_long_task_list_is_capped_in_the_tool_result_and_the_answer(client):
    total = 300
    for n in range(total):
        title = f"task {n:03d} " + "t" * 180
        ok(client.post("/api/bob/tasks", json={"title": title}), 201)
    response = chat(client, "bob", "show my tasks")
    body = ok(response)
    result = body["tool_calls"][0]["result"]
    assert len(json.dumps(result, ensure_ascii=False)) <= MAX_TOOL_RESULT_CHARS
    assert result["truncated"] is True and 0 < len(result["tasks"]) < total
    lines = body["response"].splitlines()
    assert len(lines) <= MAX_LISTED_TASKS + 2
    assert lines[-1].startswith("… and more")
    assert response_chars(response) < 2 * MAX_TOOL_RESULT_CHARS
    # The history stores what the response said, capped the same way.
    stored = client.get(f"/api/bob/conversations/{body['conversation_id']}").json["messages"][-1]
    assert stored["tool_calls"][0]["result"] == result


def test_a_short_task_list_is_whole(client):
    for n in range(60):
        ok(client.post("/api/carol/tasks", json={"title": f"chore {n}"}), 201)
    body = ok(chat(client, "carol", "show my tasks"))
    result = body["tool_calls"][0]["result"]
    assert len(result["tasks"]) == 60 and "truncated" not in result
    assert body["response"].splitlines()[-1] == f"… and {60 - MAX_LISTED_TASKS} more."


def test_a_model_asking_for_ten_passages_gets_a_capped_tool_result(llm_app, fake_llm):
    client = llm_app().test_client()
    url = "https://example.com/" + "u" * 2000
    for n in range(12):
        document = {"title": f"Marmots {n}", "url": url, "text": f"{long_heading('words')}\n\n"
                    + BODY[n * 5000 : (n + 1) * 5000]}  # fmt: skip
        ok(client.post("/api/documents", json=document), 201)
    fake_llm.script(call(("search_knowledge", {"query": "marmot whistles", "k": 10})), say("ok"))
    body = ok(client.post("/api/chat", json={"message": "marmots?"}))
    result = body["tool_calls"][0]["result"]
    assert result["truncated"] is True and result["results"]
    assert len(json.dumps(result, ensure_ascii=False)) <= MAX_TOOL_RESULT_CHARS
    # The model is sent the same capped result.
    sent = [m for m in fake_llm.requests[-1]["messages"] if m["role"] == "tool"]
    assert len(sent[0]["content"]) <= MAX_TOOL_RESULT_CHARS + 1000


def test_an_answer_citing_nothing_lists_at_most_ten_sources(llm_app, fake_llm):
    client = llm_app().test_client()
    for n in range(30):
        subject = ("marmot", "hawk", "noon")[n % 3]
        text = f"Note {n} is about the {subject}, and only the {subject}."
        ok(client.post("/api/documents", json={"title": f"Note {n}", "text": text}), 201)
    searches = [("search_knowledge", {"query": q, "k": 10}) for q in ("marmot", "hawk", "noon")]
    fake_llm.script(*(call(s) for s in searches), say("Marmots whistle."))  # cites nothing
    response = client.post("/api/chat", json={"message": "marmots?"})
    body = ok(response)
    shown = {hit["chunk_id"] for c in body["tool_calls"] for hit in c["result"]["results"]}
    assert len(shown) > MAX_SOURCES
    assert 0 < len(body["sources"]) <= MAX_SOURCES
    assert response_chars(response) < 4 * MAX_TOOL_RESULT_CHARS


# Database growth -----------------------------------------------------------------------------


def stored_bytes(app) -> int:
    """Bytes the knowledge base's tables hold (rows, indexes, full-text index)."""
    engine = database(app).engine
    with engine.begin() as connection:
        if engine.dialect.name == "postgresql":
            return connection.scalar(
                text(
                    "SELECT sum(pg_total_relation_size(c.oid)) FROM pg_class c"
                    " WHERE c.relname IN ('documents', 'sections', 'chunks')"
                )
            )
        connection.exec_driver_sql("PRAGMA wal_checkpoint(TRUNCATE)")
        pages = connection.exec_driver_sql("PRAGMA page_count").scalar()
        free = connection.exec_driver_sql("PRAGMA freelist_count").scalar()
        return (pages - free) * connection.exec_driver_sql("PRAGMA page_size").scalar()


# Allowed growth per byte of document: its text, its passages (with their overlaps) and the
# full-text index. Measured: 1.1-3.1× for long headings, 5.8× (SQLite) and 9.7× (PostgreSQL)
# for a heading over every line (two thousand tiny rows with their index entries). The
# finding's document took 140 times its size.
GROWTH = 12


@pytest.mark.parametrize(
    "name, document",
    [
        ("56 kB heading", f"{long_heading('words')}\n\n{BODY}"),
        ("six nested long headings", f"{long_heading('nested')}\n\n{BODY}"),
        ("a heading between every line", "".join(f"# h {n}\nline {n}\n" for n in range(12_000))),
        ("a long heading over each paragraph",
         "".join(f"# {'marmot ' * 300}{n}\n\n{BODY[:1000]}\n\n" for n in range(100))),
    ],
)  # fmt: skip
def test_database_growth_is_bounded(app, name, document):
    client = app.test_client()
    before = stored_bytes(app)
    ok(client.post("/api/documents", json={"title": name, "text": document}), 201)
    grown = stored_bytes(app) - before
    size = len(document.encode())
    print(f"{name}: {size} bytes → {grown} bytes stored ({grown / size:.1f}×)")
    assert grown <= GROWTH * size, (name, size, grown)


def test_headings_beyond_the_cap_are_text(client):
    lines = "".join(f"# heading {n}\nline {n}\n" for n in range(MAX_SECTIONS + 500))
    document = ok(client.post("/api/documents", json={"title": "Many", "text": lines}), 201)
    assert document["chunk_count"] < MAX_SECTIONS + 100
    # The text after the cap is still searchable, under the last section read.
    body = ok(client.post("/api/chat", json={"message": f"heading {MAX_SECTIONS + 400}"}))
    sections = {hit["section"] for hit in body["tool_calls"][0]["result"]["results"]}
    assert f"Many › heading {MAX_SECTIONS - 1}" in sections
