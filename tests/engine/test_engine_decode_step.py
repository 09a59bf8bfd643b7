"""The decode step a CUDA graph captures, run on the CPU: its kernel launches, its Triton path
(under the interpreter) against the torch references, and its torch.compile'd form.

The Triton kernels dispatch for CUDA/XPU tensors only; these tests let CPU tensors take that
path too, and give the decode kernel a GPU's multiprocessor count, so a batch-1 decode splits
its context and merges the splits exactly as it would there.
"""

from __future__ import annotations

import contextlib
from collections import Counter
from collections.abc import Iterator

import pytest
import torch
from engine_helpers import BlockAllocator, greedy, make_runner, prefill_step, prompts
from launch_counter import count_launches
from runner_probes import recorded_logits
from torch._dynamo.backends.common import aot_autograd

from cairn import kernels
from cairn.common.errors import InvalidArgument
from cairn.kernels import dispatch
from cairn.services.worker.cuda_graphs import DecodeGraphs
from cairn.services.worker.model_runner import ModelRunner
from cairn.services.worker.step import ScheduledSeq, StepInput

BLOCK_SIZE = 16
H200_PROCESSORS = 132


@contextlib.contextmanager
def triton_on_cpu(monkeypatch: pytest.MonkeyPatch, processors: int = H200_PROCESSORS) -> Iterator[None]:
    from cairn.kernels.triton_ops import decode

    with monkeypatch.context() as patch:
        patch.setattr(dispatch, "_TRITON_DEVICE_TYPES", ("cpu",))
        patch.setattr(decode, "_processor_count", lambda *_: processors)
        yield


def graphs_at_next_decode(runner: ModelRunner, seq_id: int, position: int) -> tuple[DecodeGraphs, int]:
    """A batch-1 DecodeGraphs (never captured) staged with `seq_id`'s decode at `position`."""
    graphs = DecodeGraphs(runner.model, runner.kv_cache.layers, 1, runner.table.max_blocks_per_seq)
    states, rows, starts, counts, sample = runner._admit([ScheduledSeq(seq_id, position, 1)], 1)
    return graphs, graphs.stage(runner.builder.build(states, rows, starts, counts, sample))


def decode_step_launches(checkpoint, monkeypatch, variant: str, gemv: bool) -> tuple[Counter, int]:
    """(launches of one batch-1 decode step as a graph would capture it, layers)."""
    runner = make_runner(checkpoint(variant).path, block_size=BLOCK_SIZE)
    (prompt,) = prompts(seed=4, lengths=(21,))
    runner.step(prefill_step([(0, prompt)], BlockAllocator(), BLOCK_SIZE, greedy()))
    graphs, size = graphs_at_next_decode(runner, 0, len(prompt))
    with triton_on_cpu(monkeypatch), kernels.triton_gemv(gemv), torch.inference_mode():
        graphs.forward(size)  # the warm-up before capture: allocates what later replays reuse
        with count_launches() as counter:
            graphs.forward(size)
    return counter.launches, runner.model_config.num_layers


@pytest.mark.parametrize("variant", ["llama-gqa", "qwen2"])
def test_decode_step_launches_nine_kernels_per_layer(checkpoint, monkeypatch, variant: str) -> None:
    launches, layers = decode_step_launches(checkpoint, monkeypatch, variant, gemv=False)
    per_layer = Counter(
        {
            "triton._rms_norm_kernel": 2,  # input norm, post-attention norm (each with the residual add)
            "aten.mm": 4,  # qkv, o_proj, gate_up, down
            "triton._rotary_cache_kernel": 1,  # qkv bias, rotary, K/V store
            "triton._decode_kernel": 1,  # split, and merged by the last split
            "triton._silu_and_mul_kernel": 1,
        }
    )
    once = Counter({"aten.embedding": 1, "triton._rms_norm_kernel": 1, "aten.mm": 1, "aten.argmax": 1})
    assert launches == Counter({name: layers * n for name, n in per_layer.items()}) + once
    assert launches.total() == 9 * layers + 4


def test_decode_step_on_the_triton_gemv_launches_six_kernels_per_layer(checkpoint, monkeypatch) -> None:
    launches, layers = decode_step_launches(checkpoint, monkeypatch, "qwen2", gemv=True)
    # Per layer: norm+qkv, o_proj, norm+gate_up, silu+down on the GEMV; rotary_and_cache; attention.
    per_layer = Counter(
        {"triton._gemv_kernel": 4, "triton._rotary_cache_kernel": 1, "triton._decode_kernel": 1}
    )
    # The final norm stays on its own (the model hands out normed states); lm_head is a GEMV.
    once = Counter(
        {"aten.embedding": 1, "triton._rms_norm_kernel": 1, "triton._gemv_kernel": 1, "aten.argmax": 1}
    )
    assert launches == Counter({name: layers * n for name, n in per_layer.items()}) + once
    assert launches.total() == 6 * layers + 4


