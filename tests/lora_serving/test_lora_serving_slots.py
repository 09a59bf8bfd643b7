"""A replica's adapter slots under pressure, through the scheduler's gRPC API: adapters take
turns in one slot, a request waiting for its adapter can be cancelled, a request that loses its
worker re-prefills elsewhere with its adapter; every output is the PEFT-merged HF model's."""

from __future__ import annotations

import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import grpc
import pytest
import torch
from loopback import LoopThread
from lora_serving_harness import RecordingLauncher, hf_greedy, make_peft_adapter
from prometheus_client import REGISTRY
from pydantic import ValidationError

from cairn.common.server import start_server
from cairn.services.scheduler.adapters import parse_lora_modules
from cairn.services.scheduler.pool import WorkerPool
from cairn.services.scheduler.server import grpc_service
from cairn.services.scheduler.service_config import SchedulerServiceConfig
from cairn.v1 import common_pb2, scheduler_pb2, scheduler_pb2_grpc

PROMPTS = [[5, 17, 300, 41, 9, 77, 12, 600, 3, 8, 21], [1000, 2, 2, 45, 88, 90, 7], [11, 12, 13, 14, 15, 16]]


@pytest.fixture(scope="module")
def loop() -> Iterator[LoopThread]:
    thread = LoopThread()
    yield thread
    thread.close()


