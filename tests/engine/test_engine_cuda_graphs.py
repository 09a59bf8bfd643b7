"""Decode through captured CUDA graphs: the same logits and tokens as eager (the graphs take the
greedy argmax themselves and hand their logits to the sampler otherwise), padding rows inert,
and the torch.compile'd step captured the same way."""

from __future__ import annotations

import pytest
import torch
from engine_helpers import (
    BlockAllocator,
    greedy,
    hf_logits,
    make_runner,
    prefill_step,
    prompts,
)
from runner_probes import recorded_logits

from cairn.services.worker.cuda_graphs import capture_sizes
from cairn.services.worker.driver import Driver
from cairn.services.worker.sampling_params import SamplingParams
from cairn.services.worker.step import ScheduledSeq, StepInput

requires_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
BLOCK_SIZE = 16


def test_capture_sizes_follow_vllm_buckets() -> None:
    assert capture_sizes(1) == [1]
    assert capture_sizes(20) == [1, 2, 4, 8, 16, 20]
    assert capture_sizes(256)[:6] == [1, 2, 4, 8, 16, 24]
    assert capture_sizes(256)[-2:] == [248, 256]
    assert capture_sizes(4096)[-1] == 512


def decode_logits(runner, batch: list[list[int]], steps: int, num_steps: int = 1) -> tuple[list, dict]:
    """Prefill `batch`, decode `steps` tokens; the decode logits per step and the tokens per sequence."""
    seqs = list(enumerate(batch))
    tokens = {s: [] for s, _ in seqs}
    for output in runner.step(prefill_step(seqs, BlockAllocator(), BLOCK_SIZE, greedy())).outputs:
        tokens[output.seq_id] += [t.token_id for t in output.tokens]
    with recorded_logits(runner) as logits:
        for _ in range(0, steps, num_steps):
            scheduled = [ScheduledSeq(s, len(p) + len(tokens[s]) - 1, 1) for s, p in seqs]
            for output in runner.step(StepInput(scheduled=scheduled, num_steps=num_steps)).outputs:
                tokens[output.seq_id] += [t.token_id for t in output.tokens]
    return logits, tokens


@pytest.mark.gpu
@requires_cuda
@pytest.mark.parametrize("batch_size", [1, 3, 9])
def test_graph_decode_matches_eager_and_hf(checkpoint, batch_size: int) -> None:
    ckpt = checkpoint("llama-3.2")
    graphs = make_runner(ckpt.path, block_size=BLOCK_SIZE, device="cuda")
    eager = make_runner(ckpt.path, block_size=BLOCK_SIZE, device="cuda", enforce_eager=True)
    assert graphs.cuda_graph_batch_sizes == [1, 2, 4, 8, 16]
    assert eager.cuda_graph_batch_sizes == []
    batch = prompts(seed=50 + batch_size, lengths=tuple(range(20, 20 + 7 * batch_size, 7)))
    graph_logits, graph_tokens = decode_logits(graphs, batch, steps=6)
    eager_logits, eager_tokens = decode_logits(eager, batch, steps=6)
    assert graph_tokens == eager_tokens
    for ours, theirs in zip(graph_logits, eager_logits, strict=True):
        torch.testing.assert_close(ours, theirs, atol=1e-5, rtol=0)
    for row, (seq_id, prompt) in enumerate(enumerate(batch)):
        reference = hf_logits(ckpt.hf, prompt + graph_tokens[seq_id])[len(prompt) : len(prompt) + 6]
        ours = torch.stack([step[row] for step in graph_logits]).cpu()
        torch.testing.assert_close(ours, reference, atol=1e-3, rtol=0)
    # Multi-step decode replays the graphs with tokens fed back on the device.
    _, multi_tokens = decode_logits(make_runner(ckpt.path, block_size=BLOCK_SIZE, device="cuda"), batch, 6, 3)
    assert multi_tokens == graph_tokens


