"""Routing: several deployments, prefix affinity across scheduler replicas, least load otherwise,
unknown models named, and replicas that fail taken out of rotation."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import httpx2 as httpx
import pytest
from loopback import LoopThread
from router_harness import (
    SHORT_CONTEXT,
    InProcessScheduler,
    Router,
    scheduler_config,
    scheduler_stats,
    start_router,
    wait_idle,
)

from cairn.common.errors import NotFound, Unavailable
from cairn.services.router.prefix_affinity import PrefixAffinity, prompt_block_hashes
from cairn.services.router.routing import DeploymentInfo, RoutingTable
from cairn.v1 import inference_pb2

INFO = DeploymentInfo(
    model="tiny@1",
    max_model_len=128,
    vocab_size=2048,
    eos_token_ids=(1,),
    block_size=4,
    adapters={"tiny-lora": "l@1"},
)


def with_table(check: Any) -> None:
    """Run `check(table)` on a table of two replicas (never contacted) inside an event loop."""

    async def run() -> None:
        table = RoutingTable({"tiny": ["10.0.0.1:1", "10.0.0.2:1"], "other": ["10.0.0.3:1"]}, max_imbalance=2)
        for replica in table.replicas[:2]:
            replica.info = INFO
        try:
            check(table)
        finally:
            await table.close()

    asyncio.run(run())


def test_prefix_hashes_chain_whole_blocks_per_cache_key() -> None:
    a = prompt_block_hashes(list(range(10)), 4, None)
    assert len(a) == 2 and a == prompt_block_hashes([*range(8), 99, 98], 4, None)
    assert prompt_block_hashes([0, 1, 2, 9, 4, 5, 6, 7], 4, None)[1] != a[1]
    assert prompt_block_hashes(list(range(8)), 4, "adapter") != a
    affinity = PrefixAffinity(capacity=3)
    affinity.record(a, "r1")
    assert affinity.lookup(prompt_block_hashes(list(range(12)), 4, None)) == ("r1", 2)
    affinity.record(prompt_block_hashes([7] * 8, 4, None), "r2")
    assert len(affinity) == 3 and affinity.lookup(a) == (None, 0)


def test_least_load_spreads_and_affinity_sticks_within_the_imbalance() -> None:
    def check(table: RoutingTable) -> None:
        target = table.find("tiny")
        r1, r2 = target.replicas
        # Distinct prompts, equal load: turns alternate.
        assert {table.choose(target, [i] * 8).address for i in range(2)} == {r1.address, r2.address}
        shared = list(range(40))
        owner = table.choose(target, [*shared, 1])
        with table.lease(owner), table.lease(owner):
            # Two more requests there than on the other: still within max_imbalance=2.
            assert table.choose(target, [*shared, 2]) is owner
            with table.lease(owner):
                other = table.choose(target, [*shared, 3])
                assert other is not owner
        # The prefix now lives on `other` as well; its latest owner wins.
        assert table.choose(target, [*shared, 4]) is other
        assert table.choose(target, shared, exclude=[other]) is owner

    with_table(check)


def test_names_resolve_to_deployments_adapters_and_sources() -> None:
    def check(table: RoutingTable) -> None:
        assert table.find("tiny-lora").adapter == "tiny-lora"
        assert table.find("tiny@1").deployment == "tiny"
        assert table.find("nope") is None

    with_table(check)

    async def resolve_missing() -> None:
        table = RoutingTable({"tiny": ["127.0.0.1:1"]})
        try:
            with pytest.raises(NotFound, match="available models: tiny"):
                await table.resolve("gpt-5")
            with pytest.raises(Unavailable, match="no scheduler of 'tiny' is reachable"):
                await table.resolve("tiny")
        finally:
            await table.close()

    asyncio.run(resolve_missing())


def completion(http: httpx.Client, prompt: str) -> dict[str, Any]:
    body = {"model": "tiny-short", "prompt": prompt, "max_tokens": 2, "temperature": 0}
    response = http.post("/v1/completions", json=body)
    assert response.status_code == 200, response.text
    return response.json()


def finished(pair: list[InProcessScheduler]) -> list[int]:
    return [scheduler_stats(s.address).finished_requests for s in pair]


def test_shared_prefixes_meet_on_one_replica_and_hit_its_cache(
    router: Router, short_pair: list[InProcessScheduler]
) -> None:
    system = "You are a careful assistant who answers in one short sentence. " * 2
    with httpx.Client(base_url=router.http_url, timeout=60) as http:
        before = finished(short_pair)
        results = [completion(http, f"{system}Question {i}?") for i in range(6)]
        after = finished(short_pair)
        assert sorted(b - a for a, b in zip(before, after, strict=True)) == [0, 6]
        assert all(r["usage"]["prompt_tokens_details"]["cached_tokens"] >= 16 for r in results[1:])

        # Prompts sharing nothing go to the least loaded replica, the one with fewer requests so far
        # on ties: the other replica catches up, then turns alternate.
        before = after
        for i in range(8):
            completion(http, f"{i} unrelated prompt number {i * 7919}")
        after = finished(short_pair)
        assert all(b - a >= 1 for a, b in zip(before, after, strict=True))
    assigned = [r.assigned for r in router.runtime.table.replicas if r.deployment == "tiny-short"]
    assert max(assigned) - min(assigned) <= 1


@pytest.fixture
def spare(loop: LoopThread, tiny_model_dir: Path) -> Iterator[InProcessScheduler]:
    scheduler = InProcessScheduler(
        loop, scheduler_config(tiny_model_dir, "tiny-short", SHORT_CONTEXT, num_blocks=64)
    )
    yield scheduler


def test_a_replica_that_goes_away_costs_no_request(
    loop: LoopThread,
    backends: dict[str, Any],
    short_pair: list[InProcessScheduler],
    spare: InProcessScheduler,
) -> None:
    deployments = {"tiny-short": [spare.address, short_pair[0].address]}
    served = start_router(loop, tokenizer_address=backends["tokenizer_address"], deployments=deployments)
    try:
        with httpx.Client(base_url=served.http_url, timeout=60) as http:
            completion(http, "warm up both")
            spare.stop()
            # Turns alternate, so some of these go to the stopped replica first and are retried.
            for i in range(4):
                completion(http, f"after the loss {i}")
        stopped = next(r for r in served.runtime.table.replicas if r.address == spare.address)
        assert not stopped.ready
        wait_idle(short_pair[0].address)
    finally:
        served.stop()


def test_grpc_routes_by_model_and_names_the_served_ones(stub: Any) -> None:
    for model in ("tiny", "tiny-short"):
        request = inference_pb2.GenerateRequest(model=model, text="Hi")
        request.options.stop.max_tokens = 2
        assert stub.Generate(request).model == model
    with pytest.raises(grpc.RpcError) as error:
        stub.Generate(inference_pb2.GenerateRequest(model="llama-70b", text="Hi"))
    assert error.value.code() == grpc.StatusCode.NOT_FOUND
    assert "available models: tiny, tiny-short" in error.value.details()
