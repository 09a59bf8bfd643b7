"""The Scheduler RPCs over gRPC: info, figures, logprobs, aborts and cancellation (blocks
come back), admission limits and bad requests, Prometheus metrics.

The pool here runs in-process workers whose steps the tests can hold (`gate`), so queue
states are exact rather than timing-dependent."""

from __future__ import annotations

import math
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import grpc
import pytest
from loopback import LoopThread
from scheduler_service_harness import (
    ControlledLauncher,
    ServedPool,
    Spec,
    generate_all,
    greedy_request,
    local_pool,
    serve_pool,
    service_config,
    wait_for,
)

from cairn.common.metrics import MetricsServer
from cairn.v1 import common_pb2, scheduler_pb2, scheduler_pb2_grpc

MAX_QUEUE = 4


@pytest.fixture(scope="module")
def launcher() -> ControlledLauncher:
    return ControlledLauncher()


@pytest.fixture(scope="module")
def served(loop: LoopThread, tiny_model_dir: Path, launcher: ControlledLauncher) -> Iterator[ServedPool]:
    config = service_config(str(tiny_model_dir), deployment="api", max_num_seqs=2, max_queue=MAX_QUEUE)
    with serve_pool(loop, config, local_pool(config, launcher)) as served:
        yield served


@pytest.fixture
def stub(served: ServedPool) -> Iterator[scheduler_pb2_grpc.SchedulerStub]:
    with served.stub() as stub:
        yield stub
        # Whatever a test did, nothing may stay running or hold blocks.
        wait_for(lambda: _idle(stub), "the pool to be idle with every block free")


def _idle(stub: scheduler_pb2_grpc.SchedulerStub) -> bool:
    stats = stub.Stats(scheduler_pb2.StatsRequest())
    return (stats.waiting, stats.running) == (0, 0) and stats.free_blocks == sum(
        w.num_blocks for w in stats.workers
    )


def _long(request_id: str, prompt: list[int] | None = None) -> scheduler_pb2.ScheduleRequest:
    return greedy_request(request_id, Spec(prompt or [11, 12, 13, 14, 15], 240), ignore_eos=True)


@contextmanager
def held(served: ServedPool, launcher: ControlledLauncher) -> Iterator[None]:
    """Worker steps wait meanwhile: running requests stay exactly where they are."""

    async def switch(open_: bool) -> None:
        launcher.gate.set() if open_ else launcher.gate.clear()

    served.run(switch(False))
    try:
        yield
    finally:
        served.run(switch(True))


def test_info_workers_and_stats_describe_the_deployment(
    stub: scheduler_pb2_grpc.SchedulerStub, tiny_model_dir: Path
) -> None:
    info = stub.GetInfo(scheduler_pb2.SchedulerInfoRequest())
    assert info.deployment == "api"
    assert info.model == str(tiny_model_dir)
    assert (info.max_model_len, info.vocab_size, info.block_size) == (256, 2048, 4)
    assert list(info.eos_token_ids) == [1, 4]

    (worker,) = stub.ListWorkers(scheduler_pb2.ListWorkersRequest()).workers
    assert worker.worker_id == "api-0" and worker.health == scheduler_pb2.WORKER_HEALTH_HEALTHY
    assert (worker.device, worker.num_blocks) == ("cpu", 512)

    before = stub.Stats(scheduler_pb2.StatsRequest())
    responses = list(stub.Generate(greedy_request("stats", Spec([7, 8, 9, 10, 11, 12, 13, 14, 15], 5))))
    after = stub.Stats(scheduler_pb2.StatsRequest())
    assert after.finished_requests == before.finished_requests + 1
    assert after.generated_tokens == before.generated_tokens + responses[-1].usage.completion_tokens
    assert after.workers[0].steps > before.workers[0].steps
    assert after.workers[0].cached_blocks >= 2, "the finished prompt's full blocks stay cached"
    assert 0 <= after.kv_usage <= 1 and 0 <= after.prefix_cache_hit_rate <= 1


