"""Message text, fuzzed (contract §1 Limits): any Unicode round-trips verbatim (trimmed) from a
chat POST to the history and to the agent; NUL, other C0 controls and lone surrogates are 422;
bytes that are not UTF-8 are a 400 problem. Never a 500, never a partial write."""

from __future__ import annotations

import json

import pytest
from fakes import ScriptedAgent
from helpers import assert_problem, ok
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

ALLOWED_CONTROLS = "\t\n\r"
FORBIDDEN = [chr(c) for c in range(0x20) if chr(c) not in ALLOWED_CONTROLS]
# Characters that have broken chat services: bidi overrides and isolates, marks, joiners, BOM,
# line and paragraph separators, NEL, DEL, C1 controls, astral emoji, combining marks.
TRICKY = list(
    "\u200e\u200f\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069\u061c\u200b\u200c"
    "\u200d\ufeff\u2028\u2029\x85\x7f\x80\x9f\u0301\u0336\ufffd\uffff"
) + ["\U0001f600", "\U0001f469\u200d\U0001f4bb", "\U0010ffff", "\u05e9\u05dc\u05d5\u05dd"]

text_char = st.characters(exclude_categories=("Cs",), exclude_characters="".join(FORBIDDEN))
valid_messages = (
    st.lists(st.one_of(text_char, st.sampled_from(TRICKY)), min_size=1, max_size=120)
    .map("".join)
    .filter(lambda text: text.strip())
)
invalid_messages = st.tuples(
    st.text(text_char, max_size=30),
    st.sampled_from([*FORBIDDEN, "\ud800", "\udbff", "\udc00", "\udfff"]),
    st.text(text_char, max_size=30),
).map("".join)


def _is_utf8(data: bytes) -> bool:
    try:
        data.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


# Overlong encodings, encoded surrogates, code points past U+10FFFF, stray continuation bytes,
# truncated sequences, Latin-1 and UTF-16 text: among other bytes.
NOT_UTF8 = [b"\xc0\xaf", b"\xed\xa0\x80", b"\xf4\x90\x80\x80", b"\x80", b"\xe2\x82", b"\xff\xfe"]
invalid_bytes = st.one_of(
    st.sampled_from(NOT_UTF8), st.binary(min_size=1, max_size=12).filter(lambda b: not _is_utf8(b))
)
FUZZ = settings(
    max_examples=30,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


@pytest.fixture
def agent():
    return ScriptedAgent()


@pytest.fixture
def client(make_app, agent):
    return make_app(agent=agent).test_client()


@FUZZ
@given(message=valid_messages)
def test_any_unicode_round_trips_verbatim(client, agent, message):
    body = ok(client.post("/api/alice/chat", json={"message": message}))
    stored = message.strip()
    assert agent.turns[-1].message == stored, "the agent gets the text as sent"
    assert body["response"] == f"echo: {stored}"
    detail = ok(client.get(f"/api/alice/conversations/{body['conversation_id']}"))
    assert [m["content"] for m in detail["messages"]] == [stored, f"echo: {stored}"]
    session = ok(client.post("/api/chat", json={"message": message}))
    state = ok(client.get(f"/api/session/{session['session_id']}"))
    assert state["messages"][0]["content"] == stored


@FUZZ
@given(message=invalid_messages)
def test_nul_c0_controls_and_lone_surrogates_are_422(client, agent, message):
    for path in ("/api/alice/chat", "/api/chat"):
        problem = assert_problem(
            client.post(path, json={"message": message}), 422, "validation_error"
        )
        assert "message" in problem["errors"]["json"]
    assert agent.turns == []


@FUZZ
@given(junk=invalid_bytes, before=st.text(text_char, max_size=10))
def test_bytes_that_are_not_utf8_are_a_400_problem(client, agent, junk, before):
    raw = b'{"message": "' + json.dumps(before)[1:-1].encode() + junk + b'"}'
    for path in ("/api/alice/chat", "/api/chat", "/api/alice/tasks"):
        response = client.post(path, data=raw, content_type="application/json")
        assert response.status_code in (400, 422), response.get_data(as_text=True)
        assert_problem(response, response.status_code, response.json["code"])
    assert agent.turns == []


def test_the_longest_message_of_astral_characters_is_accepted_and_one_more_is_not(client):
    """MAX_MESSAGE_CHARS counts characters (code points), not bytes or UTF-16 units."""
    longest = "\U0001f600" * 4000  # 16 000 bytes of UTF-8, 8000 UTF-16 units
    body = ok(client.post("/api/alice/chat", json={"message": longest}))
    detail = ok(client.get(f"/api/alice/conversations/{body['conversation_id']}"))
    assert detail["messages"][0]["content"] == longest
    too_long = client.post("/api/alice/chat", json={"message": longest + "\U0001f600"})
    assert_problem(too_long, 422, "validation_error")


def test_escaped_and_raw_utf8_are_the_same_message(client):
    text = "\u05e9\u05dc\u05d5\u05dd \u202eevil\u202c \U0001f600"
    escaped = json.dumps({"message": text}).encode()
    raw = json.dumps({"message": text}, ensure_ascii=False).encode()
    assert escaped != raw
    for data in (escaped, raw):
        body = ok(client.post("/api/alice/chat", data=data, content_type="application/json"))
        assert body["response"] == f"echo: {text}"