@pytest.mark.gpu
@requires_cuda
def test_padding_rows_leave_the_cache_alone(checkpoint) -> None:
    runner = make_runner(checkpoint("qwen2").path, block_size=BLOCK_SIZE, device="cuda")
    batch = prompts(seed=60, lengths=(18, 33, 21))
    seqs = list(enumerate(batch))
    runner.step(prefill_step(seqs, BlockAllocator(), BLOCK_SIZE, greedy()))
    before = runner.kv_cache.storage.clone()
    # Three decodes run in the batch-4 graph; exactly their three slots change.
    runner.step(StepInput(scheduled=[ScheduledSeq(s, len(p), 1) for s, p in seqs]))
    # [layers, 2, blocks, slots, heads, dim] -> [blocks, slots]: which slots changed anywhere.
    changed = (runner.kv_cache.storage != before).flatten(4).any(-1).any(0).any(0)
    table = runner.table
    expected = torch.zeros_like(changed)
    for seq_id, prompt in seqs:
        block = table.block_tables[table.get(seq_id).row, len(prompt) // BLOCK_SIZE]
        expected[block, len(prompt) % BLOCK_SIZE] = True
    assert torch.equal(changed, expected)


@pytest.mark.gpu
@requires_cuda
def test_kv_cache_is_sized_by_profiling(checkpoint) -> None:
    runner = make_runner(
        checkpoint("mistral").path,
        device="cuda",
        num_blocks=None,
        gpu_memory_utilization=0.3,
        enforce_eager=True,
    )
    total = torch.cuda.mem_get_info()[1]
    assert runner.num_blocks > 0
    assert runner.peak_activation_bytes > 0
    assert runner.kv_cache_bytes + runner.weight_bytes + runner.peak_activation_bytes <= 0.3 * total
    (tokens,) = Driver(runner).generate(prompts(seed=61, lengths=(12,)), greedy(max_tokens=4))
    assert len(tokens) == 4


@pytest.mark.gpu
@requires_cuda
@pytest.mark.parametrize(
    "params",
    [
        greedy(max_tokens=10),
        SamplingParams(temperature=0.8, top_p=0.9, seed=7, max_tokens=10),
        SamplingParams(temperature=0.0, max_tokens=10, logprobs=2),
    ],
    ids=["greedy", "seeded", "logprobs"],
)
def test_graph_logits_drive_sampling_in_bf16(checkpoint, params: SamplingParams) -> None:
    # bf16 logits leave the graph uncast; the sampler's float32 copy of them equals eager's.
    # Four sequences fill the batch-4 graph exactly: eager runs the same GEMM shapes, bit for bit.
    path = checkpoint("qwen2").path
    graphs = make_runner(path, block_size=BLOCK_SIZE, device="cuda", dtype="bfloat16")
    eager = make_runner(path, block_size=BLOCK_SIZE, device="cuda", dtype="bfloat16", enforce_eager=True)
    batch = prompts(seed=70, lengths=(15, 22, 9, 30))
    for num_steps in (1, 3):
        expected = Driver(eager).generate(batch, params, num_steps=num_steps)
        assert Driver(graphs).generate(batch, params, num_steps=num_steps) == expected


@pytest.mark.gpu
@requires_cuda
def test_compiled_graph_decode_matches_eager(checkpoint) -> None:
    ckpt = checkpoint("qwen2")
    compiled = make_runner(
        ckpt.path, block_size=BLOCK_SIZE, device="cuda", max_num_seqs=4, compile_mode="default"
    )
    eager = make_runner(ckpt.path, block_size=BLOCK_SIZE, device="cuda", max_num_seqs=4, enforce_eager=True)
    assert compiled.cuda_graph_batch_sizes == [1, 2, 4]
    batch = prompts(seed=71, lengths=(19, 33, 8))
    compiled_logits, compiled_tokens = decode_logits(compiled, batch, steps=5)
    eager_logits, eager_tokens = decode_logits(eager, batch, steps=5)
    assert compiled_tokens == eager_tokens
    for ours, theirs in zip(compiled_logits, eager_logits, strict=True):
        torch.testing.assert_close(ours, theirs, atol=1e-4, rtol=0)


@pytest.mark.gpu
@requires_cuda
def test_graphs_with_the_triton_gemv_decode_like_cublas(checkpoint) -> None:
    from cairn import kernels

    ckpt = checkpoint("llama-3.2")
    with kernels.triton_gemv():
        gemv = make_runner(ckpt.path, block_size=BLOCK_SIZE, device="cuda")
        batch = prompts(seed=72, lengths=(26, 40, 11))
        gemv_logits, gemv_tokens = decode_logits(gemv, batch, steps=5)
    cublas = make_runner(ckpt.path, block_size=BLOCK_SIZE, device="cuda")
    cublas_logits, cublas_tokens = decode_logits(cublas, batch, steps=5)
    assert gemv_tokens == cublas_tokens
    for ours, theirs in zip(gemv_logits, cublas_logits, strict=True):
        torch.testing.assert_close(ours, theirs, atol=1e-4, rtol=0)
