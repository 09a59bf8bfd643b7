"""The worker as a Ray actor serving `cairn.v1.Worker` over gRPC (CPU, tiny model)."""

from __future__ import annotations

from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from cairn.services.worker.actor import WorkerHandle, spawn_worker
from cairn.services.worker.convert import engine_config_to_proto, step_output_from_proto, step_to_proto
from cairn.services.worker.driver import Driver
from cairn.services.worker.engine_config import EngineConfig
from cairn.services.worker.model_runner import ModelRunner
from cairn.services.worker.sampling_params import SamplingParams
from cairn.services.worker.step import NewSequence, ScheduledSeq, StepInput
from cairn.v1 import worker_pb2, worker_pb2_grpc

BLOCK = 4


@pytest.fixture(scope="module")
def worker(ray_local) -> WorkerHandle:
    handle = spawn_worker("test-worker-0", device="cpu")
    yield handle
    ray_local.kill(handle.actor)


@pytest.fixture(scope="module")
def stub(worker: WorkerHandle) -> worker_pb2_grpc.WorkerStub:
    channel = grpc.insecure_channel(worker.address)
    yield worker_pb2_grpc.WorkerStub(channel)
    channel.close()


def _config(model_dir: Path) -> EngineConfig:
    return EngineConfig(model=str(model_dir), device="cpu", block_size=BLOCK, num_blocks=64, max_num_seqs=8)


def test_step_before_load_is_failed_precondition(stub: worker_pb2_grpc.WorkerStub) -> None:
    with pytest.raises(grpc.RpcError) as err:
        stub.Step(worker_pb2.StepRequest())
    if err.value.code() != grpc.StatusCode.FAILED_PRECONDITION:
        pytest.fail(f"unexpected status {err.value.code()}: {err.value.details()}")
    assert "LoadModel" in err.value.details()


def test_load_steps_and_free_over_grpc(
    worker: WorkerHandle, stub: worker_pb2_grpc.WorkerStub, tiny_model_dir: Path
) -> None:
    channel = grpc.insecure_channel(worker.address)
    health = health_pb2_grpc.HealthStub(channel).Check(
        health_pb2.HealthCheckRequest(service="cairn.v1.Worker")
    )
    assert health.status == health_pb2.HealthCheckResponse.SERVING

    info = stub.LoadModel(worker_pb2.LoadModelRequest(config=engine_config_to_proto(_config(tiny_model_dir))))
    assert info.worker_id == "test-worker-0"
    assert info.architecture == "LlamaForCausalLM"
    assert info.num_blocks == 64 and info.block_size == BLOCK
    assert info.vocab_size == 2048
    assert stub.GetInfo(worker_pb2.GetInfoRequest()).num_blocks == 64

    with pytest.raises(grpc.RpcError) as err:
        stub.LoadModel(worker_pb2.LoadModelRequest(config=engine_config_to_proto(_config(tiny_model_dir))))
    assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION

    prompts = [[0, 17, 230, 99, 1000, 5, 42], [0, 300, 301, 302, 303, 304, 305, 306, 307, 308, 12]]
    params = SamplingParams(temperature=0.0, max_tokens=6)
    runner = ModelRunner(_config(tiny_model_dir))
    runner.load()
    runner.profile_and_allocate_kv_cache()
    expected = Driver(runner).generate(prompts, params)

    # Prefill both sequences in one step, then decode step by step over gRPC.
    tables: list[list[int]] = [list(range(0, 8)), list(range(8, 16))]
    step = StepInput(
        new_seqs=[NewSequence(i, p, len(p), params) for i, p in enumerate(prompts)],
        scheduled=[ScheduledSeq(i, 0, len(p), tables[i], sample=True) for i, p in enumerate(prompts)],
    )
    generated: list[list[int]] = [[], []]
    lengths = [len(p) for p in prompts]
    for _ in range(params.max_tokens):
        out = step_output_from_proto(stub.Step(step_to_proto(step)))
        for seq_out in out.outputs:
            generated[seq_out.seq_id].extend(t.token_id for t in seq_out.tokens)
        step = StepInput(scheduled=[ScheduledSeq(i, lengths[i] + len(generated[i]) - 1, 1) for i in range(2)])
    assert generated == expected

    freed = stub.FreeSequences(worker_pb2.FreeSequencesRequest(seq_ids=[0, 1, 99]))
    assert freed.freed == 2
    with pytest.raises(grpc.RpcError) as err:
        stub.Step(step_to_proto(StepInput(scheduled=[ScheduledSeq(0, 10, 1)])))
    assert err.value.code() == grpc.StatusCode.NOT_FOUND
    assert "unknown to this worker" in err.value.details()
    channel.close()
