"""Isolation, route by route (contract §1 Auth, Sessions): another user, or nobody, can neither
read nor change what is alice's, and cannot tell her ids from made-up ones (the same answer
for both) — in AUTH_MODE optional and required."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Any

import pytest
from helpers import ok

from chatsvc import auth

SECRET = "i" * 40


def bearer(user: str, *, admin: bool = False) -> dict[str, str]:
    return {"Authorization": "Bearer " + auth.create_token(user, secret=SECRET, admin=admin)}


ALICE, BOB, ROOT = bearer("alice"), bearer("bob"), bearer("root", admin=True)
SSE = {"Accept": "text/event-stream"}

# (method, path template, JSON body, extra headers, which of alice's ids it is probed with)
CONVERSATION_IDS = ("conversation", "session", "anonymous")
SESSION_IDS = ("conversation", "session")
ROUTES: list[tuple[str, str, Any, dict[str, str], tuple[str, ...]]] = [
    ("get", "/api/{me}/conversations/{id}", None, {}, CONVERSATION_IDS),
    ("delete", "/api/{me}/conversations/{id}", None, {}, CONVERSATION_IDS),
    ("post", "/api/{me}/chat", {"message": "mine now", "conversation_id": "{id}"}, {},
     CONVERSATION_IDS),
    ("post", "/api/{me}/chat", {"message": "mine now", "conversation_id": "{id}"}, SSE,
     CONVERSATION_IDS),
    ("post", "/api/{me}/chat", {"message": "mine now", "conversation_id": "{id}"},
     {"Idempotency-Key": "probe"}, CONVERSATION_IDS),
    ("get", "/api/session/{id}", None, {}, SESSION_IDS),
    ("post", "/api/session/{id}/reset", None, {}, SESSION_IDS),
    ("post", "/api/chat/{id}", {"message": "mine now"}, {}, SESSION_IDS),
    ("post", "/api/chat/{id}", {"message": "mine now"}, SSE, SESSION_IDS),
    ("get", "/api/{me}/tasks/{id}", None, {}, ("task",)),
    ("patch", "/api/{me}/tasks/{id}", {"completed": True}, {}, ("task",)),
    ("delete", "/api/{me}/tasks/{id}", None, {}, ("task",)),
]  # fmt: skip


@dataclass
class World:
    client: Any
    mode: str
    ids: dict[str, str]

    def alices_view(self) -> dict[str, Any]:
        """Everything alice can see, to compare before and after the others tried."""
        ids = self.ids
        paths = {
            "conversations": "/api/alice/conversations",
            "conversation": f"/api/alice/conversations/{ids['conversation']}",
            "session": f"/api/session/{ids['session']}",
            "anonymous": f"/api/session/{ids['anonymous']}",
            "tasks": "/api/alice/tasks",
            "usage": "/api/alice/usage",
            "document": f"/api/documents/{ids['document']}",
        }
        return {name: ok(self.client.get(path, headers=ALICE)) for name, path in paths.items()}


@pytest.fixture(params=["optional", "required"])
def world(request, make_app) -> World:
    settings = {"AUTH_MODE": request.param, "JWT_SECRET": SECRET, "ALLOW_ANONYMOUS_SESSIONS": True}
    client = make_app(settings).test_client()

    def made(path: str, body: dict[str, Any], field: str, headers: dict[str, str], status=200):
        return str(ok(client.post(path, json=body, headers=headers), status)[field])

    ids = {
        "conversation": made("/api/alice/chat", {"message": "plan"}, "conversation_id", ALICE),
        "session": made("/api/chat", {"message": "alice asks"}, "session_id", ALICE),
        "anonymous": made("/api/chat", {"message": "someone asks"}, "session_id", {}),
        "task": made("/api/alice/tasks", {"title": "alice's task"}, "task_id", ALICE, 201),
        "document": made("/api/documents", {"title": "kb", "text": "shared"}, "id", ROOT, 201),
    }
    return World(client, request.param, ids)


def probe(world: World, route, target: str, me: str, headers: dict[str, str]):
    method, template, body, extra, _ = route
    fill = {"me": me, "id": target}
    if body is not None:
        body = {k: v.format(**fill) if isinstance(v, str) else v for k, v in body.items()}
    response = getattr(world.client, method)(
        template.format(**fill), json=body, headers={**headers, **extra}
    )
    assert response.headers["X-Content-Type-Options"] == "nosniff"
    return response


def answer(response) -> tuple[int, str | None, str | None]:
    if response.mimetype == "text/event-stream":  # a stream that started: a leak
        return response.status_code, "stream", response.get_data(as_text=True)
    body = response.get_json(silent=True) or {}
    return response.status_code, body.get("code"), body.get("detail")


def callers(mode: str) -> list[tuple[str, dict[str, str], str, set[int]]]:
    """(who, headers, path user, the statuses they may get for alice's ids)."""
    nobody_status = {404} if mode == "optional" else {401, 404}  # sessions: 404 either way
    return [
        ("bob", BOB, "bob", {404}),
        ("nobody", {}, "bob", nobody_status),
        ("bob on alice's path", BOB, "alice", {403, 404}),  # 403 on user routes, whatever the id
    ]


def test_no_one_reads_changes_or_probes_what_is_alices(world, subtests):
    before = world.alices_view()
    unknown = {"task": "987654"}
    for who, headers, me, allowed in callers(world.mode):
        for route in ROUTES:
            for name in route[4]:
                with subtests.test(who=who, route=f"{route[0]} {route[1]} {route[3]}", id=name):
                    theirs = answer(probe(world, route, world.ids[name], me, headers))
                    made_up = answer(
                        probe(world, route, unknown.get(name, str(uuid.uuid4())), me, headers)
                    )
                    assert theirs[0] in allowed, theirs
                    assert theirs == made_up, "alice's id answers like a made-up one"
    assert world.alices_view() == before, "nothing of alice's changed"


def test_lists_and_usage_show_only_the_callers_own(world):
    client = world.client
    ok(client.post("/api/bob/chat", json={"message": "bob's own"}, headers=BOB))
    conversations = ok(client.get("/api/bob/conversations", headers=BOB))["items"]
    assert [c["title"] for c in conversations] == ["bob's own"]
    assert ok(client.get("/api/bob/tasks", headers=BOB))["items"] == []
    assert [day["turns"] for day in ok(client.get("/api/bob/usage", headers=BOB))["items"]] == [1]
    alices = ok(client.get("/api/alice/usage", headers=ALICE))["items"]
    assert [day["turns"] for day in alices] == [2]  # her conversation and her session
    for path in ("conversations", "tasks", "usage"):
        refused = client.get(f"/api/alice/{path}", headers=BOB)
        assert refused.status_code == 403 and refused.json["code"] == "forbidden"
        if world.mode == "required":
            assert client.get(f"/api/alice/{path}").status_code == 401


def test_the_knowledge_base_is_shared_for_reading_and_written_by_admins_only(world):
    client, document = world.client, world.ids["document"]
    assert client.delete(f"/api/documents/{document}", headers=BOB).status_code == 403
    refused = client.post("/api/documents", json={"title": "mine", "text": "mine"}, headers=BOB)
    assert refused.status_code == 403
    if world.mode == "required":
        assert client.get(f"/api/documents/{document}").status_code == 401
        assert client.delete(f"/api/documents/{document}").status_code == 401
    assert ok(client.get(f"/api/documents/{document}", headers=BOB))["title"] == "kb"
    assert len(ok(client.get("/api/documents", headers=BOB))["items"]) == 1
