"""LoadAdapter / UnloadAdapter / adapters in GetInfo and NewSequence.adapter over a real
loopback worker server (gRPC status codes included)."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from lora_helpers import hf_logits

from cairn.common.server import RunningServer, start_server
from cairn.services.worker.config import WorkerConfig
from cairn.services.worker.convert import engine_config_to_proto, step_to_proto
from cairn.services.worker.engine_config import EngineConfig
from cairn.services.worker.sampling_params import SamplingParams
from cairn.services.worker.server import WorkerServicer, grpc_service
from cairn.services.worker.step import NewSequence, ScheduledSeq, StepInput
from cairn.v1 import common_pb2, worker_pb2, worker_pb2_grpc

PROMPT = [9, 81, 729, 1500, 3, 27]


@pytest.fixture(scope="module")
def stub(tiny_model_dir: Path) -> Iterator[worker_pb2_grpc.WorkerStub]:
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()

    def run(coro):
        return asyncio.run_coroutine_threadsafe(coro, loop).result(60)

    config = WorkerConfig(port=0, metrics_port=0)
    server: RunningServer = run(start_server(config, [grpc_service(WorkerServicer("lora-worker"))]))
    channel = grpc.insecure_channel(f"127.0.0.1:{server.port}")
    stub = worker_pb2_grpc.WorkerStub(channel)
    engine = EngineConfig(
        model=str(tiny_model_dir), device="cpu", dtype="float32", block_size=4, num_blocks=64,
        max_num_seqs=4, max_loras=2, max_lora_rank=8,
    )  # fmt: skip
    stub.LoadModel(worker_pb2.LoadModelRequest(config=engine_config_to_proto(engine)))
    yield stub
    channel.close()
    run(server.stop(0))
    loop.call_soon_threadsafe(loop.stop)
    thread.join()


def _code(call) -> grpc.StatusCode:
    with pytest.raises(grpc.RpcError) as err:
        call()
    return err.value.code()


def _load(stub, name: str, ref: str | Path) -> worker_pb2.AdapterInfo:
    return stub.LoadAdapter(worker_pb2.LoadAdapterRequest(name=name, ref=common_pb2.ModelRef(ref=str(ref))))


def test_load_generate_and_unload_over_grpc(stub, peft_adapters) -> None:
    directory, oracle = peft_adapters["attn"]
    info = _load(stub, "support-bot", directory)
    assert (info.name, info.source, info.rank) == ("support-bot", str(directory), 4)
    worker = stub.GetInfo(worker_pb2.GetInfoRequest())
    assert [a.name for a in worker.adapters] == ["support-bot"]
    assert (worker.config.max_loras, worker.config.max_lora_rank) == (2, 8)

    params = SamplingParams(temperature=0.0, max_tokens=4)
    step = StepInput(
        new_seqs=[NewSequence(1, PROMPT, len(PROMPT), params, adapter="support-bot")],
        scheduled=[ScheduledSeq(1, 0, len(PROMPT), [0, 1])],
    )
    response = stub.Step(step_to_proto(step))
    assert response.outputs[0].tokens[0].id == int(hf_logits(oracle, PROMPT)[-1].argmax())

    unload = worker_pb2.UnloadAdapterRequest(name="support-bot")
    assert _code(lambda: stub.UnloadAdapter(unload)) == grpc.StatusCode.FAILED_PRECONDITION
    stub.FreeSequences(worker_pb2.FreeSequencesRequest(seq_ids=[1]))
    assert stub.UnloadAdapter(unload).unloaded is True
    assert stub.UnloadAdapter(unload).unloaded is False
    assert list(stub.GetInfo(worker_pb2.GetInfoRequest()).adapters) == []


def test_adapter_errors_map_to_status_codes(stub, peft_adapters, adapter_copy, tmp_path: Path) -> None:
    unknown = StepInput(
        new_seqs=[NewSequence(7, PROMPT, len(PROMPT), SamplingParams(), adapter="nobody")],
        scheduled=[ScheduledSeq(7, 0, len(PROMPT), [0, 1])],
    )
    assert _code(lambda: stub.Step(step_to_proto(unknown))) == grpc.StatusCode.NOT_FOUND
    assert _code(lambda: _load(stub, "x", tmp_path / "missing")) == grpc.StatusCode.NOT_FOUND
    assert _code(lambda: _load(stub, "x", peft_adapters["wide"][0])) == grpc.StatusCode.INVALID_ARGUMENT
    corrupt = adapter_copy("mlp")
    (corrupt / "adapter_model.safetensors").write_bytes(b"nonsense")
    assert _code(lambda: _load(stub, "x", corrupt)) == grpc.StatusCode.INVALID_ARGUMENT
    assert _code(lambda: _load(stub, "", peft_adapters["mlp"][0])) == grpc.StatusCode.INVALID_ARGUMENT
    assert list(stub.GetInfo(worker_pb2.GetInfoRequest()).adapters) == []
