"""Conversations: search (full-text over titles and message text), rename, export (§4)."""

from __future__ import annotations

import json
from pathlib import Path

from helpers import assert_problem, chat, ok

CORPUS = Path(__file__).parent / "corpus" / "aqueducts.md"


def start(client, message: str, user: str = "alice") -> str:
    return ok(chat(client, user, message))["conversation_id"]


def search(client, q: str, user: str = "alice", **params) -> list[dict]:
    query = "&".join(f"{k}={v}" for k, v in {"q": q, **params}.items())
    return ok(client.get(f"/api/{user}/conversations?{query}"))["items"]


def test_search_titles_and_messages_newest_first_with_a_snippet(client):
    groceries = start(client, "Add a task to purchase groceries for the weekend")
    dentist = start(client, "Remind me about the dentist")
    chat(client, "alice", "Add a task to purchase soy yoghurt", conversation_id=dentist)
    hello = start(client, "hello there")
    ok(client.patch(f"/api/alice/conversations/{hello}", json={"title": "Holiday planning"}))
    start(client, "Add a task to buy groceries", user="bob")

    found = search(client, "groceries")
    assert [c["id"] for c in found] == [groceries]  # bob's conversation stays his
    assert "groceries" in found[0]["match"].lower()
    assert set(found[0]) == {
        "id", "kind", "title", "created_at", "last_activity", "message_count", "match"
    }  # fmt: skip

    found = search(client, "purchase")  # both, newest activity first
    assert [c["id"] for c in found] == [dentist, groceries]
    assert "yoghurt" in found[0]["match"].lower()  # the better-matching message of the two

    assert [c["id"] for c in search(client, "holiday")] == [hello]  # a renamed title
    assert search(client, "holiday")[0]["match"] == "Holiday planning"
    assert [c["id"] for c in search(client, "soy yoghurt")] == [dentist]  # every word
    assert search(client, "soy groceries") == []
    assert [c["id"] for c in search(client, "DENTIST")] == [dentist]
    assert [c["id"] for c in search(client, "weekends")] == [groceries]  # stemmed, both DBs
    # The list without q has no match field.
    assert all("match" not in c for c in ok(client.get("/api/alice/conversations"))["items"])


def test_search_pages(client):
    made = [start(client, f"Add a task to water plant number {n}") for n in range(5)]
    page = ok(client.get("/api/alice/conversations?q=water&limit=2"))
    seen = [c["id"] for c in page["items"]]
    while page["next_cursor"]:
        url = f"/api/alice/conversations?q=water&limit=2&cursor={page['next_cursor']}"
        page = ok(client.get(url))
        seen += [c["id"] for c in page["items"]]
    assert seen == list(reversed(made))


def test_search_text_is_words_never_fts_syntax(client, subtests):
    target = start(client, "Add a task to fix the garden gate")
    syntax = ['"garden"', "garden*", "gate)", "NEAR(garden gate)", "garden AND gate", "(garden)",
              "garden:gate", "^garden", "garden%20-gate", "garden%27", "garden%25"]  # fmt: skip
    for q in syntax:
        with subtests.test(q):
            assert [c["id"] for c in search(client, q)] == [target]
    for q in ["garden OR nothing", "title:garden", "content:gate"]:
        with subtests.test(q):  # OR is no operator, and column filters are plain words
            assert search(client, q) == []
    assert search(client, "the") == []  # only a stop word: nothing to match on either backend


BAD_Q = ["", "%21%21%21", "%22%22", "*", "AND%20OR%20NOT", "NEAR()", "-%3A%5E%28%29", "x" * 201]


def test_word_less_search_is_422(client, subtests):
    start(client, "hello")
    for q in BAD_Q:
        with subtests.test(q):
            response = client.get(f"/api/alice/conversations?q={q}")
            problem = assert_problem(response, 422, "validation_error")
            assert "q" in problem["errors"]["query"]


def test_snippet_is_capped(client):
    long = "searchable " + " ".join(["supercalifragilistic"] * 180)  # 24 words > 200 chars
    start(client, long)
    match = search(client, "searchable")[0]["match"]
    assert 0 < len(match) <= 200 and "searchable" in match


def test_deleted_messages_leave_the_search(client):
    doomed = start(client, "Add a task to feed the cat")
    assert [c["id"] for c in search(client, "cat")] == [doomed]
    assert client.delete(f"/api/alice/conversations/{doomed}").status_code == 204
    assert search(client, "cat") == []


