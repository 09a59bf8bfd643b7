"""The packed layout of weight-only INT4/INT8 matrices that the quantized GEMMs read.

A weight `[N, K]` of unsigned `bits`-bit codes is stored transposed and packed
along K, GPTQ style: `qweight[k // pack, n]` holds code (n, k) at bit offset
`(k % pack) * bits`, with pack = 32 // bits. N is contiguous, so the GEMM loads
a tile of output columns coalesced, and a code never straddles two words.
Codes are unsigned: the signed value plus `2**(bits - 1)` for symmetric
schemes, the asymmetric code itself otherwise. compressed-tensors' packed
format is this layout transposed; GPTQ checkpoints use it as is.

Scales and zero points are `[K // group_size, N]`; a per-channel scheme is
one group spanning K. Without zero points the code's midpoint
`2**(bits - 1)` is the zero.
"""

from __future__ import annotations

import torch

SUPPORTED_BITS = (4, 8)


def pack_factor(bits: int) -> int:
    if bits not in SUPPORTED_BITS:
        raise ValueError(f"packed weights hold 4- or 8-bit codes, not {bits}-bit")
    return 32 // bits


def pack_codes(codes: torch.Tensor, bits: int) -> torch.Tensor:
    """Unsigned codes `[R, C]` (C divisible by 32 // bits) -> int32 `[R, C // pack]`, packed along C."""
    pack = pack_factor(bits)
    rows, cols = codes.shape
    if cols % pack:
        raise ValueError(f"{cols} columns do not pack into whole 32-bit words of {pack} codes")
    shifts = torch.arange(pack, device=codes.device, dtype=torch.int64) * bits
    words = (codes.to(torch.int64).view(rows, cols // pack, pack) << shifts).sum(-1)
    # Words with the top bit set are negative as int32; wrap them explicitly.
    return torch.where(words >= 2**31, words - 2**32, words).to(torch.int32)


def unpack_codes(words: torch.Tensor, bits: int) -> torch.Tensor:
    """int32 `[R, W]` packed along the last dim -> unsigned codes `[R, W * pack]` as int32."""
    pack = pack_factor(bits)
    shifts = torch.arange(pack, device=words.device, dtype=torch.int32) * bits
    # Arithmetic shifts smear the sign bit into the high bits; the mask drops them.
    codes = (words.unsqueeze(-1) >> shifts) & ((1 << bits) - 1)
    return codes.reshape(*words.shape[:-1], words.shape[-1] * pack)


def pack_weight(codes: torch.Tensor, bits: int) -> torch.Tensor:
    """Unsigned codes `[N, K]` -> the GEMM layout `qweight` `[K // pack, N]`."""
    return pack_codes(codes, bits).t().contiguous()


def unpack_weight(qweight: torch.Tensor, bits: int) -> torch.Tensor:
    """The GEMM layout `[K // pack, N]` -> unsigned codes `[N, K]` as int32."""
    return unpack_codes(qweight.t(), bits)
