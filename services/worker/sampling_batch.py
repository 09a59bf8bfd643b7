"""A step's sampling parameters as tensors, built once per step for the sampler.

One tensor per parameter, made with `torch.tensor` from a Python list, and
nothing at all for a parameter no row uses: a batch of plain greedy requests
costs a few list comprehensions. Token-indexed state (penalty counts, biases,
masks) is dense `[B, V]` only where a row needs it, and is scattered from flat
index lists rather than padded per-row tensors.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from itertools import chain

import numpy as np
import torch

from cairn.services.worker import rng
from cairn.services.worker.sampling_params import SamplingParams

_INT = torch.int64
_FLOAT = torch.float32
# Temperatures this small are greedy (as in vLLM): dividing by them can push
# logits to inf, and inf - inf in the softmax is NaN.
_GREEDY_BELOW = 1e-5


@dataclass
class SamplingBatch:
    """What the sampler reads; every field left None means "no row uses this".

    Row-wise scalars that broadcast against `[B, V]` logits are stored `[B, 1]`.
    """

    num_rows: int
    vocab_size: int
    # Every row greedy, nothing that changes logits, no logprobs: a bare argmax.
    argmax_only: bool = False
    all_greedy: bool = False
    # [B] bool; only when greedy and random rows share the batch.
    greedy: torch.Tensor | None = None
    # [B, 1]; 1.0 on greedy rows, whose temperature only means "argmax".
    temperature: torch.Tensor | None = None
    # Top-k and top-p act on `rank_filter_rows` only ([F] row indices; None
    # when that is every row), and their tensors hold those rows alone.
    rank_filter_rows: torch.Tensor | None = None
    # [F] int64, clamped to vocab_size; rows without top-k hold vocab_size.
    top_k: torch.Tensor | None = None
    # How many of each filtered row's best tokens can survive: the largest
    # top-k when every filtered row has one (a topk then replaces the full
    # sort), else vocab_size.
    num_candidates: int = 0
    # [F, 1]; rows without top-p hold +inf, since a float32 cumulative sum
    # can pass 1.0 and would otherwise cut the tail of a p == 1.0 row.
    top_p: torch.Tensor | None = None
    # [B, 1] log(min_p), -inf where min-p is off.
    log_min_p: torch.Tensor | None = None
    # Seeded random rows: [S] row indices, seeds and stream positions. When
    # every row is seeded, seeded_rows stays None and seeds cover all rows.
    seeded_rows: torch.Tensor | None = None
    seeds: torch.Tensor | None = None
    positions: torch.Tensor | None = None
    # (rows, token ids, values), flat.
    logit_bias: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None
    # [B, 1] and [B, V] bool: tokens in the prompt or the output so far.
    repetition_penalty: torch.Tensor | None = None
    seen_tokens: torch.Tensor | None = None
    # [B, 1], [B, 1] and [B, V] float32 counts of each token in the output.
    presence_penalty: torch.Tensor | None = None
    frequency_penalty: torch.Tensor | None = None
    output_counts: torch.Tensor | None = None
    # (rows, token ids) that may not be sampled yet: EOS and stop ids of rows
    # below their min_tokens.
    banned_tokens: tuple[torch.Tensor, torch.Tensor] | None = None
    # Largest `logprobs` asked for in the batch; None when no row asked.
    max_num_logprobs: int | None = None

    @classmethod
    def build(
        cls,
        params: Sequence[SamplingParams],
        prompt_token_ids: Sequence[Sequence[int]],
        output_token_ids: Sequence[Sequence[int]],
        vocab_size: int,
        device: torch.device | str,
        eos_token_id: int | None = None,
    ) -> SamplingBatch:
        """`vocab_size` must be the logits' last dimension. `eos_token_id` is
        the model's EOS, banned (with each row's stop ids) until min_tokens."""
        num_rows = len(params)
        batch = cls(num_rows=num_rows, vocab_size=vocab_size)
        greedy = [p.temperature < _GREEDY_BELOW for p in params]
        batch.all_greedy = all(greedy)

        requested = [p.logprobs for p in params if p.logprobs is not None]
        batch.max_num_logprobs = max(requested) if requested else None

        bias_rows = [i for i, p in enumerate(params) if p.logit_bias]
        if bias_rows:
            batch.logit_bias = _logit_bias(params, bias_rows, device)
        _set_penalties(batch, params, prompt_token_ids, output_token_ids, device)
        banned_rows, banned_ids = [], []
        for i, p in enumerate(params):
            if len(output_token_ids[i]) < p.min_tokens and (ids := _stop_ids(p, eos_token_id)):
                banned_rows.append(i)
                banned_ids.append(ids)
        if banned_rows:
            row_index, token_ids = _flat(banned_rows, banned_ids)
            batch.banned_tokens = (_to_device(row_index, device), _to_device(token_ids, device))

        batch.argmax_only = batch.all_greedy and not (
            bias_rows
            or batch.repetition_penalty is not None
            or batch.output_counts is not None
            or banned_rows
            or batch.max_num_logprobs is not None
        )
        if not batch.all_greedy:
            _set_random_params(batch, params, greedy, output_token_ids, vocab_size, device)
        return batch


def _set_penalties(
    batch: SamplingBatch,
    params: Sequence[SamplingParams],
    prompt_token_ids: Sequence[Sequence[int]],
    output_token_ids: Sequence[Sequence[int]],
    device: torch.device | str,
) -> None:
    """Token counts are scattered only for rows that use them; the others get
    neutral penalties, so the dense tensors leave their logits unchanged."""
    rows = [i for i, p in enumerate(params) if p.repetition_penalty != 1.0]
    if rows:
        batch.repetition_penalty = _column([p.repetition_penalty for p in params], _FLOAT, device)[:, None]
        counts = _token_counts(
            batch.num_rows,
            batch.vocab_size,
            rows + rows,
            [prompt_token_ids[i] for i in rows] + [output_token_ids[i] for i in rows],
            device,
        )
        batch.seen_tokens = counts > 0
    rows = [i for i, p in enumerate(params) if p.presence_penalty != 0.0 or p.frequency_penalty != 0.0]
    if rows:
        batch.presence_penalty = _column([p.presence_penalty for p in params], _FLOAT, device)[:, None]
        batch.frequency_penalty = _column([p.frequency_penalty for p in params], _FLOAT, device)[:, None]
        batch.output_counts = _token_counts(
            batch.num_rows, batch.vocab_size, rows, [output_token_ids[i] for i in rows], device
        )


def _set_random_params(
    batch: SamplingBatch,
    params: Sequence[SamplingParams],
    greedy: list[bool],
    output_token_ids: Sequence[Sequence[int]],
    vocab_size: int,
    device: torch.device | str,
) -> None:
    """Temperature, filters and seeds: only rows that sample at random care."""
    if any(greedy):
        batch.greedy = _column(greedy, torch.bool, device)
    if any(not g and p.temperature != 1.0 for g, p in zip(greedy, params, strict=True)):
        temperature = [1.0 if g else p.temperature for g, p in zip(greedy, params, strict=True)]
        batch.temperature = _column(temperature, _FLOAT, device)[:, None]

    # Greedy rows take the argmax, which no filter changes: leave them unfiltered.
    top_k = [min(p.top_k, vocab_size) if p.top_k > 0 else vocab_size for p in params]
    top_p = [p.top_p if p.top_p < 1.0 else float("inf") for p in params]
    rows = [i for i, g in enumerate(greedy) if not g and (top_k[i] < vocab_size or top_p[i] != float("inf"))]
    if rows:
        if len(rows) < batch.num_rows:
            batch.rank_filter_rows = _column(rows, _INT, device)
        top_k = [top_k[i] for i in rows]
        top_p = [top_p[i] for i in rows]
        if any(k < vocab_size for k in top_k):
            batch.top_k = _column(top_k, _INT, device)
        if any(p != float("inf") for p in top_p):
            batch.top_p = _column(top_p, _FLOAT, device)[:, None]
        batch.num_candidates = max(top_k)
    min_p = [0.0 if g else p.min_p for g, p in zip(greedy, params, strict=True)]
    if any(min_p):
        batch.log_min_p = _column(min_p, _FLOAT, device).log()[:, None]

    seeded = [i for i, (g, p) in enumerate(zip(greedy, params, strict=True)) if not g and p.seed is not None]
    if seeded:
        batch.seeds = _column([rng.to_int64(params[i].seed) for i in seeded], _INT, device)
        batch.positions = _column([len(output_token_ids[i]) for i in seeded], _INT, device)
        if len(seeded) < batch.num_rows:
            batch.seeded_rows = _column(seeded, _INT, device)


def _column(values: list, dtype: torch.dtype, device: torch.device | str) -> torch.Tensor:
    return _to_device(torch.tensor(values, dtype=dtype), device)


def _to_device(tensor: torch.Tensor, device: torch.device | str) -> torch.Tensor:
    """A host tensor on `device` without stalling the host: a copy from pageable
    memory waits for everything queued on the stream (the forward, say), one
    from pinned memory is queued behind it."""
    device = torch.device(device)
    if device.type != "cuda":
        return tensor.to(device)
    return tensor.pin_memory().to(device, non_blocking=True)


def _flat(rows: list[int], token_lists: Sequence[Sequence[int]]) -> tuple[torch.Tensor, torch.Tensor]:
    """Ragged per-row token lists as flat (row index, token id) CPU tensors."""
    lengths = [len(t) for t in token_lists]
    row_index = torch.tensor(rows, dtype=_INT).repeat_interleave(torch.tensor(lengths, dtype=_INT))
    # fromiter with a known count is several times faster than torch.tensor on
    # a list, and penalized rows carry their whole prompt here every step.
    token_ids = np.fromiter(chain.from_iterable(token_lists), dtype=np.int64, count=sum(lengths))
    return row_index, torch.from_numpy(token_ids)


def _token_counts(
    num_rows: int,
    vocab_size: int,
    rows: list[int],
    token_lists: Sequence[Sequence[int]],
    device: torch.device | str,
) -> torch.Tensor:
    """[num_rows, vocab_size] float32: how often each row's lists hold each token.

    Ids past the logits' vocabulary (an embedding table larger than the LM
    head) cannot be sampled, so they are dropped rather than indexed.
    """
    row_index, token_ids = _flat(rows, token_lists)
    in_vocab = token_ids < vocab_size
    row_index, token_ids = row_index[in_vocab], token_ids[in_vocab]
    counts = torch.zeros(num_rows, vocab_size, dtype=_FLOAT, device=device)
    ones = torch.ones(len(token_ids), dtype=_FLOAT, device=device)
    indices = (_to_device(row_index, device), _to_device(token_ids, device))
    return counts.index_put_(indices, ones, accumulate=True)


def _logit_bias(
    params: Sequence[SamplingParams], rows: list[int], device: torch.device | str
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    row_index, token_ids = _flat(rows, [list(params[i].logit_bias) for i in rows])
    values = torch.tensor([v for i in rows for v in params[i].logit_bias.values()], dtype=_FLOAT)
    return _to_device(row_index, device), _to_device(token_ids, device), _to_device(values, device)


def _stop_ids(params: SamplingParams, eos_token_id: int | None) -> list[int]:
    # With ignore_eos, EOS does not stop the request, so min_tokens need not hold it back.
    eos = [] if eos_token_id is None or params.ignore_eos else [eos_token_id]
    return [*eos, *params.stop_token_ids]
