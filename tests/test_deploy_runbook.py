"""docs/runbook.md is seeded into the knowledge base with the other docs, so the offline agent
answers an operator's question from it, citing it."""

from __future__ import annotations

from helpers import ok

QUESTIONS = {
    "How do I rotate the JWT secret key?": "JWT_SECRETS",
    "What do I do when Redis is lost?": "ChatsvcRateLimitStorageErrors",
    "What should I do about stuck turns?": "ChatsvcStuckTurns",
}


def test_the_agent_answers_operators_from_the_runbook_with_a_citation(make_app):
    app = make_app()
    seeded = app.test_cli_runner().invoke(args=["kb", "seed"])
    assert seeded.exit_code == 0, seeded.output
    assert "docs/runbook.md" in seeded.output
    client = app.test_client()
    for question, expected in QUESTIONS.items():
        answer = ok(client.post("/api/chat", json={"message": question}))
        titles = [source["title"] for source in answer["sources"]]
        assert "chatsvc runbook" in titles, (question, titles)
        assert expected in answer["response"], (question, answer["response"])
