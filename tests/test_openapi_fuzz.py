"""Schema-driven fuzzing: every operation of /openapi.json, with generated valid and invalid
requests, answers no 5xx and nothing its documentation does not promise.

Driven through schemathesis's Python API and hypothesis directly: schemathesis's pytest plugin
(4.32) does not run under pytest 9."""

from __future__ import annotations

import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode
from schemathesis.specs.openapi.checks import positive_data_acceptance

EXAMPLES = 5  # per operation and mode: enough to find a 5xx, small enough for ~12 s per backend


def test_every_operation_keeps_its_documented_promises(app):
    schema = schemathesis.openapi.from_wsgi("/openapi.json", app)
    failures: list[str] = []
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) >= 15
    for operation in operations:
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):

            @given(case=operation.as_strategy(generation_mode=mode))
            @settings(
                max_examples=EXAMPLES,
                deadline=None,
                derandomize=True,  # the same examples every run: failures reproduce
                database=None,
                suppress_health_check=list(HealthCheck),
            )
            def check(case) -> None:
                # A cursor is an opaque string: a made-up one is 422 by contract, not a bug.
                case.call_and_validate(excluded_checks=[positive_data_acceptance])

            try:
                check()
            except Unsatisfiable:
                continue  # nothing to make invalid: an operation without parameters or body
            except Exception as failure:  # collect them all, then report
                failures.append(f"{operation.label} ({mode}): {failure}")
    assert not failures, "\n\n".join(failures)
