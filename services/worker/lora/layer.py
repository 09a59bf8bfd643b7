"""A projection with a pool of LoRA adapters on top: base(x) plus each token's own adapter delta.

`LoRALinear` wraps the model's projection (plain or quantized) instead of
subclassing `Linear`, so the model's fused fast paths for plain layers
(`norm_then_linear`'s RMSNorm+GEMV, `silu_and_mul_gemv`) step aside and every
call goes through `forward`. Fused projections keep one A per slice (q, k, v
or gate, up) and one B over the whole output, as `kernels.add_lora` expects.
All wrapped layers of a model share one `LoRAState`, whose mapping (tokens
grouped by adapter slot) the runner sets before each forward; a CUDA graph
captures the mapping's buffers, and replays read whatever was staged there.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import torch
from torch import nn

from cairn import kernels


@dataclass
class LoRAMapping:
    """A batch's tokens grouped by adapter slot (see `kernels.reference.lora`)."""

    token_order: torch.Tensor  # [T] int32
    slot_starts: torch.Tensor  # [max_loras + 1] int32


class LoRAState:
    """The mapping of the batch being run; None: no token has an adapter, the base alone runs."""

    def __init__(self) -> None:
        self.mapping: LoRAMapping | None = None


class LoRALinear(nn.Module):
    def __init__(
        self,
        base: nn.Module,
        slice_sizes: tuple[int, ...],
        max_loras: int,
        max_rank: int,
        state: LoRAState,
        dtype: torch.dtype,
        device: torch.device,
    ) -> None:
        super().__init__()
        self.base = base
        self.state = state
        self.in_features = base.in_features
        self.out_features = base.out_features
        self.slice_offsets = list(itertools.accumulate(slice_sizes, initial=0))
        shape_a = (max_loras, len(slice_sizes), max_rank, self.in_features)
        self.register_buffer("lora_a", torch.zeros(shape_a, dtype=dtype, device=device), persistent=False)
        shape_b = (max_loras, self.out_features, max_rank)
        self.register_buffer("lora_b", torch.zeros(shape_b, dtype=dtype, device=device), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.base(x)
        mapping = self.state.mapping
        if mapping is None:
            return y
        return kernels.add_lora(
            y, x, self.lora_a, self.lora_b, mapping.token_order, mapping.slot_starts, self.slice_offsets
        )

    def slice_size(self, index: int) -> int:
        return self.slice_offsets[index + 1] - self.slice_offsets[index]

    def clear(self, slot: int) -> None:
        self.lora_a[slot].zero_()
        self.lora_b[slot].zero_()

    def set_slice(self, slot: int, index: int, a: torch.Tensor, b: torch.Tensor) -> None:
        """Slice `index` of `slot` becomes A [r, in], B [slice size, r] (scaling folded in); the
        ranks past r stay zero."""
        rank = a.shape[0]
        lo, hi = self.slice_offsets[index], self.slice_offsets[index + 1]
        self.lora_a[slot, index, :rank].copy_(a)
        self.lora_b[slot, lo:hi, :rank].copy_(b)

    def extra_repr(self) -> str:
        slots, _, rank, _ = self.lora_a.shape
        return f"slices={self.slice_offsets}, max_loras={slots}, max_rank={rank}"