def test_logprobs_prompt_logprobs_and_samples_stream_through(stub: scheduler_pb2_grpc.SchedulerStub) -> None:
    prompt = [21, 22, 23, 24, 25, 26]
    request = scheduler_pb2.ScheduleRequest(
        prompt_token_ids=prompt,
        sampling=common_pb2.SamplingParams(temperature=0.7, seed=5, logprobs=2, prompt_logprobs=1),
        stop=common_pb2.StopCriteria(max_tokens=4, ignore_eos=True),
        n=2,
    )
    responses = list(stub.Generate(request))
    assert responses[0].request_id and all(r.request_id == responses[0].request_id for r in responses)
    assert [t.id for t in responses[0].prompt_logprobs] == prompt[1:]
    tokens: dict[int, list[common_pb2.Token]] = {0: [], 1: []}
    cumulative = {}
    for response in responses:
        for seq in response.sequences:
            tokens[seq.index].extend(seq.tokens)
            cumulative[seq.index] = seq.cumulative_logprob
    for index, seq_tokens in tokens.items():
        assert len(seq_tokens) == 4
        assert all(t.HasField("logprob") and len(t.top_logprobs) == 2 for t in seq_tokens)
        assert math.isclose(cumulative[index], sum(t.logprob for t in seq_tokens), rel_tol=1e-5, abs_tol=1e-5)
    assert responses[-1].usage.completion_tokens == 8


def test_abort_ends_the_stream_and_frees_its_blocks(
    served: ServedPool, stub: scheduler_pb2_grpc.SchedulerStub, launcher: ControlledLauncher
) -> None:
    call = stub.Generate(_long("to-abort"))
    first = next(call)
    assert first.sequences[0].tokens
    with held(served, launcher):
        assert stub.Abort(scheduler_pb2.AbortRequest(request_id="to-abort")).aborted
        assert _idle(stub), "an aborted request's blocks are free at once"
    rest = list(call)
    assert rest[-1].sequences[-1].finish_reason == common_pb2.FINISH_REASON_ABORT
    assert rest[-1].usage.completion_tokens < 240
    assert not stub.Abort(scheduler_pb2.AbortRequest(request_id="to-abort")).aborted


def test_a_cancelled_call_aborts_its_request(
    served: ServedPool, stub: scheduler_pb2_grpc.SchedulerStub, launcher: ControlledLauncher
) -> None:
    call = stub.Generate(_long("to-cancel"))
    next(call)
    with held(served, launcher):
        assert stub.Stats(scheduler_pb2.StatsRequest()).running == 1
        call.cancel()
        wait_for(lambda: _idle(stub), "the cancelled request's blocks to come back")
    assert not stub.Abort(scheduler_pb2.AbortRequest(request_id="to-cancel")).aborted


def test_a_full_queue_is_resource_exhausted(
    served: ServedPool, stub: scheduler_pb2_grpc.SchedulerStub, launcher: ControlledLauncher
) -> None:
    # Both seats (max_num_seqs) taken by requests that cannot finish while steps are held.
    calls = [stub.Generate(_long(f"seat{i}", [30 + i, 31, 32])) for i in range(2)]
    try:
        for call in calls:
            next(call)
        with held(served, launcher):
            calls += [stub.Generate(_long(f"queued{i}", [40 + i, 41])) for i in range(MAX_QUEUE)]
            wait_for(lambda: served.pool.stats().waiting == MAX_QUEUE, "a full queue")
            with pytest.raises(grpc.RpcError) as err:
                next(stub.Generate(_long("one-too-many")))
            assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            assert "max_queue" in err.value.details()
    finally:
        for call in calls:
            call.cancel()


