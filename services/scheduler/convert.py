"""Translation between the scheduler's in-process types and `cairn.v1` messages."""

from __future__ import annotations

import uuid

from cairn.common.errors import InvalidArgument
from cairn.services.scheduler.adapters import AdapterEntry
from cairn.services.scheduler.output import RequestOutput
from cairn.services.scheduler.pool import DeploymentInfo, PoolStats, ReplicaState
from cairn.services.scheduler.request_stream import RequestStream
from cairn.services.scheduler.sequence import Request
from cairn.services.worker.convert import _token_to_proto, sampling_from_proto
from cairn.v1 import common_pb2, scheduler_pb2, worker_pb2


def request_from_proto(
    message: scheduler_pb2.ScheduleRequest, info: DeploymentInfo, adapter: AdapterEntry | None = None
) -> Request:
    """The policy's Request for a Generate call, with the adapter `message.adapter` resolved
    to. Unset max_tokens means up to max_model_len."""
    prompt = list(message.prompt_token_ids)
    room = info.max_model_len - len(prompt)
    if room < 1:
        raise InvalidArgument(
            f"the prompt ({len(prompt)} tokens) leaves no room to generate within max_model_len "
            f"({info.max_model_len})"
        )
    return Request(
        request_id=message.request_id or uuid.uuid4().hex,
        prompt_token_ids=prompt,
        sampling=sampling_from_proto(message.sampling, message.stop, default_max_tokens=room),
        n=message.n or 1,
        best_of=message.best_of or None,
        priority=message.priority,
        # An adapter's KV differs from the base model's: its own prefix-cache namespace.
        cache_key=adapter.ref.name if adapter is not None else None,
        adapter=adapter.ref if adapter is not None else None,
    )


def response_from_output(output: RequestOutput, stream: RequestStream) -> scheduler_pb2.ScheduleResponse:
    response = scheduler_pb2.ScheduleResponse(
        request_id=output.request_id,
        sequences=[
            scheduler_pb2.SequenceDelta(
                index=sample.index,
                tokens=_tokens(sample.token_ids, sample.logprobs),
                finish_reason=_finish_reason(sample.finish_reason),
                cumulative_logprob=sample.cumulative_logprob,
            )
            for sample in output.samples
        ],
        prompt_logprobs=[_token_to_proto(t) for t in output.prompt_logprobs],
        cached_prompt_tokens=output.num_cached_tokens,
    )
    if output.finished:
        prompt_tokens = len(stream.request.prompt_token_ids)
        completion_tokens = stream.num_output_tokens
        response.usage.CopyFrom(
            common_pb2.Usage(
                prompt_tokens=prompt_tokens,
                completion_tokens=completion_tokens,
                total_tokens=prompt_tokens + completion_tokens,
                cached_prompt_tokens=stream.num_cached_tokens,
            )
        )
    return response


def _tokens(token_ids: list[int], logprobs: list) -> list[common_pb2.Token]:
    if logprobs:
        return [_token_to_proto(t) for t in logprobs]
    return [common_pb2.Token(id=t) for t in token_ids]


def _finish_reason(reason: object) -> int:
    if reason is None:
        return common_pb2.FINISH_REASON_UNSPECIFIED
    return common_pb2.FinishReason.Value(f"FINISH_REASON_{reason.name}")


def info_to_proto(
    info: DeploymentInfo, adapters: list[AdapterEntry], ranks: dict[str, int]
) -> scheduler_pb2.SchedulerInfo:
    """`ranks`: adapters some worker holds, by their worker-side name (the others show rank 0)."""
    return scheduler_pb2.SchedulerInfo(
        deployment=info.deployment,
        model=info.model,
        max_model_len=info.max_model_len,
        vocab_size=info.vocab_size,
        eos_token_ids=list(info.eos_token_ids),
        block_size=info.block_size,
        adapters=[
            worker_pb2.AdapterInfo(
                name=a.name, source=a.ref.source, rank=ranks.get(a.ref.name, 0), base_model=a.base_model
            )
            for a in adapters
        ],
    )


def worker_to_proto(state: ReplicaState) -> scheduler_pb2.WorkerState:
    return scheduler_pb2.WorkerState(
        worker_id=state.worker_id,
        health=scheduler_pb2.WorkerHealth.Value(f"WORKER_HEALTH_{state.health.name}"),
        device=state.device,
        running=state.running,
        num_blocks=state.num_blocks,
        used_blocks=state.used_blocks,
        cached_blocks=state.cached_blocks,
        steps=state.steps,
    )


def stats_to_proto(stats: PoolStats) -> scheduler_pb2.SchedulerStats:
    return scheduler_pb2.SchedulerStats(
        waiting=stats.waiting,
        running=stats.running,
        preemptions=stats.preemptions,
        kv_usage=stats.kv_usage,
        prefix_cache_hit_rate=stats.prefix_cache_hit_rate,
        workers=[worker_to_proto(w) for w in stats.workers],
        finished_requests=stats.finished_requests,
        generated_tokens=stats.generated_tokens,
        free_blocks=stats.free_blocks,
    )
