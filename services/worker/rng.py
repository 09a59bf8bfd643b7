"""Counter-based randomness for seeded sampling.

A seeded request must draw the same token whatever else shares its batch, on
any device, so its random numbers cannot come from a stateful generator that
other rows also consume. Instead every number is a pure function of
(seed, position, token index): the row's key is derived from the seed and the
position in the output, and the noise for token `t` is SplitMix64's output for
the counter `key + t * gamma`, exactly as a SplitMix64 stream seeded with `key`
would produce it. Everything is int64 tensor arithmetic, so it runs vectorized
on CPU and CUDA with no per-row Python work.
"""

from __future__ import annotations

import torch

_MASK64 = (1 << 64) - 1
# SplitMix64 constants (Steele, Lea, Flood 2014), written as wrapped int64 so
# torch accepts them as scalars; int64 multiplication wraps modulo 2**64.
_GAMMA = 0x9E3779B97F4A7C15 - (1 << 64)
_MIX1 = 0xBF58476D1CE4E5B9 - (1 << 64)
_MIX2 = 0x94D049BB133111EB - (1 << 64)


def to_int64(seed: int) -> int:
    """Any Python int as the signed int64 with the same low 64 bits."""
    seed &= _MASK64
    return seed - (1 << 64) if seed >= 1 << 63 else seed


def _shr(x: torch.Tensor, bits: int) -> torch.Tensor:
    # torch's >> on int64 is arithmetic; SplitMix64 needs the logical shift.
    return (x >> bits) & ((1 << (64 - bits)) - 1)


def splitmix64(x: torch.Tensor) -> torch.Tensor:
    """SplitMix64's finalizer: a bijective 64-bit mix of each int64 element."""
    x = (x ^ _shr(x, 30)) * _MIX1
    x = (x ^ _shr(x, 27)) * _MIX2
    return x ^ _shr(x, 31)


def row_keys(seeds: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
    """One independent stream key per (seed, position) pair, both int64 [R]."""
    return splitmix64(splitmix64(seeds) + positions * _GAMMA)


def uniform(seeds: torch.Tensor, positions: torch.Tensor, num_cols: int) -> torch.Tensor:
    """float64 [R, num_cols] uniforms strictly inside (0, 1).

    52 random bits per number (so that `bits + 0.5` is exact in float64 and u
    never rounds to 1): the exponential race turns u close to 1 into the small
    values that decide rare tokens, and float32's 24 bits would visibly
    coarsen their probabilities.
    """
    cols = torch.arange(num_cols, dtype=torch.int64, device=seeds.device)
    bits = _shr(splitmix64(row_keys(seeds, positions)[:, None] + cols * _GAMMA), 12)
    return (bits.to(torch.float64) + 0.5) * 2.0**-52


def exponential(seeds: torch.Tensor, positions: torch.Tensor, num_cols: int) -> torch.Tensor:
    """float32 [R, num_cols] Exp(1) draws, strictly positive and finite."""
    return uniform(seeds, positions, num_cols).log().neg_().to(torch.float32)