def test_rename(client, subtests):
    cid = start(client, "hello")
    renamed = ok(client.patch(f"/api/alice/conversations/{cid}", json={"title": "  Trip  "}))
    assert renamed["title"] == "Trip" and renamed["id"] == cid
    assert ok(client.get(f"/api/alice/conversations/{cid}"))["title"] == "Trip"
    for body in [{}, {"title": ""}, {"title": "x" * 201}, {"title": "a\nb"}, {"title": 3},
                 {"title": "ok", "kind": "session"}]:  # fmt: skip
        with subtests.test(repr(body)):
            response = client.patch(f"/api/alice/conversations/{cid}", json=body)
            assert_problem(response, 422, "validation_error")
    assert_problem(
        client.patch(f"/api/bob/conversations/{cid}", json={"title": "x"}), 404, "not_found"
    )
    assert_problem(
        client.patch("/api/alice/conversations/nope", json={"title": "x"}), 404, "not_found"
    )
    assert ok(client.get(f"/api/alice/conversations/{cid}"))["title"] == "Trip"


def conversation_with_everything(client) -> str:
    """A tool call, a citation (to a document without a url) and plain replies."""
    ok(client.post("/api/documents", json={"title": "Aqueducts", "text": CORPUS.read_text()}), 201)
    cid = start(client, "How did Roman aqueducts carry water?")
    chat(client, "alice", "Add a task to buy milk", conversation_id=cid)
    return cid


def test_export_json_has_every_message_tool_call_and_citation(client):
    cid = conversation_with_everything(client)
    response = client.get(f"/api/alice/conversations/{cid}/export")
    assert response.status_code == 200 and response.mimetype == "application/json"
    assert response.headers["Content-Disposition"] == (
        f'attachment; filename="conversation-{cid}.json"'
    )
    exported = json.loads(response.get_data(as_text=True))
    history = ok(client.get(f"/api/alice/conversations/{cid}?limit=100"))
    assert exported["messages"] == history["messages"]
    assert [m["role"] for m in exported["messages"]] == ["user", "assistant"] * 2
    tools = [call["tool"] for m in exported["messages"] for call in m["tool_calls"]]
    assert "search_knowledge" in tools and "add_task" in tools
    assert exported["messages"][1]["sources"][0]["title"] == "Aqueducts"
    assert exported["exported_at"].endswith("Z") and exported["title"] == history["title"]


def test_export_is_not_cut_to_a_page(client):
    cid = start(client, "hello 0")
    for n in range(1, 60):
        chat(client, "alice", f"hello {n}", conversation_id=cid)
    exported = ok(client.get(f"/api/alice/conversations/{cid}/export?format=json"))
    assert len(exported["messages"]) == 120 == exported["message_count"]
    assert exported["messages"][-2]["content"] == "hello 59"


def test_export_markdown(client):
    cid = conversation_with_everything(client)
    response = client.get(f"/api/alice/conversations/{cid}/export?format=markdown")
    assert response.status_code == 200 and response.mimetype == "text/markdown"
    assert response.headers["Content-Disposition"] == (
        f'attachment; filename="conversation-{cid}.md"'
    )
    text = response.get_data(as_text=True)
    assert text.startswith("# How did Roman aqueducts carry water?\n")
    assert text.count("## User") == 2 and text.count("## Assistant") == 2
    assert "`search_knowledge`" in text and "`add_task`" in text and '"buy milk"' in text
    document = ok(client.get("/api/documents"))["items"][0]["id"]
    assert f"1. [Aqueducts](/api/documents/{document}#chunk-0)" in text  # a citation that opens
    assert ok(client.get(f"/api/documents/{document}"))["title"] == "Aqueducts"
    for message in ok(client.get(f"/api/alice/conversations/{cid}"))["messages"]:
        assert message["content"].split("\n")[0] in text


def test_export_errors(client):
    cid = start(client, "hello")
    assert_problem(client.get(f"/api/bob/conversations/{cid}/export"), 404, "not_found")
    assert_problem(client.get("/api/alice/conversations/nope/export"), 404, "not_found")
    response = client.get(f"/api/alice/conversations/{cid}/export?format=pdf")
    assert "format" in assert_problem(response, 422, "validation_error")["errors"]["query"]
