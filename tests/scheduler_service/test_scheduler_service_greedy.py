"""Acceptance: 64 concurrent Generate streams over gRPC, through real Ray worker actors, each
produce exactly the greedy tokens the worker produces for that request alone, whatever the
scheduler does to batch them: chunked prefill on or off, prefix caching on or off, and a KV
pool small enough that running sequences are preempted."""

from __future__ import annotations

from pathlib import Path

import pytest
from loopback import LoopThread
from scheduler_service_harness import Reference, generate_all, greedy_request, serve, service_config, workload

from cairn.v1 import common_pb2, scheduler_pb2

SPECS = workload(64, seed=7, max_tokens=(2, 20))

CONFIGS = {
    # Two replicas: requests spread by placement, sharing prefixes per replica.
    "chunked+prefix": {"num_workers": 2},
    "chunked": {"enable_prefix_caching": False},
    "prefix": {"enable_chunked_prefill": False},
    "plain": {"enable_chunked_prefill": False, "enable_prefix_caching": False},
    # 40 blocks of 4 tokens hold about two of the longest requests: preemption by
    # recompute is certain. Multi-step decode runs whenever nothing waits.
    "preempting": {"num_blocks": 40, "max_num_seqs": 8, "num_scheduler_steps": 4},
}


@pytest.mark.parametrize("name", list(CONFIGS))
def test_64_concurrent_requests_get_their_solo_greedy_tokens(
    name: str, ray_local: object, loop: LoopThread, tiny_model_dir: Path, reference: Reference
) -> None:
    config = service_config(str(tiny_model_dir), **CONFIGS[name])
    expected = reference(SPECS)
    with serve(loop, config) as served:
        requests = [greedy_request(f"{name}-{i}", spec) for i, spec in enumerate(SPECS)]
        results = served.run(generate_all(served.address, requests))
        with served.stub() as stub:
            stats = stub.Stats(scheduler_pb2.StatsRequest())

    mismatched = [
        i for i, (got, want) in enumerate(zip(results, expected, strict=True)) if got.tokens[0] != want
    ]
    assert not mismatched, (
        f"{len(mismatched)} requests differ from their solo greedy run, e.g. #{mismatched[0]}"
    )
    for collected, want, spec in zip(results, expected, SPECS, strict=True):
        final = collected.responses[-1]
        reason = (
            common_pb2.FINISH_REASON_LENGTH if len(want) == spec.max_tokens else common_pb2.FINISH_REASON_EOS
        )
        assert collected.finish == {0: reason}
        assert final.usage.prompt_tokens == len(spec.prompt)
        assert final.usage.completion_tokens == len(want)
        assert all(not r.HasField("usage") for r in collected.responses[:-1])

    assert stats.finished_requests == len(SPECS)
    assert stats.generated_tokens == sum(len(t) for t in expected)
    assert (stats.waiting, stats.running) == (0, 0)
    assert stats.free_blocks == sum(w.num_blocks for w in stats.workers)
    assert len(stats.workers) == config.num_workers
    if name == "preempting":
        assert stats.preemptions > 0
    if config.enable_prefix_caching:
        assert stats.prefix_cache_hit_rate > 0
        assert sum(r.responses[0].cached_prompt_tokens for r in results) > 0
    else:
        assert stats.prefix_cache_hit_rate == 0
    if config.num_workers > 1:
        assert all(w.steps > 0 for w in stats.workers), "placement left a replica idle"
