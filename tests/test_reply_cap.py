"""A model that never stops talking: its answer is cut at MAX_REPLY_CHARS, the provider's stream
is closed, and the turn completes with the bounded answer stored (contract §1 "Bounded work")."""

from __future__ import annotations

from fakellm import endless
from helpers import history, sse_events, wait_for

from chatsvc.agent.openai import MAX_REPLY_CHARS


def test_an_endless_answer_is_cut_at_the_cap_and_stored(llm_app, fake_llm):
    app = llm_app(AGENT_TIMEOUT_SECONDS=30.0)
    client = app.test_client()
    fake_llm.script(endless(chunk_delay=0))
    response = client.post(
        "/api/alice/chat", json={"message": "talk forever"}, headers={"Accept": "text/event-stream"}
    )
    events = sse_events(response)
    done = events[-1][2]
    assert events[-1][0] == "done" and done["status"] == "completed"
    deltas = "".join(data["text"] for name, _, data in events if name == "delta")
    assert deltas == done["response"] and len(deltas) == MAX_REPLY_CHARS
    assert done["usage"]["completion_tokens"] > 0  # estimated: the stream never said
    stored = history(client, "alice", done["conversation_id"])[-1]
    assert len(stored["content"]) == MAX_REPLY_CHARS
    agent = app.extensions["chatsvc.turns"].agent
    assert wait_for(lambda: sum(agent.in_flight()) == 0), "the provider's stream was closed"