@pytest.mark.parametrize("variant", ["llama-3.2", "qwen2"])
def test_triton_decode_path_matches_the_references(checkpoint, monkeypatch, variant: str) -> None:
    # A context past one 128-key tile, so batch-1 decode attention runs in two splits and merges.
    batch = prompts(seed=5, lengths=(130, 9))
    tokens, logits = {}, {}
    for path in ("reference", "triton", "triton+gemv"):
        runner = make_runner(checkpoint(variant).path, block_size=BLOCK_SIZE, max_num_batched_tokens=512)
        seqs = list(enumerate(batch))
        generated = {s: [] for s, _ in seqs}
        # Both prefill on the references (the interpreter is slow per token), then decode.
        for output in runner.step(prefill_step(seqs, BlockAllocator(), BLOCK_SIZE, greedy())).outputs:
            generated[output.seq_id] += [t.token_id for t in output.tokens]
        with contextlib.ExitStack() as stack:
            if path != "reference":
                # 16 multiprocessors: 16 splits at batch 1, of which a 130-key context fills two.
                stack.enter_context(triton_on_cpu(monkeypatch, processors=16))
            if path == "triton+gemv":
                stack.enter_context(kernels.triton_gemv())
            recorded = stack.enter_context(recorded_logits(runner))
            # Batch 1: one sequence decodes, with the whole GPU to itself.
            for seq_id in (0, 1, 0):
                position = len(batch[seq_id]) + len(generated[seq_id]) - 1
                (output,) = runner.step(StepInput(scheduled=[ScheduledSeq(seq_id, position, 1)])).outputs
                generated[seq_id] += [t.token_id for t in output.tokens]
            # And both together, each in its own program.
            scheduled = [ScheduledSeq(s, len(p) + len(generated[s]) - 1, 1) for s, p in seqs]
            for output in runner.step(StepInput(scheduled=scheduled)).outputs:
                generated[output.seq_id] += [t.token_id for t in output.tokens]
        tokens[path], logits[path] = generated, recorded
    for path in ("triton", "triton+gemv"):
        assert tokens[path] == tokens["reference"]
        assert len(logits[path]) == 4
        for ours, expected in zip(logits[path], logits["reference"], strict=True):
            torch.testing.assert_close(ours, expected, atol=1e-4, rtol=0)


def test_compiled_decode_step_is_exact(checkpoint) -> None:
    runner = make_runner(checkpoint("qwen2").path, block_size=BLOCK_SIZE)
    (prompt,) = prompts(seed=6, lengths=(37,))
    runner.step(prefill_step([(0, prompt)], BlockAllocator(), BLOCK_SIZE, greedy()))
    graphs, size = graphs_at_next_decode(runner, 0, len(prompt))
    compiled = DecodeGraphs(
        runner.model, runner.kv_cache.layers, 1, runner.table.max_blocks_per_seq, compile_mode="default"
    )
    compiled.staging.device.copy_(graphs.staging.device)
    layer = runner.kv_cache.layers[0][0]
    slot = int(graphs.slot_mapping[0])
    with torch.inference_mode():
        logits, argmax = graphs.forward(size)
        stored = layer.view(-1, *layer.shape[2:])[slot].clone()
        layer.view(-1, *layer.shape[2:])[slot] = 0.0
        compiled_logits, compiled_argmax = compiled.step(size)
    torch.testing.assert_close(compiled_logits, logits, atol=1e-6, rtol=0)
    assert torch.equal(compiled_argmax, argmax)
    # The compiled step wrote this token's K/V into the cache in place, like the eager one.
    assert torch.equal(layer.view(-1, *layer.shape[2:])[slot], stored)


def test_compiled_decode_step_leaves_the_cache_to_the_kernels(checkpoint) -> None:
    # What Inductor receives: a graph in which no op mutates an input. A declared cache write
    # would appear as auto_functionalized, which Inductor turns into a copy of the whole cache.
    runner = make_runner(checkpoint("qwen2").path, block_size=BLOCK_SIZE)
    graphs = DecodeGraphs(runner.model, runner.kv_cache.layers, 1, runner.table.max_blocks_per_seq)
    forward_graphs: list[torch.fx.GraphModule] = []

    def record(graph: torch.fx.GraphModule, example_inputs: list) -> object:
        forward_graphs.append(graph)
        return graph.forward

    with torch.inference_mode():
        torch.compile(graphs.forward, backend=aot_autograd(fw_compiler=record), fullgraph=True)(1)
    (graph,) = forward_graphs
    calls = Counter(str(node.target) for node in graph.graph.nodes if node.op == "call_function")
    assert calls["cairn.rotary_and_cache.default"] == runner.model_config.num_layers
    assert not [t for t in calls if "functionalized" in t or "copy" in t or "clone" in t]


def test_compile_modes_with_cuda_graphs_of_their_own_are_refused(checkpoint) -> None:
    runner = make_runner(checkpoint("qwen2").path, block_size=BLOCK_SIZE)
    with pytest.raises(InvalidArgument, match="must not add CUDA graphs"):
        DecodeGraphs(runner.model, runner.kv_cache.layers, 1, 8, compile_mode="reduce-overhead")
