"""Batched LoRA over tokens of different adapters: SGMV shrink then expand (punica / vLLM style).

Layout and semantics: `cairn.kernels.reference.lora`. Tokens come grouped by
adapter slot (`token_order`, `slot_starts`), so a program works on up to
BLOCK_M tokens of one slot and loads that slot's A or B tile once for all of
them. The grid covers the worst case (every token in one slot) for every
slot, and programs past their slot's segment return at once: no host sync and
fixed launch shapes, so a CUDA graph captures it and replays any mix of
adapters through the index buffers alone.

shrink: grid (token tiles, slices, slots); [BLOCK_M, K] x [K, R] per program,
written to an fp32 [T, S * R] buffer at the tokens' rows. expand: grid (token
tiles, column tiles of the widest slice, slices x slots); the shrunk rows
(rounded to B's dtype) times B's column tile, added to y in place. Every
(token, column) of y belongs to exactly one program, so there are no races.
"""

from __future__ import annotations

import itertools

import torch
import triton
import triton.language as tl

from cairn.kernels.triton_ops.attention_tile import dot_precision

_MAX_SLICES = 3
_BLOCK_K = 64
_BLOCK_N = 128


@triton.jit
def _segment(token_order_ptr, slot_starts_ptr, slot, tile, BLOCK_M: tl.constexpr):
    """(token indices, mask, whether the tile holds none) of token tile `tile` of slot `slot`."""
    begin = tl.load(slot_starts_ptr + slot)
    count = tl.load(slot_starts_ptr + slot + 1) - begin
    offsets = tile * BLOCK_M + tl.arange(0, BLOCK_M)
    mask = offsets < count
    tokens = tl.load(token_order_ptr + begin + offsets, mask=mask, other=0).to(tl.int64)
    return tokens, mask, tile * BLOCK_M >= count


@triton.jit
def _slice_bounds(s, off0, off1, off2, off3):
    lo = tl.where(s == 0, off0, tl.where(s == 1, off1, off2))
    hi = tl.where(s == 0, off1, tl.where(s == 1, off2, off3))
    return lo, hi


@triton.jit
def _shrink_kernel(
    x_ptr,
    a_ptr,
    out_ptr,
    token_order_ptr,
    slot_starts_ptr,
    K,
    R,
    stride_xm,
    stride_al,
    stride_as,
    stride_ar,
    stride_om,
    BLOCK_M: tl.constexpr,
    BLOCK_R: tl.constexpr,
    BLOCK_K: tl.constexpr,
    DOT_PRECISION: tl.constexpr,
):
    tile = tl.program_id(0)
    s = tl.program_id(1)
    slot = tl.program_id(2)
    tokens, token_mask, empty = _segment(token_order_ptr, slot_starts_ptr, slot, tile, BLOCK_M)
    if empty:
        return
    ranks = tl.arange(0, BLOCK_R)
    rank_mask = ranks < R
    a_base = a_ptr + slot.to(tl.int64) * stride_al + s * stride_as
    acc = tl.zeros((BLOCK_M, BLOCK_R), dtype=tl.float32)
    for k0 in range(0, K, BLOCK_K):
        ks = k0 + tl.arange(0, BLOCK_K)
        k_mask = ks < K
        x = tl.load(
            x_ptr + tokens[:, None] * stride_xm + ks[None, :],
            mask=token_mask[:, None] & k_mask[None, :],
            other=0.0,
        )
        a = tl.load(
            a_base + ranks[None, :] * stride_ar + ks[:, None],
            mask=rank_mask[None, :] & k_mask[:, None],
            other=0.0,
        )
        acc += tl.dot(x, a, input_precision=DOT_PRECISION)
    out = out_ptr + tokens[:, None] * stride_om + s * R + ranks[None, :]
    tl.store(out, acc, mask=token_mask[:, None] & rank_mask[None, :])


