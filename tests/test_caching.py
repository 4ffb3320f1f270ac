"""ETag / If-None-Match (contract §4): conversations, sessions, tasks and documents, lists and
items; the tag changes exactly when what the response shows changes."""

from __future__ import annotations

from helpers import chat, ok


def tag_of(client, path: str) -> str:
    response = client.get(path)
    assert response.status_code == 200, response.get_data(as_text=True)
    assert response.headers["Cache-Control"] == "private, no-cache"
    etag = response.headers["ETag"]
    assert etag.startswith('"') and etag.endswith('"') and len(etag) > 8
    return etag


def assert_not_modified(client, path: str, etag: str) -> None:
    response = client.get(path, headers={"If-None-Match": etag})
    assert response.status_code == 304, response.get_data(as_text=True)
    assert response.get_data() == b""
    assert response.headers["ETag"] == etag
    assert response.headers["Cache-Control"] == "private, no-cache"


def assert_modified(client, path: str, old: str) -> str:
    response = client.get(path, headers={"If-None-Match": old})
    assert response.status_code == 200 and response.get_json() is not None
    assert response.headers["ETag"] != old
    return response.headers["ETag"]


def test_tasks_list_and_item(client):
    ok(client.post("/api/alice/tasks", json={"title": "buy milk"}), 201)
    ok(client.post("/api/alice/tasks", json={"title": "walk the dog"}), 201)
    paths = ["/api/alice/tasks", "/api/alice/tasks/1", "/api/alice/tasks?status=pending"]
    tags = {path: tag_of(client, path) for path in paths}
    for path, etag in tags.items():
        assert_not_modified(client, path, etag)
        assert tag_of(client, path) == etag  # stable while nothing changes

    ok(client.patch("/api/alice/tasks/1", json={"priority": "high"}))  # an edit
    for path, etag in tags.items():
        tags[path] = assert_modified(client, path, etag)

    ok(client.patch("/api/alice/tasks/2", json={"completed": True}))  # not the item's task
    assert_not_modified(client, "/api/alice/tasks/1", tags["/api/alice/tasks/1"])
    for path in ("/api/alice/tasks", "/api/alice/tasks?status=pending"):
        tags[path] = assert_modified(client, path, tags[path])

    before = tag_of(client, "/api/alice/tasks")
    assert client.delete("/api/alice/tasks/2").status_code == 204  # a delete
    assert_modified(client, "/api/alice/tasks", before)
    assert_not_modified(
        client, "/api/alice/tasks?status=pending", tags["/api/alice/tasks?status=pending"]
    )
    assert client.get("/api/alice/tasks/2", headers={"If-None-Match": before}).status_code == 404


def test_another_users_changes_leave_my_tags_alone(client):
    ok(client.post("/api/alice/tasks", json={"title": "mine"}), 201)
    etag = tag_of(client, "/api/alice/tasks")
    ok(client.post("/api/bob/tasks", json={"title": "his"}), 201)
    assert_not_modified(client, "/api/alice/tasks", etag)


def test_conversation_list_and_item(client):
    first = ok(chat(client, "alice", "Add a task to buy milk"))
    cid = first["conversation_id"]
    item, listing = f"/api/alice/conversations/{cid}", "/api/alice/conversations"
    tags = {item: tag_of(client, item), listing: tag_of(client, listing)}
    for path, etag in tags.items():
        assert_not_modified(client, path, etag)

    ok(chat(client, "alice", "what are my tasks?", conversation_id=cid))  # a new message
    for path, etag in tags.items():
        tags[path] = assert_modified(client, path, etag)

    other = ok(chat(client, "alice", "hello"))["conversation_id"]
    assert_not_modified(client, item, tags[item])
    tags[listing] = assert_modified(client, listing, tags[listing])
    assert client.delete(f"/api/alice/conversations/{other}").status_code == 204  # a delete
    assert_modified(client, listing, tags[listing])


def test_session_state(client):
    sid = ok(client.post("/api/chat", json={"message": "hello"}))["session_id"]
    path = f"/api/session/{sid}"
    etag = tag_of(client, path)
    assert_not_modified(client, path, etag)
    ok(client.post(f"/api/chat/{sid}", json={"message": "and again"}))
    etag = assert_modified(client, path, etag)
    ok(client.post(f"/api/session/{sid}/reset"))
    assert_modified(client, path, etag)


def test_documents_list_and_item(client):
    made = ok(client.post("/api/documents", json={"title": "Aqueducts", "text": "Water."}), 201)
    listing, item = "/api/documents", f"/api/documents/{made['id']}"
    tags = {listing: tag_of(client, listing), item: tag_of(client, item)}
    for path, etag in tags.items():
        assert_not_modified(client, path, etag)
    ok(client.post("/api/documents", json={"title": "Roads", "text": "Stones."}), 201)
    tags[listing] = assert_modified(client, listing, tags[listing])
    assert_not_modified(client, item, tags[item])
    assert client.delete(item).status_code == 204
    assert_modified(client, listing, tags[listing])


def test_conditional_headers_edge_cases(client):
    ok(client.post("/api/alice/tasks", json={"title": "buy milk"}), 201)
    etag = tag_of(client, "/api/alice/tasks/1")
    listed = {"If-None-Match": f'"nope", {etag}'}
    assert client.get("/api/alice/tasks/1", headers=listed).status_code == 304
    assert (
        client.get("/api/alice/tasks/1", headers={"If-None-Match": "W/" + etag}).status_code == 304
    )
    assert client.get("/api/alice/tasks/1", headers={"If-None-Match": "*"}).status_code == 304
    for junk in ('"other"', "garbage", '"' + "x" * 5000 + '"', ""):
        assert client.get("/api/alice/tasks/1", headers={"If-None-Match": junk}).status_code == 200
    # A tag never turns an unknown resource or a bad query into a 304.
    assert client.get("/api/alice/tasks/9", headers={"If-None-Match": "*"}).status_code == 404
    bad = client.get("/api/alice/tasks?sort=title", headers={"If-None-Match": "*"})
    assert bad.status_code == 422
