"""The unit of work the scheduler hands a worker: one batched step.

The worker keeps per-sequence state (tokens so far, block table, sampling
parameters) between steps, so a step carries only what changed: a sequence is
introduced once with all its known tokens, and afterwards each step names how
many of its tokens are already in the KV cache, how many to compute now, and
which blocks were appended to its table. This mirrors `cairn.v1.StepRequest`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from cairn.services.worker.sampling_params import SamplingParams


@dataclass
class NewSequence:
    """First sight of a sequence (or a re-introduction after preemption / worker loss).

    `token_ids` are all the tokens the sequence has: the prompt, followed by
    any tokens generated before it was recomputed. `num_prompt_tokens` tells
    the sampler which of them are prompt (for penalties and prompt logprobs).
    """

    seq_id: int
    token_ids: list[int]
    num_prompt_tokens: int
    sampling: SamplingParams
    # A forked sample (n > 1) starts from its parent's worker-side state and
    # block table; token_ids then repeat the parent's tokens.
    parent_seq_id: int | None = None
    # The LoRA adapter it runs with (loaded on the worker by that name); "" is the base model.
    adapter: str = ""


@dataclass
class ScheduledSeq:
    """One sequence's share of a step.

    The worker computes tokens [num_computed_tokens, num_computed_tokens +
    num_scheduled_tokens) of its stored token list. Positions before
    `num_computed_tokens` are already in the KV cache (earlier chunks or
    prefix-cache hits). `sample` is False for a prefill chunk that does not
    reach the end of the known tokens.
    """

    seq_id: int
    num_computed_tokens: int
    num_scheduled_tokens: int
    new_block_ids: list[int] = field(default_factory=list)
    sample: bool = True


@dataclass
class StepInput:
    """A batched step. `num_steps > 1` asks for that many decode steps in one
    call (multi-step decode); then every scheduled sequence must be a decode
    (num_scheduled_tokens == 1) with blocks for all the lookahead slots."""

    new_seqs: list[NewSequence] = field(default_factory=list)
    scheduled: list[ScheduledSeq] = field(default_factory=list)
    finished_seq_ids: list[int] = field(default_factory=list)
    # (src_block, dst_block) pairs to copy in every layer before the forward:
    # copy-on-write for forked sequences (n > 1) whose shared last block diverges.
    block_copies: list[tuple[int, int]] = field(default_factory=list)
    num_steps: int = 1


@dataclass
class TokenLogprob:
    token_id: int
    logprob: float


@dataclass
class SampledToken:
    token_id: int
    logprob: float | None = None
    top_logprobs: list[TokenLogprob] = field(default_factory=list)


@dataclass
class SeqOutput:
    """What a step produced for one sequence: a token per decode step
    (`num_steps` of them), and prompt logprobs for prompt positions computed
    in this step when asked for."""

    seq_id: int
    tokens: list[SampledToken] = field(default_factory=list)
    prompt_logprobs: list[SampledToken] = field(default_factory=list)


@dataclass
class StepOutput:
    outputs: list[SeqOutput] = field(default_factory=list)
