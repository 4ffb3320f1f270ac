"""Collections and metadata filters (issue 21): documents belong to a collection (`default`
unless given); a chat turn may limit its knowledge searches to some collections and to
documents whose metadata holds given values — for the offline agent and for a model's
`search_knowledge` calls alike; the document list filters by collection."""

from __future__ import annotations

import pytest
from fakellm import call, say
from helpers import assert_problem, ok

from chatsvc.db import database
from chatsvc.services import knowledge

LEAVE = "# Leave\n\nEmployees take {days} days of paid leave each year, booked in the portal."


def post(client, title: str, text: str, **extra):
    return ok(client.post("/api/documents", json={"title": title, "text": text, **extra}), 201)


@pytest.fixture
def policies(client) -> dict[str, str]:
    """The same question answered differently by three documents."""
    return {
        "hr": post(client, "HR leave", LEAVE.format(days=25), collection="hr")["id"],
        "legal": post(
            client,
            "Legal leave",
            LEAVE.format(days=30),
            collection="legal",
            metadata={"country": "fr", "year": 2026},
        )["id"],  # fmt: skip
        "default": post(client, "Old leave", LEAVE.format(days=20))["id"],
    }


def cited(body: dict) -> list[str]:
    return [source["document_id"] for source in body["sources"]]


def test_documents_belong_to_a_collection_and_the_list_filters_by_it(client, policies):
    listed = ok(client.get("/api/documents"))["items"]
    assert {item["id"]: item["collection"] for item in listed} == {
        policies["hr"]: "hr", policies["legal"]: "legal", policies["default"]: "default"
    }  # fmt: skip
    only = ok(client.get("/api/documents?collection=legal"))["items"]
    assert [item["id"] for item in only] == [policies["legal"]]
    assert ok(client.get("/api/documents?collection=nothing-here"))["items"] == []
    assert_problem(client.get("/api/documents?collection=Not%20One"), 422, "validation_error")


def test_a_turn_searches_only_the_collections_it_names(client, policies):
    question = "How many days of paid leave do employees take each year?"
    everywhere = ok(client.post("/api/chat", json={"message": question}))
    assert set(cited(everywhere)) <= set(policies.values()) and cited(everywhere)
    for name in ("hr", "legal"):
        body = ok(client.post("/api/chat", json={"message": question, "collections": [name]}))
        assert cited(body) == [policies[name]], body
    both = ok(client.post("/api/chat", json={"message": question, "collections": ["hr", "legal"]}))
    assert set(cited(both)) <= {policies["hr"], policies["legal"]} and cited(both)
    empty = ok(client.post("/api/chat", json={"message": question, "collections": ["none"]}))
    assert empty["sources"] == []  # nothing in that collection: it says it does not know


def test_a_turn_filters_by_document_metadata(client, policies):
    question = "How many days of paid leave do employees take each year?"
    body = ok(
        client.post("/api/chat", json={"message": question, "document_metadata": {"country": "fr"}})
    )
    assert cited(body) == [policies["legal"]]
    other = ok(
        client.post("/api/chat", json={"message": question, "document_metadata": {"country": "de"}})
    )
    assert other["sources"] == []
    # A number in the document's metadata is not the string "2026": values compare exactly.
    typed = ok(
        client.post("/api/chat", json={"message": question, "document_metadata": {"year": "2026"}})
    )
    assert typed["sources"] == []
    # Keys are any string: bound, never a JSON path or SQL (and a NUL matches nothing).
    for key in ('a"b', "$.country", "country') OR 1=1 --", "count\x00ry", "ключ"):
        odd = ok(
            client.post("/api/chat", json={"message": question, "document_metadata": {key: "fr"}})
        )
        assert odd["sources"] == [], key


def test_a_models_search_cannot_leave_the_turns_collections(llm_app, fake_llm, policies):
    client = llm_app().test_client()
    fake_llm.script(call(("search_knowledge", {"query": "paid leave days", "k": 10})), say("ok"))
    body = ok(client.post("/api/chat", json={"message": "Leave?", "collections": ["hr"]}))
    results = body["tool_calls"][0]["result"]["results"]
    assert [hit["document_id"] for hit in results] == [policies["hr"]]


@pytest.mark.parametrize(
    "extra",
    [
        {"collections": []},
        {"collections": ["UPPER"]},
        {"collections": ["a b"]},
        {"collections": ["x" * 65]},
        {"collections": ["ok\n"]},
        {"collections": [f"c{n}" for n in range(11)]},
        {"collections": "hr"},
        {"document_metadata": {}},
        {"document_metadata": {"k": 1}},
        {"document_metadata": {f"k{n}": "v" for n in range(6)}},
        {"document_metadata": {"k": "v" * 201}},
    ],
)
def test_a_malformed_scope_is_422_and_stores_nothing(client, extra):
    assert_problem(
        client.post("/api/chat", json={"message": "Leave?", **extra}), 422, "validation_error"
    )
    assert ok(client.get("/api/documents"))["items"] == []  # nothing else was made either


def test_a_document_in_a_malformed_collection_is_422(client):
    for name in ("", "Capital", "white space", "x" * 65, "../etc"):
        response = client.post(
            "/api/documents", json={"title": "T", "text": "Some text.", "collection": name}
        )
        assert_problem(response, 422, "validation_error")


def test_search_scope_bounds_hold_for_common_words(app, monkeypatch):
    """Words so common that a ranking takes only the newest CANDIDATES of their passages: a
    scoped search takes the newest of the scope's, so an older document of a small collection
    is still found (the bound is applied after the scope, not before)."""
    monkeypatch.setattr(knowledge, "CANDIDATES", 10)
    with database(app).transaction() as session:
        knowledge.ingest(
            session, "Rare", "The report lists the files of the audit.", collection="audit"
        )
        for n in range(40):
            knowledge.ingest(
                session, f"Common {n}", f"The report lists the files of the project {n}."
            )
    with database(app).read() as session:
        scoped = knowledge.search(
            session, "report files", k=5, scope=knowledge.Scope(collections=("audit",))
        )
    assert [hit.title for hit in scoped] == ["Rare"]
