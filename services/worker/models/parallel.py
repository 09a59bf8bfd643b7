"""Layers split across the ranks of a tensor-parallel replica (Megatron-LM's scheme, as vLLM runs it).

- Column-parallel projections (q/k/v, gate/up) give each rank a slice of the
  output features: its attention heads, its part of the MLP. A fused projection
  splits each of its parts on its own, so a rank's slice is again [q | k | v].
- Row-parallel projections (o_proj, down_proj) take that slice as their input
  and leave a partial sum on each rank; the block all-reduces it, once per
  attention and once per MLP.
- With fewer KV heads than ranks, each KV head is replicated on the ranks
  whose query heads read it (rank r holds KV head r // (ranks / kv heads)).
- Embedding and LM head are split by vocabulary, padded to a multiple of the
  ranks: an embedding rank looks up only its ids and the sum over ranks
  assembles each row; the LM head's logit slices are all-gathered.

Every layer also says which part of a checkpoint tensor its rank holds
(`checkpoint_part`), so the loader reads that part and nothing else. At one
rank every layer computes what its plain counterpart does.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from cairn import kernels
from cairn.common.errors import InvalidArgument
from cairn.services.worker.distributed import TensorParallel
from cairn.services.worker.models.config import ModelConfig


@dataclass(frozen=True)
class Narrow:
    """The part of a checkpoint tensor one rank holds: `length` entries from `start` along `dim`,
    whose full size there is `full`. Entries at `full` and beyond are padding (zeros)."""

    dim: int
    start: int
    length: int
    full: int


def kv_head_replicas(num_kv_heads: int, tp_size: int) -> int:
    """Ranks that hold each KV head: 1 unless there are fewer KV heads than ranks."""
    return max(1, tp_size // num_kv_heads)


def kv_heads_per_rank(num_kv_heads: int, tp_size: int) -> int:
    return max(1, num_kv_heads // tp_size)


def padded_vocab(vocab_size: int, tp_size: int) -> int:
    return -(-vocab_size // tp_size) * tp_size


def check_shardable(config: ModelConfig, tp_size: int) -> None:
    """InvalidArgument unless `config`'s heads and MLP split evenly over `tp_size` ranks."""
    if tp_size < 1:
        raise InvalidArgument(f"tensor_parallel_size must be >= 1, got {tp_size}")
    kv = config.num_kv_heads
    problems = [
        (config.num_heads % tp_size, f"{config.num_heads} attention heads"),
        (kv % tp_size and tp_size % kv, f"{kv} KV heads (neither a multiple nor a divisor of it)"),
        (config.intermediate_size % tp_size, f"an MLP of {config.intermediate_size}"),
    ]
    for bad, what in problems:
        if bad:
            raise InvalidArgument(f"tensor_parallel_size {tp_size} cannot split {what} evenly over its ranks")


class Linear(nn.Linear):
    """nn.Linear through `kernels.linear`, so decode batches can take the Triton GEMV
    (`kernels.triton_gemv`). Quantization replaces these like any nn.Linear."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return kernels.linear(x, self.weight, self.bias)


class ColumnParallelLinear(Linear):
    """Output features split over the ranks; no communication.

    `output_sizes` are the full sizes of the fused parts (one part for an
    unfused projection); part i is cut into `size / replicas[i]` pieces, each
    held by `replicas[i]` consecutive ranks (KV heads fewer than the ranks)."""

    def __init__(
        self,
        input_size: int,
        output_sizes: Sequence[int],
        tp: TensorParallel,
        bias: bool = False,
        replicas: Sequence[int] | None = None,
    ) -> None:
        replicas = tuple(replicas or (1,) * len(output_sizes))
        local = tuple(size * r // tp.size for size, r in zip(output_sizes, replicas, strict=True))
        super().__init__(input_size, sum(local), bias)
        self.tp = tp
        self.full_sizes = tuple(output_sizes)
        self.replicas = replicas
        # This rank's size of each part: what the fused parameter is split into.
        self.output_sizes = local

    def checkpoint_part(self, leaf: str, part: int) -> Narrow:
        """Weight and bias of part `part` split alike, along the output features."""
        length = self.output_sizes[part]
        start = self.tp.rank // self.replicas[part] * length
        return Narrow(0, start, length, self.full_sizes[part])


class RowParallelLinear(Linear):
    """Input features split over the ranks: each rank's output is a partial sum, which the
    block all-reduces. The bias is added on rank 0 alone, so the sum holds it once."""

    def __init__(self, input_size: int, output_size: int, tp: TensorParallel, bias: bool = False) -> None:
        super().__init__(input_size // tp.size, output_size, bias)
        self.tp = tp
        self.full_input_size = input_size

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return kernels.linear(x, self.weight, self.bias if self.tp.is_leader else None)

    def checkpoint_part(self, leaf: str, part: int) -> Narrow | None:
        if leaf == "bias":
            return None
        return Narrow(1, self.tp.rank * self.in_features, self.in_features, self.full_input_size)


def _vocab_part(tp: TensorParallel, rows: int, vocab_size: int) -> Narrow:
    return Narrow(0, tp.rank * rows, rows, vocab_size)


class VocabParallelEmbedding(nn.Module):
    """This rank's rows of the embedding (the vocabulary padded to a multiple of the ranks)."""

    def __init__(self, vocab_size: int, hidden_size: int, tp: TensorParallel) -> None:
        super().__init__()
        self.tp = tp
        self.vocab_size = vocab_size
        self.rows = padded_vocab(vocab_size, tp.size) // tp.size
        self.start = tp.rank * self.rows
        self.weight = nn.Parameter(torch.empty(self.rows, hidden_size))

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        if self.tp.size == 1:
            return F.embedding(input_ids, self.weight)
        local = input_ids - self.start
        mine = (local >= 0) & (local < self.rows)
        hidden = F.embedding(torch.where(mine, local, 0), self.weight)
        hidden.masked_fill_(~mine.unsqueeze(-1), 0)
        return self.tp.all_reduce(hidden)

    def checkpoint_part(self, leaf: str, part: int) -> Narrow:
        return _vocab_part(self.tp, self.rows, self.vocab_size)


class ParallelLMHead(Linear):
    """This rank's rows of the LM head (the same split as the embedding, so tying works); the
    logits of every rank are all-gathered, so each rank holds all of them."""

    def __init__(self, hidden_size: int, vocab_size: int, tp: TensorParallel) -> None:
        super().__init__(hidden_size, padded_vocab(vocab_size, tp.size) // tp.size, bias=False)
        self.tp = tp
        self.vocab_size = vocab_size

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits = self.tp.all_gather(super().forward(x))
        return logits if logits.shape[-1] == self.vocab_size else logits[..., : self.vocab_size]

    def checkpoint_part(self, leaf: str, part: int) -> Narrow:
        return _vocab_part(self.tp, self.out_features, self.vocab_size)
