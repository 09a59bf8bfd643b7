"""Tensor parallelism on GPUs (NCCL): 2 and 4 ranks against one GPU, decode steps replayed
from CUDA graphs that hold the collectives, and the scheduler serving a 2-GPU replica
through Ray. Run on a multi-GPU host: `pytest -m gpu tests/tp`."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from tp_harness import engine_config, run_group, run_in_child, run_single
from tp_serving import Loop, generate_greedy, one_device_greedy, prompts, serve, service_config

pytestmark = pytest.mark.gpu


def _gpus(count: int) -> pytest.MarkDecorator:
    return pytest.mark.skipif(torch.cuda.device_count() < count, reason=f"needs {count} CUDA devices")


@pytest.fixture(scope="module")
def model(tiny_model_factory: Any) -> Path:
    """GQA with fewer KV heads than 4 ranks, a vocabulary 4 ranks pad."""
    return tiny_model_factory(
        num_heads=8, num_kv_heads=2, hidden_size=128, intermediate_size=256, vocab_size=1027
    )


@pytest.mark.parametrize(
    ("size", "dtype", "atol"),
    [
        pytest.param(2, "float32", 2e-3, marks=_gpus(2)),
        pytest.param(2, "bfloat16", 0.15, marks=_gpus(2)),
        pytest.param(4, "bfloat16", 0.15, marks=_gpus(4)),
    ],
)
def test_gpu_split_matches_one_gpu_through_cuda_graphs(
    model: Path, tmp_path: Path, size: int, dtype: str, atol: float
) -> None:
    settings = {"device": "cuda", "dtype": dtype}
    expected = run_single(engine_config(model, 1, **settings), 1027)
    run_in_child(run_group, [(engine_config(model, size, **settings), 1027)], tmp_path / "runs.pt")
    (got,) = torch.load(tmp_path / "runs.pt", weights_only=False)
    assert got.graph_replays > 0 and got.graph_replays == expected.graph_replays
    assert [t.shape for t in got.logits] == [t.shape for t in expected.logits]
    for index, (a, b) in enumerate(zip(got.logits, expected.logits, strict=True)):
        difference = (a - b).abs().max().item()
        assert difference <= atol, f"forward {index}: logits differ by up to {difference:.3f}"

    def tokens(outputs: list) -> list:
        return [{o.seq_id: [t.token_id for t in o.tokens] for o in step.outputs} for step in outputs]

    assert tokens(got.outputs) == tokens(expected.outputs)


@pytest.fixture(scope="module")
def loop() -> Iterator[Loop]:
    thread = Loop()
    yield thread
    thread.close()


@_gpus(2)
def test_scheduler_serves_a_two_gpu_replica_through_ray(ray_local: Any, loop: Loop, model: Path) -> None:
    specs = prompts(8, seed=5)
    expected = one_device_greedy(model, specs, device="cuda")
    config = service_config(model, device="cuda", num_blocks=None, gpu_memory_utilization=0.5)
    with serve(loop, config) as (pool, address):
        assert loop.run(generate_greedy(address, specs)) == expected
        (replica,) = pool.replicas
        assert replica.info.device.startswith("cuda")
