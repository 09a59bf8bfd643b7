"""The evaluation report's figures: perplexity through the serving engine, and checkpoint sizes.

Perplexity is measured by cairn's own worker (`ModelRunner`) on both the
source and the quantized artifact, so the "after" figure is what serving
will really compute: quantized GEMMs, quantized activations and the
quantized KV cache included. Each held-out sequence is prefilled once and
scored from its prompt log-probabilities.
"""

from __future__ import annotations

import gc
import json
import math
import struct
from pathlib import Path

import torch

from cairn.services.worker.engine_config import EngineConfig
from cairn.services.worker.model_runner import ModelRunner
from cairn.services.worker.sampling_params import SamplingParams
from cairn.services.worker.step import NewSequence, ScheduledSeq, StepInput

_BLOCK_SIZE = 16
_TOKENS_PER_STEP = 4096


def perplexity(
    model_dir: Path, sequences: torch.Tensor, device: torch.device, dtype: str
) -> tuple[float, int]:
    """(perplexity, tokens scored) of `sequences` `[n, seq_len]` under the model in `model_dir`."""
    count, seq_len = sequences.shape
    per_step = max(1, min(count, _TOKENS_PER_STEP // seq_len))
    blocks_per_seq = -(-seq_len // _BLOCK_SIZE)
    runner = ModelRunner(
        EngineConfig(
            model=str(model_dir),
            dtype=dtype,
            device=device.type,
            device_index=device.index or 0,
            block_size=_BLOCK_SIZE,
            num_blocks=per_step * blocks_per_seq,
            max_num_seqs=per_step,
            max_num_batched_tokens=per_step * seq_len,
            max_model_len=seq_len,
            enforce_eager=True,
        )
    )
    try:
        runner.load()
        runner.profile_and_allocate_kv_cache()
        params = SamplingParams(temperature=0.0, max_tokens=1, prompt_logprobs=0)
        total, scored = 0.0, 0
        for start in range(0, count, per_step):
            batch = sequences[start : start + per_step].tolist()
            ids = list(range(start, start + len(batch)))
            step = StepInput(
                new_seqs=[
                    NewSequence(i, tokens, seq_len, params) for i, tokens in zip(ids, batch, strict=True)
                ],
                scheduled=[
                    ScheduledSeq(i, 0, seq_len, list(range(row * blocks_per_seq, (row + 1) * blocks_per_seq)))
                    for row, i in enumerate(ids)
                ],
            )
            for output in runner.step(step).outputs:
                total -= sum(token.logprob for token in output.prompt_logprobs)
                scored += len(output.prompt_logprobs)
            runner.free(ids)
    finally:
        del runner
        gc.collect()
        if device.type == "cuda":
            torch.cuda.empty_cache()
    return math.exp(total / scored), scored


def checkpoint_bytes(model_dir: Path) -> int:
    """Bytes of tensor data in the directory's safetensors files (headers not counted)."""
    total = 0
    for file in sorted(model_dir.glob("*.safetensors")):
        with open(file, "rb") as f:
            (header_size,) = struct.unpack("<Q", f.read(8))
            header = json.loads(f.read(header_size))
        total += sum(end - start for name, entry in header.items() if name != "__metadata__"
                     for start, end in [entry["data_offsets"]])  # fmt: skip
    return total
