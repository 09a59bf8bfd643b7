"""Translation between the worker's in-process types and `cairn.v1` messages.

The servers stay thin: they call these and the core logic, nothing else.
Proto3 leaves unset scalars at zero, so every optional default is restored
here and nowhere else.
"""

from __future__ import annotations

from cairn.services.worker.engine_config import EngineConfig
from cairn.services.worker.lora import LoadedAdapter
from cairn.services.worker.sampling_params import SamplingParams
from cairn.services.worker.step import (
    NewSequence,
    SampledToken,
    ScheduledSeq,
    SeqOutput,
    StepInput,
    StepOutput,
    TokenLogprob,
)
from cairn.v1 import common_pb2, worker_pb2

_DTYPES = {
    common_pb2.DTYPE_AUTO: "auto",
    common_pb2.DTYPE_FLOAT32: "float32",
    common_pb2.DTYPE_FLOAT16: "float16",
    common_pb2.DTYPE_BFLOAT16: "bfloat16",
}
_DEVICES = {
    common_pb2.DEVICE_KIND_AUTO: "auto",
    common_pb2.DEVICE_KIND_CPU: "cpu",
    common_pb2.DEVICE_KIND_CUDA: "cuda",
    common_pb2.DEVICE_KIND_XPU: "xpu",
}
_QUANTIZATIONS = {
    worker_pb2.QUANTIZATION_AUTO: "auto",
    worker_pb2.QUANTIZATION_NONE: "none",
    worker_pb2.QUANTIZATION_W8A16: "w8a16",
    worker_pb2.QUANTIZATION_W4A16: "w4a16",
    worker_pb2.QUANTIZATION_W8A8_INT8: "w8a8_int8",
    worker_pb2.QUANTIZATION_W8A8_FP8: "w8a8_fp8",
}
_KV_CACHE_DTYPES = {
    worker_pb2.KV_CACHE_DTYPE_AUTO: "auto",
    worker_pb2.KV_CACHE_DTYPE_INT8: "int8",
    worker_pb2.KV_CACHE_DTYPE_FP8: "fp8",
}


def sampling_from_proto(
    sampling: common_pb2.SamplingParams, stop: common_pb2.StopCriteria, default_max_tokens: int = 16
) -> SamplingParams:
    return SamplingParams(
        temperature=sampling.temperature if sampling.HasField("temperature") else 1.0,
        top_p=sampling.top_p if sampling.HasField("top_p") else 1.0,
        top_k=sampling.top_k,
        min_p=sampling.min_p,
        repetition_penalty=sampling.repetition_penalty if sampling.HasField("repetition_penalty") else 1.0,
        presence_penalty=sampling.presence_penalty,
        frequency_penalty=sampling.frequency_penalty,
        logit_bias=dict(sampling.logit_bias),
        seed=sampling.seed if sampling.HasField("seed") else None,
        logprobs=sampling.logprobs if sampling.HasField("logprobs") else None,
        prompt_logprobs=sampling.prompt_logprobs if sampling.HasField("prompt_logprobs") else None,
        max_tokens=stop.max_tokens if stop.HasField("max_tokens") else default_max_tokens,
        min_tokens=stop.min_tokens,
        ignore_eos=stop.ignore_eos,
        stop_token_ids=tuple(stop.stop_token_ids),
    )


def sampling_to_proto(params: SamplingParams) -> tuple[common_pb2.SamplingParams, common_pb2.StopCriteria]:
    sampling = common_pb2.SamplingParams(
        temperature=params.temperature,
        top_p=params.top_p,
        top_k=params.top_k,
        min_p=params.min_p,
        repetition_penalty=params.repetition_penalty,
        presence_penalty=params.presence_penalty,
        frequency_penalty=params.frequency_penalty,
        logit_bias=params.logit_bias,
    )
    for name in ("seed", "logprobs", "prompt_logprobs"):
        value = getattr(params, name)
        if value is not None:
            setattr(sampling, name, value)
    stop = common_pb2.StopCriteria(
        max_tokens=params.max_tokens,
        min_tokens=params.min_tokens,
        ignore_eos=params.ignore_eos,
        stop_token_ids=list(params.stop_token_ids),
    )
    return sampling, stop


def engine_config_from_proto(config: worker_pb2.EngineConfig) -> EngineConfig:
    return EngineConfig(
        model=config.model.ref,
        dtype=_DTYPES[config.dtype],
        device=_DEVICES[config.device],
        device_index=config.device_index,
        tensor_parallel_size=config.tensor_parallel_size or 1,
        block_size=config.block_size or 16,
        gpu_memory_utilization=(
            config.gpu_memory_utilization if config.HasField("gpu_memory_utilization") else 0.9
        ),
        num_blocks=config.num_blocks or None,
        cpu_kv_cache_gb=config.cpu_kv_cache_gb if config.HasField("cpu_kv_cache_gb") else 1.0,
        max_num_seqs=config.max_num_seqs or 256,
        max_num_batched_tokens=config.max_num_batched_tokens or 8192,
        max_model_len=config.max_model_len or None,
        enforce_eager=config.enforce_eager,
        seed=config.seed,
        quantization=_QUANTIZATIONS[config.quantization],
        kv_cache_dtype=_KV_CACHE_DTYPES[config.kv_cache_dtype],
        load_format=config.load_format or "safetensors",
        max_loras=config.max_loras,
        max_lora_rank=config.max_lora_rank or 16,
    )


