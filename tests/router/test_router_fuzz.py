"""Property-based fuzzing of the HTTP API against its own OpenAPI schema (schemathesis).

Bodies that fit the schema and bodies that do not are sent to a router whose
only deployment has a 128-token context, so generations stay short; most
name that deployment, so they get past model lookup into validation and
generation. Whatever arrives, the answer is never a 5xx, never a crash, and
its status and content type are ones the schema declares.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from loopback import LoopThread
from prometheus_client import REGISTRY
from router_harness import Router, start_router, wait_idle
from schemathesis import GenerationMode
from schemathesis.checks import content_type_conformance, not_a_server_error, status_code_conformance

MAX_EXAMPLES = 40


@pytest.fixture(scope="module")
def fuzz_router(loop: LoopThread, backends: dict[str, Any]) -> Iterator[Router]:
    short = {"tiny-short": backends["deployments"]["tiny-short"]}
    served = start_router(loop, tokenizer_address=backends["tokenizer_address"], deployments=short)
    yield served
    assert served.runtime.core.gate.running == 0 and served.runtime.core.gate.waiting == 0
    for address in short["tiny-short"]:
        wait_idle(address)
    served.stop()


def statuses() -> dict[tuple[str, str], float]:
    """Requests answered so far, by route and status (the router's own counter)."""
    return {
        (sample.labels["route"], sample.labels["status"]): sample.value
        for metric in REGISTRY.collect()
        if metric.name == "cairn_router_http_requests"
        for sample in metric.samples
        if sample.name.endswith("_total")
    }


def operations(router: Router) -> list[Any]:
    schema = schemathesis.openapi.from_url(f"{router.http_url}/openapi.json")
    return [result.ok() for result in schema.get_all_operations()]


@pytest.mark.parametrize("mode", [GenerationMode.POSITIVE, GenerationMode.NEGATIVE], ids=lambda m: m.value)
def test_fuzzed_requests_never_get_a_server_error(fuzz_router: Router, mode: GenerationMode) -> None:
    before = statuses()
    found = operations(fuzz_router)
    assert {f"{o.method.upper()} {o.path}" for o in found} >= {
        "POST /v1/completions",
        "POST /v1/chat/completions",
        "GET /v1/models",
        "GET /health",
    }
    for operation in found:
        if mode is GenerationMode.NEGATIVE and not operation.body:
            # Nothing to get wrong in a request without a body or parameters.
            continue

        @settings(
            max_examples=MAX_EXAMPLES,
            deadline=None,
            suppress_health_check=list(HealthCheck),
            derandomize=True,
        )
        @given(case=operation.as_strategy(mode))
        def fuzz(case: Any) -> None:
            if isinstance(case.body, dict) and "model" in case.body:
                case.body["model"] = "tiny-short"
            case.call_and_validate(
                base_url=fuzz_router.http_url,
                checks=[not_a_server_error, status_code_conformance, content_type_conformance],
                timeout=120,
            )

        fuzz()
    seen = {
        key: count - before.get(key, 0) for key, count in statuses().items() if count > before.get(key, 0)
    }
    assert not [key for key in seen if key[1].startswith("5")], seen
    if mode is GenerationMode.POSITIVE:
        # The fuzz got past validation into real generations, not only into error paths.
        assert seen.get(("/v1/completions", "200")) and seen.get(("/v1/chat/completions", "200")), seen