@triton.jit
def _expand_kernel(
    shrunk_ptr,
    b_ptr,
    y_ptr,
    token_order_ptr,
    slot_starts_ptr,
    R,
    num_slices,
    off0,
    off1,
    off2,
    off3,
    stride_sm,
    stride_bl,
    stride_bn,
    stride_ym,
    BLOCK_M: tl.constexpr,
    BLOCK_R: tl.constexpr,
    BLOCK_N: tl.constexpr,
    DOT_PRECISION: tl.constexpr,
):
    tile = tl.program_id(0)
    col_tile = tl.program_id(1)
    slot = tl.program_id(2) // num_slices
    s = tl.program_id(2) % num_slices
    lo, hi = _slice_bounds(s, off0, off1, off2, off3)
    tokens, token_mask, empty = _segment(token_order_ptr, slot_starts_ptr, slot, tile, BLOCK_M)
    if empty | (col_tile * BLOCK_N >= hi - lo):
        return
    ranks = tl.arange(0, BLOCK_R)
    rank_mask = ranks < R
    cols = lo + col_tile * BLOCK_N + tl.arange(0, BLOCK_N)
    col_mask = cols < hi
    shrunk = tl.load(
        shrunk_ptr + tokens[:, None] * stride_sm + s * R + ranks[None, :],
        mask=token_mask[:, None] & rank_mask[None, :],
        other=0.0,
    ).to(b_ptr.dtype.element_ty)
    b = tl.load(
        b_ptr + slot.to(tl.int64) * stride_bl + cols[None, :] * stride_bn + ranks[:, None],
        mask=rank_mask[:, None] & col_mask[None, :],
        other=0.0,
    )
    delta = tl.dot(shrunk, b, input_precision=DOT_PRECISION)
    y_ptrs = y_ptr + tokens[:, None] * stride_ym + cols[None, :]
    mask = token_mask[:, None] & col_mask[None, :]
    y = tl.load(y_ptrs, mask=mask, other=0.0).to(tl.float32)
    tl.store(y_ptrs, (y + delta).to(y_ptr.dtype.element_ty), mask=mask)


def _block_m(num_tokens: int) -> int:
    # Decode batches: a slot's segment is a few tokens, so small tiles waste little;
    # prefill segments are long, and wider tiles load each A/B tile for more tokens.
    return 16 if num_tokens <= 512 else 64


def add_lora(
    y: torch.Tensor,
    x: torch.Tensor,
    lora_a: torch.Tensor,
    lora_b: torch.Tensor,
    token_order: torch.Tensor,
    slot_starts: torch.Tensor,
    slice_offsets: list[int],
) -> torch.Tensor:
    num_tokens, k = x.shape
    num_slots, num_slices, rank, _ = lora_a.shape
    if num_slices > _MAX_SLICES or len(slice_offsets) != num_slices + 1:
        raise ValueError(f"at most {_MAX_SLICES} slices with {num_slices + 1} offsets, got {slice_offsets}")
    if num_tokens == 0 or num_slots == 0:
        return y
    block_m = _block_m(num_tokens)
    block_r = max(16, triton.next_power_of_2(rank))
    precision = dot_precision(x.dtype)
    tiles = triton.cdiv(num_tokens, block_m)
    shrunk = torch.empty(num_tokens, num_slices * rank, dtype=torch.float32, device=x.device)
    _shrink_kernel[(tiles, num_slices, num_slots)](
        x,
        lora_a,
        shrunk,
        token_order,
        slot_starts,
        k,
        rank,
        x.stride(0),
        lora_a.stride(0),
        lora_a.stride(1),
        lora_a.stride(2),
        shrunk.stride(0),
        BLOCK_M=block_m,
        BLOCK_R=block_r,
        BLOCK_K=_BLOCK_K,
        DOT_PRECISION=precision,
    )
    offsets = [*slice_offsets, *[slice_offsets[-1]] * (_MAX_SLICES + 1 - len(slice_offsets))]
    widest = max(hi - lo for lo, hi in itertools.pairwise(slice_offsets))
    _expand_kernel[(tiles, triton.cdiv(widest, _BLOCK_N), num_slices * num_slots)](
        shrunk,
        lora_b,
        y,
        token_order,
        slot_starts,
        rank,
        num_slices,
        *offsets,
        shrunk.stride(0),
        lora_b.stride(0),
        lora_b.stride(1),
        y.stride(0),
        BLOCK_M=block_m,
        BLOCK_R=block_r,
        BLOCK_N=_BLOCK_N,
        DOT_PRECISION=precision,
    )
    return y
