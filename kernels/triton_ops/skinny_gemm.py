"""y = x @ weight.T for a few rows of x (decode batches): a weight-streaming skinny GEMM.

At one to sixteen rows a linear layer only streams its weight from memory, so
what counts is keeping enough loads in flight on every multiprocessor. Each
program owns a BLOCK_N-wide column tile and a 1/SPLIT_K share of K, loading
[BLOCK_K, BLOCK_N] weight tiles through a multi-stage pipeline into tl.dot
(the rows padded to 16). Narrow layers split K so that tiles x splits cover
the GPU; the last split of a tile to finish sums the fp32 partials in split
order (deterministic) and writes the output, so a layer is one launch.

The input can come through a prologue instead of from memory as is, which
saves the launch (and the round trip of the activation) of the kernel that
would have produced it: `rms_norm_gemv` adds the residual and normalizes (every
program reads the whole rows for their norm; one stores the summed rows), and
`silu_and_mul_gemv` gates a fused gate/up output. Both round where the unfused
kernels round, so results match `rms_norm`/`silu_and_mul` then `gemv`.

On CUDA the tile width and split are autotuned per (N, K, prologue) among
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


PLAIN, RMS_NORM, SILU_AND_MUL = 0, 1, 2


@triton.jit
def _summed(x_ptr, residual_ptr, rows, k_idx, mask, stride_xm, stride_rm, HAS_RESIDUAL: tl.constexpr):
    """x (+ residual, rounded to x's dtype as the unfused add is) for rows x k_idx, in fp32."""
    x = tl.load(x_ptr + rows[:, None] * stride_xm + k_idx[None, :], mask=mask, other=0.0)
    if HAS_RESIDUAL:
        r = tl.load(residual_ptr + rows[:, None] * stride_rm + k_idx[None, :], mask=mask, other=0.0)
        x = (x.to(tl.float32) + r.to(tl.float32)).to(x_ptr.dtype.element_ty)
    return x.to(tl.float32)


@triton.jit
def _input_tile(
    x_ptr,
    residual_ptr,
    norm_w_ptr,
    rstd,
    rows,
    k_idx,
    mask,
    K,
    stride_xm,
    stride_rm,
    PROLOGUE: tl.constexpr,
    HAS_RESIDUAL: tl.constexpr,
):
    """The GEMM's input for rows x k_idx in x's dtype: x itself, rms_norm(x + residual) * weight,
    or silu(gate) * up of a fused gate/up output, rounded where the unfused kernels round."""
    dtype = x_ptr.dtype.element_ty
    if PROLOGUE == 1:
        h = _summed(x_ptr, residual_ptr, rows, k_idx, mask, stride_xm, stride_rm, HAS_RESIDUAL)
        weight = tl.load(norm_w_ptr + k_idx, mask=k_idx < K, other=0.0).to(tl.float32)
        return ((h * rstd[:, None]).to(dtype).to(tl.float32) * weight[None, :]).to(dtype)
    elif PROLOGUE == 2:
        gate_ptrs = x_ptr + rows[:, None] * stride_xm + k_idx[None, :]
        gate = tl.load(gate_ptrs, mask=mask, other=0.0).to(tl.float32)
        up = tl.load(gate_ptrs + K, mask=mask, other=0.0).to(tl.float32)
        act = (gate / (1.0 + tl.exp(-gate))).to(dtype).to(tl.float32)
        return (act * up).to(dtype)
    else:
        return tl.load(x_ptr + rows[:, None] * stride_xm + k_idx[None, :], mask=mask, other=0.0)


# Rows and split stay runtime values: specializing on them (1, multiples of 16) would multiply
# the compiles the autotuner waits for, for branches that cost nothing to take at run time.
@triton.jit(do_not_specialize=["M", "SPLIT_K"])
def _gemv_kernel(
    x_ptr,
    w_ptr,
    y_ptr,
    part_ptr,
    arrivals_ptr,
    residual_ptr,
    norm_w_ptr,
    h_out_ptr,
    M,
    N,
    K,
    stride_xm,
    stride_wn,
    stride_ym,
    stride_rm,
    stride_hm,
    eps,
    SPLIT_K,
    PROLOGUE: tl.constexpr,
    HAS_RESIDUAL: tl.constexpr,
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
    ks = tl.arange(0, BLOCK_K)
    rstd = tl.zeros((BLOCK_M,), dtype=tl.float32)
    if PROLOGUE == 1:
        # Every program needs the whole rows' norm, so each reads them (from L2: they are
        # rows x K, next to the weight tile's K x BLOCK_N); one program stores x + residual.
        squares = tl.zeros((BLOCK_M,), dtype=tl.float32)
        # Program (0, 0) stores the summed rows (a row mask: the interpreter takes no scalar one).
        write_rows = row_mask & ((rows * 0 + tile + split) == 0)
        for k in range(0, K, BLOCK_K):
            k_idx = k + ks
            mask = row_mask[:, None] & (k_idx < K)[None, :]
            h = _summed(x_ptr, residual_ptr, rows, k_idx, mask, stride_xm, stride_rm, HAS_RESIDUAL)
            squares += tl.sum(h * h, axis=1)
            if HAS_RESIDUAL:
                h_ptrs = h_out_ptr + rows[:, None] * stride_hm + k_idx[None, :]
                write_mask = write_rows[:, None] & (k_idx < K)[None, :]
                tl.store(h_ptrs, h.to(h_out_ptr.dtype.element_ty), mask=write_mask)
        rstd = tl.rsqrt(squares / K + eps)
    k_per_split = tl.cdiv(tl.cdiv(K, BLOCK_K), SPLIT_K) * BLOCK_K
    k_begin = split * k_per_split
    k_end = tl.minimum(k_begin + k_per_split, K)
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for k in range(k_begin, k_end, BLOCK_K):
        k_idx = k + ks
        k_mask = k_idx < K
        x = _input_tile(
            x_ptr,
            residual_ptr,
            norm_w_ptr,
            rstd,
            rows,
            k_idx,
            row_mask[:, None] & k_mask[None, :],
            K,
            stride_xm,
            stride_rm,
            PROLOGUE,
            HAS_RESIDUAL,
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


# Pipelined through shared memory (cp.async): the stages of [256, BLOCK_N] bf16 weight
# tiles (and of the input, with a prologue) stay within an H200 multiprocessor's 227 KiB.
_STAGES = {32: 4, 64: 4, 128: 3}
# Tuned once per layer shape and prologue, at the first (largest) decode batch that reaches
# it: the weight stream, not the few rows, decides the best tiling.
_tuned_gemv_kernel = triton.autotune(
    configs=[
        triton.Config({"BLOCK_N": block_n, "SPLIT_K": split}, num_warps=4, num_stages=_STAGES[block_n])
        for block_n in _BLOCK_NS
        for split in (1, 2, 4, 8, 16)
    ],
    key=["N", "K", "PROLOGUE"],
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
    return _launch(PLAIN, x, weight, x.shape[1], block_n=block_n, split_k=split_k)


def rms_norm_gemv(
    x: torch.Tensor,
    residual: torch.Tensor | None,
    norm_weight: torch.Tensor,
    eps: float,
    weight: torch.Tensor,
    block_n: int | None = None,
    split_k: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(rms_norm(h, norm_weight, eps) @ weight.T, h) with h = x + residual (x when None), in one
    launch: `rms_norm` then `gemv`, rounded alike."""
    k = x.shape[1]
    h = x if residual is None else torch.empty_like(x)
    if residual is not None:
        residual = residual if residual.stride(-1) == 1 else residual.contiguous()
    y = _launch(
        RMS_NORM, x, weight, k, residual, norm_weight, eps, None if residual is None else h, block_n, split_k
    )
    return y, h


def silu_and_mul_gemv(
    gate_up: torch.Tensor, weight: torch.Tensor, block_n: int | None = None, split_k: int | None = None
) -> torch.Tensor:
    """silu_and_mul(gate_up) @ weight.T in one launch: gate_up [M, 2 I], weight [N, I]."""
    return _launch(SILU_AND_MUL, gate_up, weight, gate_up.shape[1] // 2, block_n=block_n, split_k=split_k)


def _launch(
    prologue: int,
    x: torch.Tensor,
    weight: torch.Tensor,
    k: int,
    residual: torch.Tensor | None = None,
    norm_weight: torch.Tensor | None = None,
    eps: float = 0.0,
    h_out: torch.Tensor | None = None,
    block_n: int | None = None,
    split_k: int | None = None,
) -> torch.Tensor:
    rows = x.shape[0]
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
    residual = x if residual is None else residual
    h_out = x if h_out is None else h_out
    args = (
        x,
        weight,
        y,
        part,
        arrivals,
        residual,
        x if norm_weight is None else norm_weight,
        h_out,
        rows,
        n,
        k,
        x.stride(0),
        weight.stride(0),
        y.stride(0),
        residual.stride(0),
        h_out.stride(0),
        eps,
    )
    common = {
        "PROLOGUE": prologue,
        "HAS_RESIDUAL": residual is not x,
        "BLOCK_K": block_k,
        "BLOCK_M": MAX_ROWS,
        "DOT_PRECISION": dot_precision(x.dtype),
    }
    if block_n is None and split_k is None and x.device.type == "cuda":

        def grid(meta: dict) -> tuple[int, int]:
            return (triton.cdiv(n, meta["BLOCK_N"]), meta["SPLIT_K"])

        _tuned_gemv_kernel[grid](*args, **common)
        return y
    block_n = block_n or min(_BLOCK_NS)
    split_k = split_k or split_choices(triton.cdiv(n, block_n), k_tiles, processors)[0]
    _gemv_kernel[(triton.cdiv(n, block_n), split_k)](
        *args, split_k, BLOCK_N=block_n, **common, num_warps=4, num_stages=_STAGES[block_n]
    )
    return y