@pytest.mark.parametrize(
    ("request_fields", "code", "message"),
    [
        (
            {"prompt_token_ids": [5] * 200, "stop": {"max_tokens": 100}},
            "INVALID_ARGUMENT",
            "max_model_len (256)",
        ),
        ({"prompt_token_ids": [5] * 256}, "INVALID_ARGUMENT", "leaves no room"),
        ({"prompt_token_ids": []}, "INVALID_ARGUMENT", "at least one token"),
        ({"prompt_token_ids": [5, 4096]}, "INVALID_ARGUMENT", "outside the vocabulary"),
        ({"prompt_token_ids": [5], "sampling": {"temperature": -1}}, "INVALID_ARGUMENT", "temperature"),
        ({"prompt_token_ids": [5], "n": 2, "best_of": 1}, "INVALID_ARGUMENT", "best_of"),
        ({"prompt_token_ids": [5], "adapter": "nope"}, "NOT_FOUND", "adapter 'nope'"),
    ],
)
def test_bad_requests_are_refused_with_their_status(
    stub: scheduler_pb2_grpc.SchedulerStub, request_fields: dict, code: str, message: str
) -> None:
    request = scheduler_pb2.ScheduleRequest(
        prompt_token_ids=request_fields["prompt_token_ids"],
        sampling=common_pb2.SamplingParams(**request_fields.get("sampling", {})),
        stop=common_pb2.StopCriteria(**request_fields.get("stop", {})),
        n=request_fields.get("n", 0),
        best_of=request_fields.get("best_of", 0),
        adapter=request_fields.get("adapter", ""),
    )
    with pytest.raises(grpc.RpcError) as err:
        list(stub.Generate(request))
    assert err.value.code().name == code
    assert message in err.value.details()


def test_a_live_request_id_cannot_be_reused(
    served: ServedPool, stub: scheduler_pb2_grpc.SchedulerStub
) -> None:
    call = stub.Generate(_long("twice"))
    next(call)
    with pytest.raises(grpc.RpcError) as err:
        list(stub.Generate(_long("twice")))
    assert err.value.code() == grpc.StatusCode.ALREADY_EXISTS
    call.cancel()


def test_metrics_cover_queue_kv_cache_and_latencies(
    served: ServedPool, stub: scheduler_pb2_grpc.SchedulerStub
) -> None:
    served.run(
        generate_all(
            served.address, [greedy_request(f"m{i}", Spec([40, 41, 42, i + 43], 6)) for i in range(4)]
        )
    )
    metrics = MetricsServer("127.0.0.1", 0, lambda: True)
    try:

        def page() -> str:
            with urllib.request.urlopen(f"http://127.0.0.1:{metrics.port}/metrics") as response:
                return response.read().decode()

        # Gauges refresh with the health checks.
        wait_for(lambda: 'cairn_scheduler_workers{deployment="api",health="healthy"} 1.0' in page(), "gauges")
        text = page()
    finally:
        metrics.close()
    for series in (
        'cairn_scheduler_waiting{deployment="api"}',
        'cairn_scheduler_running{deployment="api"}',
        'cairn_scheduler_kv_usage{deployment="api"}',
        'cairn_scheduler_prefix_cache_hit_rate{deployment="api"}',
        'cairn_scheduler_generated_tokens_per_second{deployment="api"}',
        'cairn_scheduler_preemptions_total{deployment="api"}',
        'cairn_scheduler_generated_tokens_total{deployment="api"}',
        'cairn_scheduler_time_to_first_token_seconds_count{deployment="api"}',
        'cairn_scheduler_time_per_output_token_seconds_count{deployment="api"}',
        'cairn_scheduler_e2e_request_latency_seconds_count{deployment="api"}',
        'cairn_scheduler_requests_finished_total{deployment="api",reason="length"}',
    ):
        assert series in text, f"{series} is not exposed"
    count = 'cairn_scheduler_time_to_first_token_seconds_count{deployment="api"}'
    ttft = next(line for line in text.splitlines() if line.startswith(count))
    assert float(ttft.split()[-1]) >= 4
