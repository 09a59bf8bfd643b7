"""Cancellation and backpressure: a client that goes away frees its KV blocks in the scheduler, an
overloaded router answers 429 / RESOURCE_EXHAUSTED at once, and neither leaves anything behind."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from typing import Any

import grpc
import httpx2 as httpx
import pytest
from loopback import LoopThread
from router_harness import Router, scheduler_stats, start_router, wait_idle

from cairn.common.errors import DeadlineExceeded
from cairn.services.router.admission import AdmissionGate, RetryLater
from cairn.v1 import common_pb2, inference_pb2

# Far longer than any test waits for: only an abort ends these early.
LONG = {
    "model": "tiny",
    "prompt": "Count to a thousand:",
    "max_tokens": 1800,
    "ignore_eos": True,
    "temperature": 0,
}


def long_grpc_request() -> inference_pb2.GenerateRequest:
    return inference_pb2.GenerateRequest(
        model="tiny",
        text=LONG["prompt"],
        options=inference_pb2.GenerationOptions(
            sampling=common_pb2.SamplingParams(temperature=0.0),
            stop=common_pb2.StopCriteria(max_tokens=1800, ignore_eos=True),
        ),
    )


def wait_for(condition: Any, what: str, timeout: float = 60.0) -> None:
    end = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > end:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.02)


def generated(router: Router) -> int:
    return scheduler_stats(router.runtime.config.deployments["tiny"][0]).generated_tokens


def assert_clean(router: Router, generated_before: int | None = None) -> None:
    """Nothing of a finished or cancelled request is left in the router or the scheduler; with
    `generated_before`, the one request since then was aborted (it never reached max_tokens)."""
    core = router.runtime.core
    wait_for(lambda: core.gate.running == 0 and core.gate.waiting == 0, "the router's slots to free")
    assert all(r.inflight == 0 for r in router.runtime.table.replicas)
    stats = wait_idle(router.runtime.config.deployments["tiny"][0])
    assert stats.free_blocks == sum(w.num_blocks for w in stats.workers)
    if generated_before is not None:
        assert stats.generated_tokens - generated_before < LONG["max_tokens"]


def running_sequences(router: Router) -> int:
    return scheduler_stats(router.runtime.config.deployments["tiny"][0]).running


def test_http_stream_disconnect_aborts_and_frees_blocks(router: Router) -> None:
    before = generated(router)
    with (
        httpx.Client(base_url=router.http_url, timeout=60) as http,
        http.stream("POST", "/v1/completions", json={**LONG, "stream": True}) as response,
    ):
        assert response.status_code == 200
        # Holding the iterator keeps the connection open (dropping it would close it).
        lines = (line for line in response.iter_lines() if line.startswith("data:"))
        assert next(lines).startswith("data: {")
        assert running_sequences(router) == 1
    # The connection closed mid-stream.
    assert_clean(router, before)


def test_http_client_leaving_a_whole_response_aborts_it(router: Router) -> None:
    before = generated(router)

    async def leave_early() -> None:
        async with httpx.AsyncClient(base_url=router.http_url) as http:
            request = asyncio.ensure_future(http.post("/v1/completions", json=LONG))
            await asyncio.to_thread(wait_for, lambda: running_sequences(router) == 1, "the request to run")
            request.cancel()
            with pytest.raises(asyncio.CancelledError):
                await request

    asyncio.run(leave_early())
    assert_clean(router, before)


def test_grpc_cancel_and_deadline_abort_in_the_scheduler(router: Router) -> None:
    with grpc.insecure_channel(router.address) as channel:
        stub = router.stub(channel)
        before = generated(router)
        call = stub.GenerateStream(long_grpc_request())
        assert next(call).deltas
        call.cancel()
        assert_clean(router, before)

        before = generated(router)
        with pytest.raises(grpc.RpcError) as error:
            stub.Generate(long_grpc_request(), timeout=0.5)
        assert error.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        assert_clean(router, before)


@pytest.fixture
def tight(loop: LoopThread, backends: dict[str, Any]) -> Iterator[Router]:
    """A router that runs one request at a time and queues one more."""
    served = start_router(loop, **backends, max_running=1, max_queue=1, retry_after_s=3)
    yield served
    served.stop()


def test_overloaded_router_answers_429_and_resource_exhausted_then_recovers(tight: Router) -> None:
    gate = tight.runtime.core.gate
    with grpc.insecure_channel(tight.address) as channel:
        stub = tight.stub(channel)
        running = stub.GenerateStream(long_grpc_request())
        assert next(running).deltas
        queued = stub.GenerateStream(long_grpc_request())
        wait_for(lambda: gate.waiting == 1, "the second request to queue")

        with httpx.Client(base_url=tight.http_url, timeout=60) as http:
            refused = http.post("/v1/completions", json={**LONG, "max_tokens": 4})
        assert refused.status_code == 429 and refused.headers["Retry-After"] == "3"
        assert "capacity" in refused.json()["error"]["message"]
        with pytest.raises(grpc.RpcError) as error:
            stub.Generate(long_grpc_request())
        assert error.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert dict(error.value.trailing_metadata())["retry-after"] == "3"

        # The queued request leaves the queue when its client does, without ever running.
        queued.cancel()
        wait_for(lambda: gate.waiting == 0, "the queue to empty")
        assert gate.running == 1
        running.cancel()
    assert_clean(tight)

    with httpx.Client(base_url=tight.http_url, timeout=60) as http:
        assert http.post("/v1/completions", json={**LONG, "max_tokens": 4}).status_code == 200
        # The prompts of one call share its slot, so a batch never waits for itself.
        batch = http.post("/v1/completions", json={**LONG, "prompt": ["a", "b", "c"], "max_tokens": 4})
        assert batch.status_code == 200 and len(batch.json()["choices"]) == 3
    assert_clean(tight)


def test_gate_hands_slots_over_in_order_and_gives_up_at_the_deadline() -> None:
    async def scenario() -> list[str]:
        gate = AdmissionGate(max_running=1, max_queue=2)
        order: list[str] = []
        release = asyncio.Event()

        async def job(name: str, hold: bool) -> None:
            async with gate.slot():
                order.append(name)
                if hold:
                    await release.wait()

        first = asyncio.ensure_future(job("first", True))
        await asyncio.sleep(0)
        waiters = [asyncio.ensure_future(job(n, False)) for n in ("second", "third")]
        await asyncio.sleep(0)
        assert gate.waiting == 2
        with pytest.raises(RetryLater):
            async with gate.slot():
                pass
        with pytest.raises(DeadlineExceeded):
            async with AdmissionGate(max_running=0, max_queue=1).slot(timeout=0.01):
                pass
        release.set()
        await asyncio.gather(first, *waiters)
        assert gate.running == 0 and gate.waiting == 0
        return order

    assert asyncio.run(scenario()) == ["first", "second", "third"]
