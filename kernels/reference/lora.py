"""Batched LoRA over a packed batch whose tokens use different adapters (punica's SGMV, in torch).

Adapters live in a fixed pool of slots. Per projection the pool holds stacked
A `[slots, S, R, K]` and B `[slots, N, R]`: S slices of the output (3 for a
fused q/k/v projection, 2 for gate/up, else 1), rank zero-padded to R, the
LoRA scaling folded into B. Slice s covers output columns
[slice_offsets[s], slice_offsets[s + 1]) and has its own A; its B rows are
those columns. Tokens reach the kernel grouped by slot: `token_order` lists
token indices sorted by slot, and the tokens of slot l are
token_order[slot_starts[l]:slot_starts[l + 1]]; tokens without an adapter
come after slot_starts[-1] and are never touched.
"""

from __future__ import annotations

import torch


def lora_segments(token_slots: torch.Tensor, num_slots: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token slots [T] (-1: no adapter) -> (token_order [T], slot_starts [num_slots + 1]), int32."""
    keys = torch.where(token_slots < 0, num_slots, token_slots).long()
    order = torch.argsort(keys, stable=True)
    counts = torch.bincount(keys, minlength=num_slots + 1)[:num_slots]
    starts = torch.zeros(num_slots + 1, dtype=torch.int64, device=token_slots.device)
    torch.cumsum(counts, 0, out=starts[1:])
    return order.to(torch.int32), starts.to(torch.int32)


def add_lora(
    y: torch.Tensor,
    x: torch.Tensor,
    lora_a: torch.Tensor,
    lora_b: torch.Tensor,
    token_order: torch.Tensor,
    slot_starts: torch.Tensor,
    slice_offsets: list[int],
) -> torch.Tensor:
    """y[t, slice s] += (x[t] @ A[l, s].T) @ B[l, slice s].T for every token t of slot l, in place.

    The shrunk [R] vector is rounded to B's dtype before the expand, and y is
    updated in fp32 then rounded, as the Triton kernels do. Returns y.
    """
    starts = slot_starts.tolist()
    order = token_order.long()
    for slot in range(len(starts) - 1):
        begin, end = starts[slot], starts[slot + 1]
        if begin == end:
            continue
        rows = order[begin:end]
        xs = x[rows].float()
        for s in range(len(slice_offsets) - 1):
            lo, hi = slice_offsets[s], slice_offsets[s + 1]
            shrunk = (xs @ lora_a[slot, s].float().T).to(lora_b.dtype).float()
            delta = shrunk @ lora_b[slot, lo:hi].float().T
            y[rows, lo:hi] = (y[rows, lo:hi].float() + delta).to(y.dtype)
    return y
