"""Schema-driven fuzzing: every operation of /openapi.json, with generated valid and invalid
requests, answers no 5xx and nothing its documentation does not promise.

Driven through schemathesis's Python API and hypothesis directly: schemathesis's pytest plugin
(4.32) does not run under pytest 9."""

from __future__ import annotations

import hashlib
import json

import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode
from schemathesis.specs.openapi.checks import positive_data_acceptance

from chatsvc import auth

EXAMPLES = 5  # per operation and mode: enough to find a 5xx, small enough for ~12 s per backend
# (spec, operation, mode) found to have nothing to make invalid: hypothesis gives up only after
# ~460 rejected draws (over half the first test's CPU time, for no request); the same document
# gives the same answer on the next backend (the examples are derandomized), so it is asked once.
UNSATISFIABLE: set[tuple[str, str, GenerationMode]] = set()


def test_every_operation_keeps_its_documented_promises(app):
    modes = (GenerationMode.POSITIVE, GenerationMode.NEGATIVE)
    failures = fuzz(app, modes)
    assert not failures, "\n\n".join(failures)


def test_every_operation_keeps_its_promises_to_a_signed_in_user(make_app):
    """AUTH_MODE=required, each request with an admin's token for the path's user: the runs
    reach the views behind the auth checks (chat turns, task and document writes)."""
    secret = "f" * 40
    app = make_app({"AUTH_MODE": "required", "JWT_SECRET": secret})
    token = auth.create_token("fuzzer", secret=secret, admin=True)

    def as_fuzzer(case) -> dict[str, str]:
        if "user_id" in case.path_parameters:
            case.path_parameters["user_id"] = "fuzzer"
        return {"Authorization": f"Bearer {token}"}

    failures = fuzz(app, (GenerationMode.POSITIVE,), as_fuzzer)
    assert not failures, "\n\n".join(failures)


def fuzz(app, modes, prepare=lambda case: None) -> list[str]:
    """Every operation in each mode; the failures, described."""
    schema = schemathesis.openapi.from_wsgi("/openapi.json", app)
    document = hashlib.sha256(json.dumps(schema.raw_schema, sort_keys=True).encode()).hexdigest()
    failures: list[str] = []
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) >= 15
    for operation in operations:
        for mode in modes:
            if (document, operation.label, mode) in UNSATISFIABLE:
                continue

            @given(case=operation.as_strategy(generation_mode=mode))
            @settings(
                max_examples=EXAMPLES,
                deadline=None,
                derandomize=True,  # the same examples every run: failures reproduce
                database=None,
                suppress_health_check=list(HealthCheck),
            )
            def check(case) -> None:
                headers = prepare(case)
                # A cursor is an opaque string: a made-up one is 422 by contract, not a bug.
                case.call_and_validate(headers=headers, excluded_checks=[positive_data_acceptance])

            try:
                check()
            except Unsatisfiable:  # nothing to make invalid: no body, no constrained parameter
                UNSATISFIABLE.add((document, operation.label, mode))
                continue
            except Exception as failure:  # collect them all, then report
                failures.append(f"{operation.label} ({mode}): {failure}")
    return failures
