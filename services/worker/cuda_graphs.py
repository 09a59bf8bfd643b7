"""CUDA graphs of the decode step, one per bucketed batch size.

A decode step of a small model is launch-bound: replaying a captured graph
turns a few hundred kernel launches into one. Each graph reads fixed device
buffers (token ids, positions, slots, lengths, block tables) laid out in one
int32 allocation, and runs the forward, the lm_head and the greedy argmax, so
a greedy step is: fill a pinned host copy of that layout, one H2D copy, one
replay, one D2H copy of the token ids. Other sampling reads the graph's
logits. A batch runs in the smallest bucket that holds it; the padding rows
write to slot -1 (skipped) and have length 0 (zero output).

With LoRA, the graphs also read the batch's tokens grouped by adapter slot
from two more buffers (`kernels.add_lora` runs in every wrapped projection;
with no adapter token its programs return at once).

With `compile_mode`, the step is first compiled by torch.compile (the kernels
are opaque `torch.ops.cairn` custom ops) and the compiled code is captured.
"""

from __future__ import annotations

import numpy as np
import torch

from cairn.common.errors import InvalidArgument
from cairn.services.worker.input_batch import HostBatch, Staging
from cairn.services.worker.lora import LoRAAdapters, LoRAMapping
from cairn.services.worker.models import AttentionMetadata, KVCaches, LlamaForCausalLM

_MAX_CAPTURE_SIZE = 512
# torch.compile modes that leave CUDA graphs to us.
_COMPILE_MODES = ("default", "max-autotune-no-cudagraphs")


def capture_sizes(max_num_seqs: int) -> list[int]:
    """1, 2, 4, 8, 16, 24, ... up to max_num_seqs (vLLM's buckets), ending at max_num_seqs itself."""
    limit = min(max_num_seqs, _MAX_CAPTURE_SIZE)
    sizes = [s for s in (1, 2, 4, *range(8, limit + 1, 8)) if s <= limit]
    if sizes[-1] != limit:
        sizes.append(limit)
    return sizes


