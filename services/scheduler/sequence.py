"""Request and sequence state as the scheduler keeps it.

A Request is what a client asked for; it owns one Sequence per sample
(`best_of` of them, default `n`). Only the first sequence prefills the prompt;
the others fork from it once its prefill is done, sharing its prompt blocks.
"""

from __future__ import annotations

import enum
import time
from dataclasses import dataclass, field, replace

from cairn.services.worker.sampling_params import SamplingParams
from cairn.services.worker.step import SampledToken


class SequenceStatus(enum.Enum):
    WAITING = "waiting"
    RUNNING = "running"
    PREEMPTED = "preempted"
    FINISHED = "finished"


class FinishReason(str, enum.Enum):
    """Why a sequence ended; the values match cairn.v1.FinishReason's names."""

    LENGTH = "length"
    EOS = "eos"
    STOP_TOKEN = "stop_token"
    ABORT = "abort"


@dataclass(frozen=True)
class AdapterRef:
    """The LoRA adapter a request runs with: the name its workers know it by (a pinned
    registry version, or the configured module name) and where it loads from."""

    name: str
    source: str


@dataclass(eq=False)
class Request:
    request_id: str
    prompt_token_ids: list[int]
    sampling: SamplingParams = field(default_factory=SamplingParams)
    n: int = 1
    # Samples generated, of which the n with the highest cumulative logprob
    # are returned. None: n.
    best_of: int | None = None
    # Lower runs first; FCFS within a priority.
    priority: int = 0
    # FCFS order, on time.monotonic()'s clock.
    arrival_time: float = field(default_factory=time.monotonic)
    # Separates prefix-cache namespaces: the LoRA adapter (its KV differs from
    # the base model's) or a per-tenant salt.
    cache_key: str | None = None
    # None: the base model.
    adapter: AdapterRef | None = None

    # Filled by the scheduler.
    seqs: list[Sequence] = field(default_factory=list, init=False)
    arrival_seq: int = field(default=0, init=False)
    eos_token_ids: frozenset[int] = field(default=frozenset(), init=False)
    stop_token_ids: frozenset[int] = field(default=frozenset(), init=False)
    # Either of the two: one set lookup per token in the common no-stop case.
    stop_ids: frozenset[int] = field(default=frozenset(), init=False)
    num_samples: int = field(default=1, init=False)
    # best_of > n: samples are ranked at the end, so nothing streams.
    ranks_samples: bool = field(default=False, init=False)
    forked: bool = field(default=False, init=False)
    num_finished_seqs: int = field(default=0, init=False)
    num_cached_tokens: int = field(default=0, init=False)
    # Logprob of prompt token i + 1 at index i (the first token has none).
    prompt_logprobs: list[SampledToken] = field(default_factory=list, init=False)
    first_output_sent: bool = field(default=False, init=False)

    def __post_init__(self) -> None:
        self.num_samples = self.best_of if self.best_of is not None else self.n
        self.ranks_samples = self.num_samples > self.n

    @property
    def finished(self) -> bool:
        return self.num_finished_seqs == len(self.seqs)

    def sample_params(self, index: int) -> SamplingParams:
        """What the worker samples sample `index` with: distinct seeds so seeded
        samples differ, and logprobs whenever samples must be ranked."""
        params = self.sampling
        if index and params.seed is not None:
            params = replace(params, seed=params.seed + index)
        if index and params.prompt_logprobs is not None:
            # The first sample returns the prompt's logprobs; the others would only recompute them.
            params = replace(params, prompt_logprobs=None)
        if self.ranks_samples and params.logprobs is None:
            params = replace(params, logprobs=0)
        return params

    def add_prompt_logprobs(self, first_position: int, logprobs: list[SampledToken]) -> None:
        """Takes a chunk's prompt logprobs (entry i scores prompt token
        first_position + 1 + i), dropping any already held (a recompute)."""
        skip = len(self.prompt_logprobs) - first_position
        if skip >= 0:
            self.prompt_logprobs.extend(logprobs[skip : len(self.prompt_token_ids) - 1 - first_position])


class Sequence:
    """One sample of a request: its tokens and how far the KV cache holds them."""

    __slots__ = (
        "cumulative_logprob",
        "finish_reason",
        "fork_parent",
        "index",
        "introduced",
        "logprobs",
        "num_computed_tokens",
        "num_emitted",
        "num_prompt_tokens",
        "request",
        "sampling",
        "seq_id",
        "sort_key",
        "status",
        "stop_token_id",
        "token_ids",
    )

    def __init__(self, seq_id: int, request: Request, index: int) -> None:
        self.seq_id = seq_id
        self.request = request
        self.index = index
        self.sampling = request.sample_params(index)
        self.token_ids = list(request.prompt_token_ids)
        self.num_prompt_tokens = len(self.token_ids)
        # Tokens whose KV is in the worker's cache; the rest are computed by
        # later steps (a prompt, or the last sampled token).
        self.num_computed_tokens = 0
        self.status = SequenceStatus.WAITING
        self.finish_reason: FinishReason | None = None
        self.stop_token_id: int | None = None
        self.logprobs: list[SampledToken] = []
        self.cumulative_logprob = 0.0
        # Whether the worker holds this sequence's state (so it must be told to drop it).
        self.introduced = False
        # Output tokens already handed out in RequestOutput deltas.
        self.num_emitted = 0
        # Set while a sample waits to fork from the request's first sequence.
        self.fork_parent: Sequence | None = None
        self.sort_key = (request.priority, request.arrival_time, request.arrival_seq, index)

    @property
    def output_token_ids(self) -> list[int]:
        return self.token_ids[self.num_prompt_tokens :]

    def append(self, token: SampledToken) -> FinishReason | None:
        """Adds a sampled token; returns why the sequence ends with it, if it does."""
        token_id = token.token_id
        token_ids = self.token_ids
        token_ids.append(token_id)
        if token.logprob is not None:
            self.cumulative_logprob += token.logprob
        request = self.request
        params = request.sampling
        if params.logprobs is not None:
            self.logprobs.append(token)
        num_output = len(token_ids) - self.num_prompt_tokens
        if token_id in request.stop_ids and num_output >= params.min_tokens:
            if token_id in request.eos_token_ids:
                return FinishReason.EOS
            self.stop_token_id = token_id
            return FinishReason.STOP_TOKEN
        if num_output >= params.max_tokens:
            return FinishReason.LENGTH
        return None

    def finish(self, reason: FinishReason) -> None:
        self.status = SequenceStatus.FINISHED
        self.finish_reason = reason
        self.request.num_finished_seqs += 1

    def __repr__(self) -> str:
        return (
            f"Sequence({self.seq_id}, {self.status.value}, tokens={len(self.token_ids)}, "
            f"computed={self.num_computed_tokens})"
        )
