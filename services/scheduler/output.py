"""What the scheduler hands back after each step: per-request deltas, shaped
like cairn.v1.ScheduleResponse so the gRPC shell only translates."""

from __future__ import annotations

from dataclasses import dataclass, field

from cairn.services.scheduler.sequence import FinishReason, Request, Sequence
from cairn.services.worker.step import SampledToken


@dataclass(slots=True)
class SampleOutput:
    """One sample's progress since its last delta."""

    index: int
    token_ids: list[int]
    # Parallel to token_ids when the request asked for logprobs, else empty.
    logprobs: list[SampledToken] = field(default_factory=list)
    finish_reason: FinishReason | None = None
    # The stop_token_ids entry that ended it (finish_reason STOP_TOKEN).
    stop_token_id: int | None = None
    cumulative_logprob: float = 0.0


@dataclass(slots=True)
class RequestOutput:
    request_id: str
    samples: list[SampleOutput] = field(default_factory=list)
    # Sent once, with the request's first delta: entry i scores prompt token i + 1.
    prompt_logprobs: list[SampledToken] = field(default_factory=list)
    # Prompt tokens served from the prefix cache (first delta).
    num_cached_tokens: int = 0
    finished: bool = False


def sample_delta(seq: Sequence, index: int) -> SampleOutput:
    """The tokens `seq` produced since its last delta."""
    start, num_prompt = seq.num_emitted, seq.num_prompt_tokens
    seq.num_emitted = len(seq.token_ids) - num_prompt
    return SampleOutput(
        index,
        seq.token_ids[num_prompt + start :],
        seq.logprobs[start:] if seq.logprobs else [],
        seq.finish_reason,
        seq.stop_token_id,
        seq.cumulative_logprob,
    )


def request_delta(request: Request, changed: list[Sequence]) -> RequestOutput | None:
    """What `changed` (sequences that got tokens or finished) add for the
    request, or None if nothing is to be sent yet.

    With best_of > n nothing streams: once every sample is done, the n with the
    highest cumulative logprob are sent whole, ranked best first."""
    finished = request.finished
    if request.ranks_samples:
        if not finished:
            return None
        ranked = sorted(request.seqs, key=lambda s: s.cumulative_logprob, reverse=True)[: request.n]
        samples = [sample_delta(seq, i) for i, seq in enumerate(ranked)]
    else:
        samples = [sample_delta(seq, seq.index) for seq in changed]
    output = RequestOutput(request.request_id, samples, [], 0, finished)
    if not request.first_output_sent:
        request.first_output_sent = True
        output.prompt_logprobs = request.prompt_logprobs
        output.num_cached_tokens = request.num_cached_tokens
    return output
