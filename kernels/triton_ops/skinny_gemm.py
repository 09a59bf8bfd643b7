"""y = x @ weight.T for a few rows of x (decode batches): a weight-streaming skinny GEMM.

At one to sixteen rows a linear layer only streams its weight from memory, so
what counts is keeping enough loads in flight on every multiprocessor. Each
program owns a BLOCK_N-wide column tile and a 1/SPLIT_K share of K, loading
[BLOCK_K, BLOCK_N] weight tiles through a multi-stage pipeline into tl.dot
(the rows padded to 16). Narrow layers split K so that tiles x splits cover
the GPU; the last split of a tile to finish sums the fp32 partials in split
order (deterministic) and writes the output, so a layer is one launch.

On CUDA the tile width and split are autotuned per (rows, N, K) among
candidates that cover the multiprocessors; the first call of a shape tunes,
so warm up before CUDA-graph capture. Elsewhere (the interpreter) the
heuristic's first candidate runs.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from cairn.kernels.triton_ops.attention_tile import dot_precision
from cairn.kernels.triton_ops.decode import _processor_count
from cairn.kernels.triton_ops.scratch import scratch

MAX_ROWS = 16
_BLOCK_NS = (32, 64, 128)
_MAX_SPLIT = 16


@triton.jit
def _gemv_kernel(
    x_ptr,
    w_ptr,
    y_ptr,
    part_ptr,
    arrivals_ptr,
    M,
    N,
    K,
    stride_xm,
    stride_wn,
    stride_ym,
    SPLIT_K,
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
    BLOCK_M: tl.constexpr,
    DOT_PRECISION: tl.constexpr,
):
    tile = tl.program_id(0)
    split = tl.program_id(1)
    rows = tl.arange(0, BLOCK_M)
    cols = tile * BLOCK_N + tl.arange(0, BLOCK_N)
    row_mask = rows < M
    col_mask = cols < N
    k_per_split = tl.cdiv(tl.cdiv(K, BLOCK_K), SPLIT_K) * BLOCK_K
    k_begin = split * k_per_split
    k_end = tl.minimum(k_begin + k_per_split, K)
    ks = tl.arange(0, BLOCK_K)
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for k in range(k_begin, k_end, BLOCK_K):
        k_idx = k + ks
        k_mask = k_idx < K
        x = tl.load(
            x_ptr + rows[:, None] * stride_xm + k_idx[None, :],
            mask=row_mask[:, None] & k_mask[None, :],
            other=0.0,
        )
        w = tl.load(
            w_ptr + cols[None, :].to(tl.int64) * stride_wn + k_idx[:, None],
            mask=k_mask[:, None] & col_mask[None, :],
            other=0.0,
        )
        acc = tl.dot(x, w, acc, input_precision=DOT_PRECISION)
    out_mask = row_mask[:, None] & col_mask[None, :]
    out_ptrs = y_ptr + rows[:, None] * stride_ym + cols[None, :]
    if SPLIT_K == 1:
        tl.store(out_ptrs, acc.to(y_ptr.dtype.element_ty), mask=out_mask)
    else:
        tl.store(part_ptr + (split * M + rows[:, None]) * N + cols[None, :], acc, mask=out_mask)
        # As in decode attention: every thread's partial is stored before the barrier, the
        # acq_rel atomic publishes them, and the last split of the tile sums them (in split
        # order, whatever the arrival order) and resets the count for the next launch.
        tl.debug_barrier()
        arrivals = arrivals_ptr + tile
        if tl.atomic_add(arrivals, 1, sem="acq_rel", scope="gpu") == SPLIT_K - 1:
            total = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
            for s in range(0, SPLIT_K):
                total += tl.load(
                    part_ptr + (s * M + rows[:, None]) * N + cols[None, :],
                    mask=out_mask,
                    other=0.0,
                    cache_modifier=".cg",
                )
            tl.store(out_ptrs, total.to(y_ptr.dtype.element_ty), mask=out_mask)
            tl.atomic_xchg(arrivals, 0, sem="relaxed", scope="gpu")


def split_choices(n_tiles: int, k_tiles: int, processors: int) -> list[int]:
    """The smallest power-of-two split that puts a program on every multiprocessor (within
    K's tiles), and the next one up: the candidates the autotuner times for one tile width."""
    split = 1
    while n_tiles * split < processors and split * 2 <= min(k_tiles, _MAX_SPLIT):
        split *= 2
    return [split, split * 2] if split * 2 <= min(k_tiles, _MAX_SPLIT) else [split]


def _block_k(dtype: torch.dtype) -> int:
    return 256 if dtype.itemsize == 2 else 128


def _prune(configs: list[triton.Config], named_args: dict, **kwargs: object) -> list[triton.Config]:
    x = named_args["x_ptr"]
    processors = _processor_count(x.device.type, x.device.index)
    k_tiles = triton.cdiv(named_args["K"], _block_k(x.dtype))
    return [
        config
        for config in configs
        if config.kwargs["SPLIT_K"]
        in split_choices(triton.cdiv(named_args["N"], config.kwargs["BLOCK_N"]), k_tiles, processors)
    ]


# Pipelined through shared memory (cp.async): 3 or 4 stages of a [256, BLOCK_N] bf16
# tile are 48 to 216 KiB, within an H200 multiprocessor's 227 KiB.
_tuned_gemv_kernel = triton.autotune(
    configs=[
        triton.Config({"BLOCK_N": block_n, "SPLIT_K": split}, num_warps=4, num_stages=stages)
        for block_n in _BLOCK_NS
        for stages in (3, 4)
        for split in (1, 2, 4, 8, 16)
    ],
    key=["M", "N", "K"],
    prune_configs_by={"early_config_prune": _prune},
    warmup=5,
    rep=20,
)(_gemv_kernel)


def gemv(
    x: torch.Tensor, weight: torch.Tensor, block_n: int | None = None, split_k: int | None = None
) -> torch.Tensor:
    """x [M, K] (M <= 16) @ weight [N, K].T -> [M, N] in x's dtype, fp32 accumulation.

    `block_n` and `split_k` fix the tile width and split (tests); by default CUDA autotunes
    them and other devices take the heuristic's first candidate at the smallest width.
    """
    rows, k = x.shape
    n = weight.shape[0]
    if rows > MAX_ROWS:
        raise ValueError(f"gemv takes at most {MAX_ROWS} rows, got {rows}")
    x = x if x.stride(-1) == 1 else x.contiguous()
    weight = weight if weight.stride(-1) == 1 else weight.contiguous()
    y = torch.empty((rows, n), dtype=x.dtype, device=x.device)
    if rows == 0:
        return y
    block_k = _block_k(x.dtype)
    processors = _processor_count(x.device.type, x.device.index)
    k_tiles = triton.cdiv(k, block_k)
    most_splits = max(max(split_choices(triton.cdiv(n, b), k_tiles, processors)) for b in _BLOCK_NS)
    most_splits = max(most_splits, split_k or 1)
    part = scratch("gemv_partials", x.device, most_splits * rows * n, torch.float32, zeroed=False)
    arrivals = scratch("gemv_arrivals", x.device, triton.cdiv(n, min(_BLOCK_NS)), torch.int32, zeroed=True)
    args = (x, weight, y, part, arrivals, rows, n, k, x.stride(0), weight.stride(0), y.stride(0))
    common = {"BLOCK_K": block_k, "BLOCK_M": MAX_ROWS, "DOT_PRECISION": dot_precision(x.dtype)}
    if block_n is None and split_k is None and x.device.type == "cuda":

        def grid(meta: dict) -> tuple[int, int]:
            return (triton.cdiv(n, meta["BLOCK_N"]), meta["SPLIT_K"])

        _tuned_gemv_kernel[grid](*args, **common)
        return y
    block_n = block_n or min(_BLOCK_NS)
    split_k = split_k or split_choices(triton.cdiv(n, block_n), k_tiles, processors)[0]
    _gemv_kernel[(triton.cdiv(n, block_n), split_k)](
        *args, split_k, BLOCK_N=block_n, **common, num_warps=4, num_stages=4
    )
    return y
