"""Turns a step's last-position logits into next tokens, vectorized over the batch.

The order follows vLLM: logit_bias → penalties (repetition over prompt and
output, presence/frequency over output) → min_tokens → temperature → top-k →
top-p → min-p → sample. Greedy rows (temperature < 1e-5) take the argmax of the
logits after the first three, which the later steps would not change anyway.

Sampling is an exponential race, `argmax(probs / E)` with `E ~ Exp(1)` per
token, which picks token i with probability probs[i]. Seeded rows draw E from
`rng`, a pure function of (seed, output position, token index), so they get
the same token whatever shares the batch; other rows use torch's generator.

Logprobs are those of the model's raw distribution, `log_softmax` of the
logits as given (before bias, penalties and temperature): vLLM's default, and
what makes them comparable across sampling settings.

Every decision that depends on which features a batch uses is made when the
`SamplingBatch` is built, so a step makes no host-device synchronization here.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from cairn.services.worker import rng
from cairn.services.worker.sampling_batch import SamplingBatch

__all__ = ["Sampler", "SamplerOutput", "SamplingBatch", "adjusted_logits", "prompt_logprobs", "warped_logits"]

_NEG_INF = float("-inf")


@dataclass
class SamplerOutput:
    """`token_ids` [B] int64. When any row asked for logprobs: `logprobs` [B]
    of the chosen tokens and `top_ids`/`top_logprobs` [B, k] with k the
    largest `logprobs` in the batch (possibly 0), most likely first. Rows that
    asked for fewer read a prefix; rows that asked for none ignore theirs."""

    token_ids: torch.Tensor
    logprobs: torch.Tensor | None = None
    top_ids: torch.Tensor | None = None
    top_logprobs: torch.Tensor | None = None


class Sampler:
    def __call__(self, logits: torch.Tensor, batch: SamplingBatch) -> SamplerOutput:
        """`logits` [B, V] is not modified."""
        if tuple(logits.shape) != (batch.num_rows, batch.vocab_size):
            raise ValueError(
                f"logits of shape {tuple(logits.shape)} for a sampling batch of "
                f"{batch.num_rows} rows over a vocabulary of {batch.vocab_size}"
            )
        if batch.argmax_only:
            return SamplerOutput(token_ids=logits.argmax(dim=-1))
        logits = logits.float()
        adjusted = adjusted_logits(logits, batch)
        if batch.all_greedy:
            token_ids = adjusted.argmax(dim=-1)
        else:
            token_ids = _draw(warped_logits(adjusted, batch), batch)
            if batch.greedy is not None:
                token_ids = torch.where(batch.greedy, adjusted.argmax(dim=-1), token_ids)
        if batch.max_num_logprobs is None:
            return SamplerOutput(token_ids=token_ids)
        chosen, top_ids, top_logprobs = prompt_logprobs(logits, token_ids, batch.max_num_logprobs)
        return SamplerOutput(token_ids, chosen, top_ids, top_logprobs)


def adjusted_logits(logits: torch.Tensor, batch: SamplingBatch) -> torch.Tensor:
    """logit_bias, then penalties, then the min_tokens ban; a new tensor."""
    if batch.logit_bias is not None:
        rows, token_ids, values = batch.logit_bias
        logits = logits.index_put((rows, token_ids), values, accumulate=True)
    if batch.seen_tokens is not None:
        penalty = batch.repetition_penalty
        # HF / CTRL: push seen tokens toward "less likely" whatever their sign.
        penalized = torch.where(logits > 0, logits / penalty, logits * penalty)
        logits = torch.where(batch.seen_tokens, penalized, logits)
    if batch.output_counts is not None:
        counts = batch.output_counts
        logits = logits - batch.frequency_penalty * counts - batch.presence_penalty * (counts > 0)
    if batch.banned_tokens is not None:
        logits = logits.index_put(batch.banned_tokens, logits.new_full((), _NEG_INF))
    return logits


def warped_logits(logits: torch.Tensor, batch: SamplingBatch) -> torch.Tensor:
    """Temperature, top-k, top-p, min-p: the distribution random rows sample
    from, with filtered tokens at -inf; a new tensor."""
    if batch.temperature is not None:
        logits = logits / batch.temperature
    if batch.top_k is not None or batch.top_p is not None:
        logits = _rank_filters(logits, batch)
    if batch.log_min_p is not None:
        # p_i < min_p * p_max  <=>  logit_i < logit_max + log(min_p), with no softmax.
        threshold = logits.amax(dim=-1, keepdim=True) + batch.log_min_p
        logits = logits.masked_fill(logits < threshold, _NEG_INF)
    return logits


def prompt_logprobs(
    logits: torch.Tensor, next_token_ids: torch.Tensor, k: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """log_softmax(logits) at `next_token_ids` [P] and its k largest entries.

    Returns (chosen [P], top_ids [P, k], top_logprobs [P, k]), most likely
    first. Works through one logsumexp instead of materializing a second
    [P, V] tensor of log-probabilities, which matters for long prompts.
    """
    logits = logits.float()
    normalizer = logits.logsumexp(dim=-1, keepdim=True)
    chosen = logits.gather(-1, next_token_ids[:, None]) - normalizer
    top_values, top_ids = logits.topk(k, dim=-1)
    return chosen.squeeze(-1), top_ids, top_values - normalizer


def _rank_filters(logits: torch.Tensor, batch: SamplingBatch) -> torch.Tensor:
    """Top-k, then top-p over what top-k left (renormalized), on the rows that
    use either; the others pass through untouched.

    Both work on each row's candidates sorted best first: its num_candidates
    best tokens by one topk when every row has a top-k, else the whole sorted
    vocabulary. Top-k keeps exactly k (ties broken by that order); top-p keeps
    the smallest best-first prefix whose mass reaches p, i.e. a token stays
    while the mass strictly before it is below p.
    """
    rows = batch.rank_filter_rows
    selected = logits if rows is None else logits.index_select(0, rows)
    if batch.num_candidates < logits.shape[-1]:
        values, order = selected.topk(batch.num_candidates, dim=-1)
    else:
        values, order = selected.sort(dim=-1, descending=True)
    if batch.top_k is not None:
        ranks = torch.arange(values.shape[-1], device=logits.device)
        values = values.masked_fill(ranks >= batch.top_k[:, None], _NEG_INF)
    if batch.top_p is not None:
        probs = values.softmax(dim=-1)
        values = values.masked_fill(probs.cumsum(dim=-1) - probs >= batch.top_p, _NEG_INF)
    filtered = torch.full_like(selected, _NEG_INF).scatter_(-1, order, values)
    return filtered if rows is None else logits.index_copy(0, rows, filtered)


def _draw(logits: torch.Tensor, batch: SamplingBatch) -> torch.Tensor:
    probs = logits.softmax(dim=-1)
    return probs.div_(_exponential_noise(probs, batch)).argmax(dim=-1)


def _exponential_noise(probs: torch.Tensor, batch: SamplingBatch) -> torch.Tensor:
    if batch.seeds is not None and batch.seeded_rows is None:
        return rng.exponential(batch.seeds, batch.positions, probs.shape[-1])
    # exponential_ can return exactly 0 on some backends (CPU, MPS): 0 / 0 is a
    # NaN that argmax would pick, so a filtered-out token could win.
    noise = torch.empty_like(probs).exponential_().clamp_min_(torch.finfo(probs.dtype).tiny)
    if batch.seeds is None:
        return noise
    seeded = rng.exponential(batch.seeds, batch.positions, probs.shape[-1])
    return noise.index_copy_(0, batch.seeded_rows, seeded)
