"""CUDA graphs of the decode forward, one per bucketed batch size.

A decode step of a small model is launch-bound: replaying a captured graph
turns a few hundred kernel launches into one. Each graph reads fixed device
buffers (token ids, positions, slots, lengths, block tables) laid out in one
int32 allocation, so a step is: fill a pinned host copy of that layout, one
H2D copy, one replay. A batch runs in the smallest bucket that holds it; the
padding rows write to slot -1 (skipped) and have length 0 (zero output).
"""

from __future__ import annotations

import numpy as np
import torch

from cairn.services.worker.input_batch import HostBatch, Staging
from cairn.services.worker.models import AttentionMetadata, KVCaches, LlamaForCausalLM

_MAX_CAPTURE_SIZE = 512


def capture_sizes(max_num_seqs: int) -> list[int]:
    """1, 2, 4, 8, 16, 24, ... up to max_num_seqs (vLLM's buckets), ending at max_num_seqs itself."""
    limit = min(max_num_seqs, _MAX_CAPTURE_SIZE)
    sizes = [s for s in (1, 2, 4, *range(8, limit + 1, 8)) if s <= limit]
    if sizes[-1] != limit:
        sizes.append(limit)
    return sizes


class DecodeGraphs:
    def __init__(
        self, model: LlamaForCausalLM, kv_caches: KVCaches, max_num_seqs: int, max_blocks_per_seq: int
    ) -> None:
        self.model = model
        self.kv_caches = kv_caches
        self.sizes = capture_sizes(max_num_seqs)
        self.max_size = size = self.sizes[-1]
        self.width = max_blocks_per_seq
        device = model.lm_head.weight.device
        self.staging = Staging(4 * size + size * max_blocks_per_seq, device)
        buffer = self.staging.device
        self.input_ids = buffer[:size]
        self.positions = buffer[size : 2 * size]
        self.slot_mapping = buffer[2 * size : 3 * size]
        self.seq_lens = buffer[3 * size : 4 * size]
        self.block_tables = buffer[4 * size :].view(size, max_blocks_per_seq)
        # Until the first replay every row is padding: nothing written, nothing read.
        self.slot_mapping.fill_(-1)
        self.graphs: dict[int, torch.cuda.CUDAGraph] = {}
        self.outputs: dict[int, torch.Tensor] = {}
        self._bucket = np.zeros(size + 1, dtype=np.int64)
        for lower, upper in zip([0, *self.sizes], self.sizes, strict=False):
            self._bucket[lower + 1 : upper + 1] = upper

    @torch.inference_mode()
    def capture(self) -> None:
        # Largest first, sharing one memory pool: smaller graphs fit in what
        # the larger ones already reserved.
        pool = None
        for size in reversed(self.sizes):
            self._forward(size)
            torch.cuda.synchronize()
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph, pool=pool):
                self.outputs[size] = self._forward(size)
            pool = graph.pool()
            self.graphs[size] = graph
        torch.cuda.synchronize()

    def fits(self, batch: HostBatch) -> bool:
        """An all-decode batch no larger than the largest bucket."""
        return batch.all_decode and batch.num_seqs <= self.max_size

    def run(self, batch: HostBatch, input_ids: torch.Tensor | None = None) -> torch.Tensor:
        """Hidden states [B, hidden] of an all-decode batch; `input_ids` (device) replaces the
        host token ids, for multi-step decode feeding back tokens it never saw on the host."""
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
        tables = host[4 * max_size : 4 * max_size + count * width].reshape(count, width)
        tables[:, : batch.block_tables.shape[1]] = batch.block_tables
        self.staging.upload(4 * max_size + count * width)
        if input_ids is not None:
            self.input_ids[:count].copy_(input_ids)
        self.graphs[size].replay()
        return self.outputs[size][:count]

    def _forward(self, size: int) -> torch.Tensor:
        meta = AttentionMetadata(
            slot_mapping=self.slot_mapping[:size],
            num_decode_tokens=size,
            decode_block_tables=self.block_tables[:size],
            decode_seq_lens=self.seq_lens[:size],
        )
        return self.model(self.input_ids[:size], self.positions[:size], meta, self.kv_caches)