def engine_config_to_proto(config: EngineConfig) -> worker_pb2.EngineConfig:
    dtypes = {v: k for k, v in _DTYPES.items()}
    devices = {v: k for k, v in _DEVICES.items()}
    quantizations = {v: k for k, v in _QUANTIZATIONS.items()}
    kv_cache_dtypes = {v: k for k, v in _KV_CACHE_DTYPES.items()}
    return worker_pb2.EngineConfig(
        model=common_pb2.ModelRef(ref=str(config.model)),
        dtype=dtypes[config.dtype],
        device=devices[config.device],
        device_index=config.device_index,
        tensor_parallel_size=config.tensor_parallel_size,
        block_size=config.block_size,
        gpu_memory_utilization=config.gpu_memory_utilization,
        num_blocks=config.num_blocks or 0,
        cpu_kv_cache_gb=config.cpu_kv_cache_gb,
        max_num_seqs=config.max_num_seqs,
        max_num_batched_tokens=config.max_num_batched_tokens,
        max_model_len=config.max_model_len or 0,
        enforce_eager=config.enforce_eager,
        seed=config.seed,
        quantization=quantizations[config.quantization],
        kv_cache_dtype=kv_cache_dtypes[config.kv_cache_dtype],
        load_format=config.load_format,
        max_loras=config.max_loras,
        max_lora_rank=config.max_lora_rank,
    )


def step_to_proto(step: StepInput) -> worker_pb2.StepRequest:
    request = worker_pb2.StepRequest(
        finished_seq_ids=step.finished_seq_ids,
        block_copies=[worker_pb2.BlockCopy(src=s, dst=d) for s, d in step.block_copies],
        num_steps=step.num_steps,
    )
    for seq in step.new_seqs:
        sampling, stop = sampling_to_proto(seq.sampling)
        message = request.new_seqs.add(
            seq_id=seq.seq_id,
            token_ids=seq.token_ids,
            num_prompt_tokens=seq.num_prompt_tokens,
            sampling=sampling,
            stop=stop,
            adapter=seq.adapter,
        )
        if seq.parent_seq_id is not None:
            message.parent_seq_id = seq.parent_seq_id
    request.scheduled.extend(
        worker_pb2.ScheduledSeq(
            seq_id=s.seq_id,
            num_computed_tokens=s.num_computed_tokens,
            num_scheduled_tokens=s.num_scheduled_tokens,
            new_block_ids=s.new_block_ids,
            sample=s.sample,
        )
        for s in step.scheduled
    )
    return request


def step_from_proto(request: worker_pb2.StepRequest) -> StepInput:
    return StepInput(
        new_seqs=[
            NewSequence(
                seq_id=s.seq_id,
                token_ids=list(s.token_ids),
                num_prompt_tokens=s.num_prompt_tokens,
                sampling=sampling_from_proto(s.sampling, s.stop),
                parent_seq_id=s.parent_seq_id if s.HasField("parent_seq_id") else None,
                adapter=s.adapter,
            )
            for s in request.new_seqs
        ],
        scheduled=[
            ScheduledSeq(
                seq_id=s.seq_id,
                num_computed_tokens=s.num_computed_tokens,
                num_scheduled_tokens=s.num_scheduled_tokens,
                new_block_ids=list(s.new_block_ids),
                sample=s.sample,
            )
            for s in request.scheduled
        ],
        finished_seq_ids=list(request.finished_seq_ids),
        block_copies=[(c.src, c.dst) for c in request.block_copies],
        num_steps=request.num_steps or 1,
    )


def adapter_to_proto(adapter: LoadedAdapter) -> worker_pb2.AdapterInfo:
    return worker_pb2.AdapterInfo(
        name=adapter.name, source=adapter.source, rank=adapter.rank, base_model=adapter.base_model
    )


def _token_to_proto(token: SampledToken) -> common_pb2.Token:
    message = common_pb2.Token(
        id=token.token_id,
        top_logprobs=[
            common_pb2.TokenLogprob(token_id=t.token_id, logprob=t.logprob) for t in token.top_logprobs
        ],
    )
    if token.logprob is not None:
        message.logprob = token.logprob
    return message


def _token_from_proto(token: common_pb2.Token) -> SampledToken:
    return SampledToken(
        token_id=token.id,
        logprob=token.logprob if token.HasField("logprob") else None,
        top_logprobs=[TokenLogprob(t.token_id, t.logprob) for t in token.top_logprobs],
    )


def step_output_to_proto(output: StepOutput, step_seconds: float = 0.0) -> worker_pb2.StepResponse:
    return worker_pb2.StepResponse(
        outputs=[
            worker_pb2.SeqOutput(
                seq_id=o.seq_id,
                tokens=[_token_to_proto(t) for t in o.tokens],
                prompt_logprobs=[_token_to_proto(t) for t in o.prompt_logprobs],
            )
            for o in output.outputs
        ],
        step_seconds=step_seconds,
    )


def step_output_from_proto(response: worker_pb2.StepResponse) -> StepOutput:
    return StepOutput(
        outputs=[
            SeqOutput(
                seq_id=o.seq_id,
                tokens=[_token_from_proto(t) for t in o.tokens],
                prompt_logprobs=[_token_from_proto(t) for t in o.prompt_logprobs],
            )
            for o in response.outputs
        ]
    )