class DecodeGraphs:
    def __init__(
        self,
        model: LlamaForCausalLM,
        kv_caches: KVCaches,
        max_num_seqs: int,
        max_blocks_per_seq: int,
        compile_mode: str | None = None,
        lora: LoRAAdapters | None = None,
    ) -> None:
        self.model = model
        self.lora = lora
        self.kv_caches = kv_caches
        self.sizes = capture_sizes(max_num_seqs)
        self.max_size = size = self.sizes[-1]
        self.width = max_blocks_per_seq
        device = model.lm_head.weight.device
        # ids | positions | slots | seq_lens | lora_order | lora_starts | block tables
        lora_size = 0 if lora is None else size + lora.max_loras + 1
        self.header = 4 * size + lora_size
        self.staging = Staging(self.header + size * max_blocks_per_seq, device)
        buffer = self.staging.device
        self.input_ids = buffer[:size]
        self.positions = buffer[size : 2 * size]
        self.slot_mapping = buffer[2 * size : 3 * size]
        self.seq_lens = buffer[3 * size : 4 * size]
        lora_end = 4 * size + (0 if lora is None else size)
        self.lora_order = buffer[4 * size : lora_end]
        self.lora_starts = buffer[lora_end : self.header]
        self.block_tables = buffer[self.header :].view(size, max_blocks_per_seq)
        # Until the first replay every row is padding: nothing written, nothing read.
        self.slot_mapping.fill_(-1)
        self.graphs: dict[int, torch.cuda.CUDAGraph] = {}
        # Per size: logits [size, vocab] in the model's dtype and their argmax [size] int64.
        self.outputs: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
        self.step = self.forward
        if compile_mode is not None:
            if compile_mode not in _COMPILE_MODES:
                # Inductor's own CUDA graphs would copy every input (the KV cache among them)
                # into static buffers on each call; these graphs capture the compiled code instead.
                raise InvalidArgument(
                    f"compile_mode must be one of {_COMPILE_MODES}: the decode graphs capture it, "
                    f"so Inductor must not add CUDA graphs of its own; got {compile_mode!r}"
                )
            # Static shapes: each size gets code specialized to it (a recompile per size).
            self.step = torch.compile(self.forward, mode=compile_mode, dynamic=False, fullgraph=True)
        self._bucket = np.zeros(size + 1, dtype=np.int64)
        for lower, upper in zip([0, *self.sizes], self.sizes, strict=False):
            self._bucket[lower + 1 : upper + 1] = upper

    @torch.inference_mode()
    def capture(self) -> None:
        # Largest first, sharing one memory pool: smaller graphs fit in what
        # the larger ones already reserved.
        pool = None
        limit = len(self.sizes) + 8
        with torch._dynamo.config.patch(recompile_limit=limit, accumulated_recompile_limit=limit):
            for size in reversed(self.sizes):
                pool = self._capture(size, pool)
        torch.cuda.synchronize()

    def _capture(self, size: int, pool: tuple | None) -> tuple:
        """Captures the graph of `size`; returns the memory pool it shares."""
        # The warm-up call also compiles: nothing may compile under capture.
        self.step(size)
        torch.cuda.synchronize()
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, pool=pool):
            self.outputs[size] = self.step(size)
        self.graphs[size] = graph
        return graph.pool()

    def fits(self, batch: HostBatch) -> bool:
        """An all-decode batch no larger than the largest bucket."""
        return batch.all_decode and batch.num_seqs <= self.max_size

    def run(
        self, batch: HostBatch, input_ids: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(logits [B, vocab] in the model's dtype, their argmax [B]) of an all-decode batch;
        `input_ids` (device) replaces the host token ids, for multi-step decode feeding back
        tokens it never saw on the host. Both are views of the graph's buffers, valid until
        the next replay."""
        size = self.stage(batch, input_ids)
        self.graphs[size].replay()
        logits, token_ids = self.outputs[size]
        return logits[: batch.num_seqs], token_ids[: batch.num_seqs]

    def stage(self, batch: HostBatch, input_ids: torch.Tensor | None = None) -> int:
        """Copies an all-decode batch into the input buffers (one H2D copy, plus `input_ids`
        device to device); returns the size of the graph that runs it."""
        count = batch.num_seqs
        size = int(self._bucket[count])
        max_size, width = self.max_size, self.width
        host = self.staging.host()
        for section, values, pad in (
            (0, batch.input_ids, 0),
            (1, batch.positions, 0),
            (2, batch.slot_mapping, -1),
            (3, batch.seq_lens, 0),
        ):
            start = section * max_size
            host[start : start + count] = values
            host[start + count : start + size] = pad
        if self.lora is not None:
            if batch.lora_order is None:
                host[5 * max_size : self.header] = 0
            else:
                host[4 * max_size : 4 * max_size + count] = batch.lora_order
                host[5 * max_size : self.header] = batch.lora_starts
        header = self.header
        tables = host[header : header + count * width].reshape(count, width)
        tables[:, : batch.block_tables.shape[1]] = batch.block_tables
        self.staging.upload(header + count * width)
        if input_ids is not None:
            self.input_ids[:count].copy_(input_ids)
        return size

    def forward(self, size: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The decode step of the first `size` buffer rows, uncompiled; `step` is what a graph captures."""
        meta = AttentionMetadata(
            slot_mapping=self.slot_mapping[:size],
            num_decode_tokens=size,
            decode_block_tables=self.block_tables[:size],
            decode_seq_lens=self.seq_lens[:size],
        )
        if self.lora is not None:
            self.lora.set_mapping(LoRAMapping(self.lora_order[:size], self.lora_starts))
        hidden = self.model(self.input_ids[:size], self.positions[:size], meta, self.kv_caches)
        logits = self.model.logits(hidden)
        return logits, logits.argmax(dim=-1)