@pytest.fixture(scope="module")
def adapters(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("slot-adapters")
    return {
        "a": make_peft_adapter(tiny_model_dir, root / "a", r=4, targets=["q_proj", "v_proj"], seed=10),
        "b": make_peft_adapter(
            tiny_model_dir,
            root / "b",
            r=8,
            targets=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
            seed=11,
        ),
    }


@contextmanager
def scheduler(
    loop: LoopThread, model: Path, adapters: dict[str, Path], launcher: RecordingLauncher, **overrides: Any
) -> Iterator[tuple[scheduler_pb2_grpc.SchedulerStub, WorkerPool]]:
    settings: dict[str, Any] = {
        "model": str(model),
        "deployment": "tiny",
        "device": "cpu",
        "dtype": "float32",
        "block_size": 4,
        "max_model_len": 256,
        "max_num_seqs": 8,
        "max_num_batched_tokens": 64,
        "num_blocks": 512,
        "num_workers": 1,
        "max_loras": 1,
        "max_lora_rank": 8,
        "lora_modules": {name: str(path) for name, path in adapters.items()},
        "health_check_interval_s": 0.2,
        "port": 0,
        "metrics_port": 0,
        "log_level": "WARNING",
    }
    config = SchedulerServiceConfig(**(settings | overrides))
    pool = WorkerPool(launcher, config, config.model, config.deployment, lora_modules=config.lora_modules)

    async def start() -> Any:
        await pool.start(config.num_workers)
        return await start_server(config, [grpc_service(pool)])

    running = loop.run(start())
    try:
        with grpc.insecure_channel(f"127.0.0.1:{running.port}") as channel:
            yield scheduler_pb2_grpc.SchedulerStub(channel), pool
    finally:
        loop.run(running.stop(None))
        loop.run(pool.close())


def _request(
    prompt: list[int], adapter: str, max_tokens: int, ignore_eos: bool = False
) -> scheduler_pb2.ScheduleRequest:
    return scheduler_pb2.ScheduleRequest(
        prompt_token_ids=prompt,
        sampling=common_pb2.SamplingParams(temperature=0.0),
        stop=common_pb2.StopCriteria(max_tokens=max_tokens, ignore_eos=ignore_eos),
        adapter=adapter,
    )


def _generate(
    stub: scheduler_pb2_grpc.SchedulerStub, prompt: list[int], adapter: str, max_tokens: int
) -> list[int]:
    return [
        t.id
        for r in stub.Generate(_request(prompt, adapter, max_tokens))
        for s in r.sequences
        for t in s.tokens
    ]


def _wait(condition: Any, timeout: float = 60.0) -> None:
    end = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < end, "condition not reached"
        time.sleep(0.02)


def _idle(stub: scheduler_pb2_grpc.SchedulerStub) -> bool:
    stats = stub.Stats(scheduler_pb2.StatsRequest())
    return stats.running == stats.waiting == 0 and stats.free_blocks == sum(
        w.num_blocks for w in stats.workers
    )


def test_adapters_take_turns_in_one_slot(
    loop: LoopThread, tiny_model_dir: Path, adapters: dict[str, Path]
) -> None:
    launcher = RecordingLauncher()
    jobs = [(prompt, adapter) for prompt in PROMPTS for adapter in ("a", "b", "")]
    with (
        scheduler(loop, tiny_model_dir, adapters, launcher, deployment="slots") as (stub, _),
        ThreadPoolExecutor(len(jobs)) as threads,
    ):
        outputs = list(threads.map(lambda job: _generate(stub, job[0], job[1], 8), jobs))
        _wait(lambda: _idle(stub))
    for (prompt, adapter), tokens in zip(jobs, outputs, strict=True):
        assert tokens == hf_greedy(tiny_model_dir, adapters.get(adapter), prompt, 8), adapter
    [worker] = launcher.workers
    # One slot: never two adapters in a step, and each load after the first evicted the other one.
    assert all(len(step - {""}) <= 1 for step in worker.steps)
    loads = [name for kind, name in worker.events if kind == "load"]
    assert set(loads) == {"a", "b"}
    assert REGISTRY.get_sample_value("cairn_scheduler_adapter_loads_total", {"deployment": "slots"}) == len(
        loads
    )
    assert REGISTRY.get_sample_value("cairn_scheduler_adapter_evictions_total", {"deployment": "slots"}) == (
        len(loads) - 1
    )
    assert (
        worker.events
        == [e for load in loads for e in (("unload", "b" if load == "a" else "a"), ("load", load))][1:]
    )


def test_a_request_waiting_for_its_adapter_can_be_cancelled(
    loop: LoopThread, tiny_model_dir: Path, adapters: dict[str, Path]
) -> None:
    launcher = RecordingLauncher()
    with scheduler(loop, tiny_model_dir, adapters, launcher) as (stub, _):
        holder = stub.Generate(_request(PROMPTS[0], "a", 200, ignore_eos=True))
        next(holder)
        waiting = stub.Generate(_request(PROMPTS[1], "b", 8))
        _wait(lambda: stub.Stats(scheduler_pb2.StatsRequest()).waiting == 1)
        waiting.cancel()
        _wait(lambda: stub.Stats(scheduler_pb2.StatsRequest()).waiting == 0)
        assert len([t for r in holder for s in r.sequences for t in s.tokens]) == 199
        _wait(lambda: _idle(stub))
        [worker] = launcher.workers
        assert worker.events == [("load", "a")]
        assert _generate(stub, PROMPTS[1], "b", 8) == hf_greedy(tiny_model_dir, adapters["b"], PROMPTS[1], 8)
        assert worker.events == [("load", "a"), ("unload", "a"), ("load", "b")]


def test_a_request_that_loses_its_worker_continues_with_its_adapter(
    loop: LoopThread, tiny_model_dir: Path, adapters: dict[str, Path]
) -> None:
    launcher = RecordingLauncher(fail_after={0: 4})
    with scheduler(loop, tiny_model_dir, adapters, launcher, num_workers=2) as (stub, _):
        tokens = _generate(stub, PROMPTS[0], "b", 16)
    assert tokens == hf_greedy(tiny_model_dir, adapters["b"], PROMPTS[0], 16)
    first, second = launcher.workers[:2]
    assert len(first.steps) == 4 and ("load", "b") in first.events and ("load", "b") in second.events
    assert any("b" in step for step in second.steps)


def test_an_adapter_that_does_not_fit_the_model_is_refused_and_the_replica_serves_on(
    loop: LoopThread, tiny_model_dir: Path, tiny_model_factory: Any, adapters: dict[str, Path], tmp_path: Path
) -> None:
    other = tiny_model_factory(hidden_size=32, num_heads=2, num_kv_heads=1, intermediate_size=64)
    narrow = make_peft_adapter(other, tmp_path / "narrow", r=4, targets=["q_proj"], seed=12)
    launcher = RecordingLauncher()
    with scheduler(loop, tiny_model_dir, {**adapters, "narrow": narrow}, launcher) as (stub, _):
        with pytest.raises(grpc.RpcError) as err:
            _generate(stub, PROMPTS[0], "narrow", 4)
        assert (
            err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            and "different base model" in err.value.details()
        )
        assert _generate(stub, PROMPTS[0], "a", 4) == hf_greedy(tiny_model_dir, adapters["a"], PROMPTS[0], 4)
        _wait(lambda: _idle(stub))


def test_lora_modules_are_name_ref_pairs() -> None:
    want = {"support": "acme/support@3", "local": "/adapters/local"}
    assert parse_lora_modules("support=acme/support@3, local=/adapters/local") == want
    assert parse_lora_modules(["support=acme/support@3", "local=/adapters/local"]) == want
    config = SchedulerServiceConfig(lora_modules=want)
    assert config.lora_modules == want and config.max_loras == 0
    with pytest.raises(ValidationError, match="is not name=ref"):
        SchedulerServiceConfig(lora_modules=["support"])
    with pytest.raises(ValidationError, match="given twice"):
        SchedulerServiceConfig(lora_modules=["a=x", "a=y"])


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_mixed_adapter_batches_on_cuda_with_graphs(
    loop: LoopThread, tiny_model_dir: Path, adapters: dict[str, Path]
) -> None:
    """The same mixed traffic on a CUDA worker whose decode steps replay CUDA graphs (the adapter
    mapping lives in the graphs' input buffers): the PEFT-merged HF model's greedy tokens."""
    launcher = RecordingLauncher()
    jobs = [(prompt, adapter) for prompt in PROMPTS for adapter in ("a", "b", "")] * 2
    with (
        scheduler(loop, tiny_model_dir, adapters, launcher, device="cuda", max_loras=2) as (stub, _),
        ThreadPoolExecutor(len(jobs)) as threads,
    ):
        # Both adapters resident first: a GPU step is fast enough that base-model requests
        # could otherwise finish while the adapters load, and no step would mix all three.
        for adapter in ("a", "b"):
            _generate(stub, PROMPTS[0], adapter, 1)
        outputs = list(threads.map(lambda job: _generate(stub, job[0], job[1], 32), jobs))
    for (prompt, adapter), tokens in zip(jobs, outputs, strict=True):
        assert tokens == hf_greedy(tiny_model_dir, adapters.get(adapter), prompt, 32), adapter
    [worker] = launcher.workers
    assert any({"", "a", "b"} <= step for step in worker.steps)
    assert worker.events == [("load", "a"), ("load", "b")] or worker.events == [("load", "b"), ("load", "a")]
