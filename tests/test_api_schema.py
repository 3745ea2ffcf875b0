"""Requests generated from /openapi.json (schemathesis) find no 5xx and no answer outside the
spec: every status, body and header the server sends is one the document describes.

Schemathesis' "schema-valid data is accepted" check is left out on purpose: some rules
cannot be said in JSON Schema (a tool message needs ``tool_call_id``, a ``callback_url``
needs WEBHOOK_SECRET, the total size limit), so such bodies get a documented 422.
"""

from __future__ import annotations

import re
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode
from schemathesis.specs.openapi.checks import negative_data_rejection, positive_data_acceptance

TOKEN = "schema-token-" + uuid.uuid4().hex


@pytest.fixture(scope="module")
def api_schema(api_server_factory: Any) -> Any:
    """The document the real `ezq api` serves, loaded over HTTP."""
    server = api_server_factory(EZQ_API_TOKENS=TOKEN)
    return schemathesis.openapi.from_url(f"{server.url}/openapi.json")


@pytest.mark.parametrize("mode", [GenerationMode.POSITIVE, GenerationMode.NEGATIVE])
def test_generated_requests_stay_within_the_spec(api_schema: Any, mode: GenerationMode) -> None:
    """Each generated request (valid ones, and ones that break the schema), on every
    operation, gets a documented status with a body matching its schema, never a 5xx."""
    operations = [result.ok() for result in api_schema.get_all_operations()]
    assert {op.label for op in operations} >= {
        "POST /v1/jobs",
        "GET /v1/jobs",
        "GET /v1/jobs/{job_id}",
        "POST /v1/jobs/{job_id}/cancel",
        "GET /v1/conversations/{conversation_id}",
    }
    # Random negative cases here check what the server answers to invalid data (never a
    # 5xx, only documented statuses and bodies). Whether it rejects them is checked by the
    # seeded CLI run below: at random, schemathesis also reports "accepted" for mutations
    # the wire cannot carry (a one-element array in a query string, a header this test
    # sets itself), which made this run fail now and then on requests that were valid.
    excluded = [positive_data_acceptance]
    if mode is GenerationMode.NEGATIVE:
        excluded.append(negative_data_rejection)
    for operation in operations:

        @given(case=operation.as_strategy(generation_mode=mode))
        # derandomize: the same examples every run, as far as the schema allows.
        @settings(
            max_examples=60,
            deadline=None,
            derandomize=True,
            suppress_health_check=list(HealthCheck),
        )
        def check(case: Any) -> None:
            case.call_and_validate(
                headers={"Authorization": f"Bearer {TOKEN}"},
                excluded_checks=excluded,
            )

        try:
            check()
        except Unsatisfiable:
            # Nothing to break: the operation takes no parameters and no body (/healthz).
            assert mode is GenerationMode.NEGATIVE and operation.label == "GET /healthz"


# pytest-timeout's 120 s (pyproject) would cut the run short under load; the subprocess
# has its own 600 s limit, and this leaves the server's start and stop a minute on top.
@pytest.mark.timeout(660)
def test_schemathesis_cli_finds_nothing(api_server_factory: Any, tmp_path: Any) -> None:
    """`st run` with every phase (examples, coverage, fuzzing, stateful) and every check but
    positive-data acceptance reports no failure against the real server."""
    server = api_server_factory(EZQ_API_TOKENS=TOKEN)
    st = Path(sys.executable).with_name("st")
    done = subprocess.run(
        [str(st), "run", f"{server.url}/openapi.json",
         "-H", f"Authorization: Bearer {TOKEN}", "--mode", "all", "--max-examples", "30",
         "--request-timeout", "10", "--exclude-checks", "positive_data_acceptance",
         "--seed", "1"],
        capture_output=True, text=True, timeout=600, cwd=tmp_path,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout[-4000:]
    assert "passed" in done.stdout
    selected = re.search(r"(\d+) selected / (\d+) total", done.stdout)
    assert selected and selected.group(1) == selected.group(2) and int(selected.group(1)) >= 6
