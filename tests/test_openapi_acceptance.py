"""/openapi.json states what the running instance enforces (issue 15, "also found"): data that
the document calls valid is not refused by validation, in either auth mode. Stricter than
schemathesis's "mostly rejected generated data" warning, which counts only operations that
answered nothing but 4xx."""

from __future__ import annotations

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis import GenerationMode

from chatsvc import auth

SECRET = "o" * 40
EXAMPLES = 15


def refusals(operation, headers_for) -> tuple[int, list[str]]:
    """How many positive (documented-valid) cases the operation got, and the validation
    refusals among them: 400s, and 422s other than a made-up cursor (opaque by contract) or a
    reused Idempotency-Key (the generator reuses keys across bodies)."""
    calls: list[int] = []
    refused: list[str] = []

    @given(case=operation.as_strategy(generation_mode=GenerationMode.POSITIVE))
    @settings(
        max_examples=EXAMPLES, deadline=None, derandomize=True, database=None,
        suppress_health_check=list(HealthCheck),
    )  # fmt: skip
    def run(case) -> None:
        response = case.call(headers=headers_for(case))
        calls.append(response.status_code)
        if response.status_code not in (400, 422):
            return
        body = response.json()
        if "error" in body:  # the OpenAI-compatible API's envelope (/v1)
            if _positional(body["error"]):
                return
            refused.append(body["error"]["message"])
            return
        fields = {name for where in body.get("errors", {}).values() for name in where}
        if body["code"] == "idempotency_mismatch" or fields == {"cursor"}:
            return
        refused.append(body["detail"])

    run()
    return len(calls), refused


def _positional(error: dict) -> bool:
    """A rule on /v1 that depends on a message's place in the list, which OpenAPI 3.0 cannot
    state: the last message is the user's, and that one (the new message) is 1..MAX_MESSAGE_CHARS
    characters once trimmed. tests/test_openai_api.py covers both."""
    param = error.get("param") or ""
    if error["code"] != "validation_error":
        return False
    return param in ("messages", "input") or (
        param.startswith(("messages[", "input[")) and param.endswith(".content")
    )


def rejected_operations(app, headers_for) -> dict[str, list[str]]:
    """Operations that refused one in ten or more of their documented-valid cases (the rate at
    which schemathesis warns of "mostly rejected generated data"), with why."""
    schema = schemathesis.openapi.from_wsgi("/openapi.json", app)
    found: dict[str, list[str]] = {}
    for result in schema.get_all_operations():
        operation = result.ok()
        total, refused = refusals(operation, headers_for)
        if total and len(refused) / total >= 0.1:
            found[operation.label] = sorted(set(refused))
    return found


@pytest.mark.parametrize("mode", ["optional", "required"])
def test_no_operation_rejects_the_data_its_document_calls_valid(make_app, mode):
    app = make_app({"AUTH_MODE": mode, "JWT_SECRET": SECRET})
    token = auth.create_token("fuzzer", secret=SECRET, admin=True)
    client = app.test_client()
    headers = {"Authorization": f"Bearer {token}"}
    for title in ("one", "two", "three"):  # tasks 1-3 exist, so PATCH has something to change
        assert (
            client.post("/api/fuzzer/tasks", json={"title": title}, headers=headers).status_code
            == 201
        )

    def as_fuzzer(case) -> dict[str, str]:
        if "user_id" in (case.path_parameters or {}):
            case.path_parameters["user_id"] = "fuzzer"
        if "task_id" in (case.path_parameters or {}):
            case.path_parameters["task_id"] = 1 + case.path_parameters["task_id"] % 3
        return headers

    assert rejected_operations(app, as_fuzzer) == {}
