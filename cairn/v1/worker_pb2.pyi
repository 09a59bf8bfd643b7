from cairn.v1 import common_pb2 as _common_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Quantization(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    QUANTIZATION_AUTO: _ClassVar[Quantization]
    QUANTIZATION_NONE: _ClassVar[Quantization]
    QUANTIZATION_W8A16: _ClassVar[Quantization]
    QUANTIZATION_W4A16: _ClassVar[Quantization]
    QUANTIZATION_W8A8_INT8: _ClassVar[Quantization]
    QUANTIZATION_W8A8_FP8: _ClassVar[Quantization]

class KvCacheDtype(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    KV_CACHE_DTYPE_AUTO: _ClassVar[KvCacheDtype]
    KV_CACHE_DTYPE_INT8: _ClassVar[KvCacheDtype]
    KV_CACHE_DTYPE_FP8: _ClassVar[KvCacheDtype]
QUANTIZATION_AUTO: Quantization
QUANTIZATION_NONE: Quantization
QUANTIZATION_W8A16: Quantization
QUANTIZATION_W4A16: Quantization
QUANTIZATION_W8A8_INT8: Quantization
QUANTIZATION_W8A8_FP8: Quantization
KV_CACHE_DTYPE_AUTO: KvCacheDtype
KV_CACHE_DTYPE_INT8: KvCacheDtype
KV_CACHE_DTYPE_FP8: KvCacheDtype

class EngineConfig(_message.Message):
    __slots__ = ("model", "dtype", "device", "device_index", "block_size", "gpu_memory_utilization", "num_blocks", "cpu_kv_cache_gb", "max_num_seqs", "max_num_batched_tokens", "max_model_len", "enforce_eager", "quantization", "kv_cache_dtype", "tensor_parallel_size", "seed", "max_loras", "max_lora_rank", "load_format")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    DTYPE_FIELD_NUMBER: _ClassVar[int]
    DEVICE_FIELD_NUMBER: _ClassVar[int]
    DEVICE_INDEX_FIELD_NUMBER: _ClassVar[int]
    BLOCK_SIZE_FIELD_NUMBER: _ClassVar[int]
    GPU_MEMORY_UTILIZATION_FIELD_NUMBER: _ClassVar[int]
    NUM_BLOCKS_FIELD_NUMBER: _ClassVar[int]
    CPU_KV_CACHE_GB_FIELD_NUMBER: _ClassVar[int]
    MAX_NUM_SEQS_FIELD_NUMBER: _ClassVar[int]
    MAX_NUM_BATCHED_TOKENS_FIELD_NUMBER: _ClassVar[int]
    MAX_MODEL_LEN_FIELD_NUMBER: _ClassVar[int]
    ENFORCE_EAGER_FIELD_NUMBER: _ClassVar[int]
    QUANTIZATION_FIELD_NUMBER: _ClassVar[int]
    KV_CACHE_DTYPE_FIELD_NUMBER: _ClassVar[int]
    TENSOR_PARALLEL_SIZE_FIELD_NUMBER: _ClassVar[int]
    SEED_FIELD_NUMBER: _ClassVar[int]
    MAX_LORAS_FIELD_NUMBER: _ClassVar[int]
    MAX_LORA_RANK_FIELD_NUMBER: _ClassVar[int]
    LOAD_FORMAT_FIELD_NUMBER: _ClassVar[int]
    model: _common_pb2.ModelRef
    dtype: _common_pb2.DType
    device: _common_pb2.DeviceKind
    device_index: int
    block_size: int
    gpu_memory_utilization: float
    num_blocks: int
    cpu_kv_cache_gb: float
    max_num_seqs: int
    max_num_batched_tokens: int
    max_model_len: int
    enforce_eager: bool
    quantization: Quantization
    kv_cache_dtype: KvCacheDtype
    tensor_parallel_size: int
    seed: int
    max_loras: int
    max_lora_rank: int
    load_format: str
    def __init__(self, model: _Optional[_Union[_common_pb2.ModelRef, _Mapping]] = ..., dtype: _Optional[_Union[_common_pb2.DType, str]] = ..., device: _Optional[_Union[_common_pb2.DeviceKind, str]] = ..., device_index: _Optional[int] = ..., block_size: _Optional[int] = ..., gpu_memory_utilization: _Optional[float] = ..., num_blocks: _Optional[int] = ..., cpu_kv_cache_gb: _Optional[float] = ..., max_num_seqs: _Optional[int] = ..., max_num_batched_tokens: _Optional[int] = ..., max_model_len: _Optional[int] = ..., enforce_eager: _Optional[bool] = ..., quantization: _Optional[_Union[Quantization, str]] = ..., kv_cache_dtype: _Optional[_Union[KvCacheDtype, str]] = ..., tensor_parallel_size: _Optional[int] = ..., seed: _Optional[int] = ..., max_loras: _Optional[int] = ..., max_lora_rank: _Optional[int] = ..., load_format: _Optional[str] = ...) -> None: ...

class LoadModelRequest(_message.Message):
    __slots__ = ("config",)
    CONFIG_FIELD_NUMBER: _ClassVar[int]
    config: EngineConfig
    def __init__(self, config: _Optional[_Union[EngineConfig, _Mapping]] = ...) -> None: ...

class GetInfoRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class WorkerInfo(_message.Message):
    __slots__ = ("worker_id", "model", "architecture", "config", "num_blocks", "block_size", "vocab_size", "eos_token_ids", "device", "weight_bytes", "peak_activation_bytes", "kv_cache_bytes", "cuda_graph_batch_sizes", "max_model_len", "adapters")
    WORKER_ID_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    ARCHITECTURE_FIELD_NUMBER: _ClassVar[int]
    CONFIG_FIELD_NUMBER: _ClassVar[int]
    NUM_BLOCKS_FIELD_NUMBER: _ClassVar[int]
    BLOCK_SIZE_FIELD_NUMBER: _ClassVar[int]
    VOCAB_SIZE_FIELD_NUMBER: _ClassVar[int]
    EOS_TOKEN_IDS_FIELD_NUMBER: _ClassVar[int]
    DEVICE_FIELD_NUMBER: _ClassVar[int]
    WEIGHT_BYTES_FIELD_NUMBER: _ClassVar[int]
    PEAK_ACTIVATION_BYTES_FIELD_NUMBER: _ClassVar[int]
    KV_CACHE_BYTES_FIELD_NUMBER: _ClassVar[int]
    CUDA_GRAPH_BATCH_SIZES_FIELD_NUMBER: _ClassVar[int]
    MAX_MODEL_LEN_FIELD_NUMBER: _ClassVar[int]
    ADAPTERS_FIELD_NUMBER: _ClassVar[int]
    worker_id: str
    model: str
    architecture: str
    config: EngineConfig
    num_blocks: int
    block_size: int
    vocab_size: int
    eos_token_ids: _containers.RepeatedScalarFieldContainer[int]
    device: str
    weight_bytes: int
    peak_activation_bytes: int
    kv_cache_bytes: int
    cuda_graph_batch_sizes: _containers.RepeatedScalarFieldContainer[int]
    max_model_len: int
    adapters: _containers.RepeatedCompositeFieldContainer[AdapterInfo]
    def __init__(self, worker_id: _Optional[str] = ..., model: _Optional[str] = ..., architecture: _Optional[str] = ..., config: _Optional[_Union[EngineConfig, _Mapping]] = ..., num_blocks: _Optional[int] = ..., block_size: _Optional[int] = ..., vocab_size: _Optional[int] = ..., eos_token_ids: _Optional[_Iterable[int]] = ..., device: _Optional[str] = ..., weight_bytes: _Optional[int] = ..., peak_activation_bytes: _Optional[int] = ..., kv_cache_bytes: _Optional[int] = ..., cuda_graph_batch_sizes: _Optional[_Iterable[int]] = ..., max_model_len: _Optional[int] = ..., adapters: _Optional[_Iterable[_Union[AdapterInfo, _Mapping]]] = ...) -> None: ...

class NewSequence(_message.Message):
    __slots__ = ("seq_id", "token_ids", "num_prompt_tokens", "sampling", "stop", "parent_seq_id", "adapter")
    SEQ_ID_FIELD_NUMBER: _ClassVar[int]
    TOKEN_IDS_FIELD_NUMBER: _ClassVar[int]
    NUM_PROMPT_TOKENS_FIELD_NUMBER: _ClassVar[int]
    SAMPLING_FIELD_NUMBER: _ClassVar[int]
    STOP_FIELD_NUMBER: _ClassVar[int]
    PARENT_SEQ_ID_FIELD_NUMBER: _ClassVar[int]
    ADAPTER_FIELD_NUMBER: _ClassVar[int]
    seq_id: int
    token_ids: _containers.RepeatedScalarFieldContainer[int]
    num_prompt_tokens: int
    sampling: _common_pb2.SamplingParams
    stop: _common_pb2.StopCriteria
    parent_seq_id: int
    adapter: str
    def __init__(self, seq_id: _Optional[int] = ..., token_ids: _Optional[_Iterable[int]] = ..., num_prompt_tokens: _Optional[int] = ..., sampling: _Optional[_Union[_common_pb2.SamplingParams, _Mapping]] = ..., stop: _Optional[_Union[_common_pb2.StopCriteria, _Mapping]] = ..., parent_seq_id: _Optional[int] = ..., adapter: _Optional[str] = ...) -> None: ...

class ScheduledSeq(_message.Message):
    __slots__ = ("seq_id", "num_computed_tokens", "num_scheduled_tokens", "new_block_ids", "sample")
    SEQ_ID_FIELD_NUMBER: _ClassVar[int]
    NUM_COMPUTED_TOKENS_FIELD_NUMBER: _ClassVar[int]
    NUM_SCHEDULED_TOKENS_FIELD_NUMBER: _ClassVar[int]
    NEW_BLOCK_IDS_FIELD_NUMBER: _ClassVar[int]
    SAMPLE_FIELD_NUMBER: _ClassVar[int]
    seq_id: int
    num_computed_tokens: int
    num_scheduled_tokens: int
    new_block_ids: _containers.RepeatedScalarFieldContainer[int]
    sample: bool
    def __init__(self, seq_id: _Optional[int] = ..., num_computed_tokens: _Optional[int] = ..., num_scheduled_tokens: _Optional[int] = ..., new_block_ids: _Optional[_Iterable[int]] = ..., sample: _Optional[bool] = ...) -> None: ...

class BlockCopy(_message.Message):
    __slots__ = ("src", "dst")
    SRC_FIELD_NUMBER: _ClassVar[int]
    DST_FIELD_NUMBER: _ClassVar[int]
    src: int
    dst: int
    def __init__(self, src: _Optional[int] = ..., dst: _Optional[int] = ...) -> None: ...

class StepRequest(_message.Message):
    __slots__ = ("new_seqs", "scheduled", "finished_seq_ids", "block_copies", "num_steps")
    NEW_SEQS_FIELD_NUMBER: _ClassVar[int]
    SCHEDULED_FIELD_NUMBER: _ClassVar[int]
    FINISHED_SEQ_IDS_FIELD_NUMBER: _ClassVar[int]
    BLOCK_COPIES_FIELD_NUMBER: _ClassVar[int]
    NUM_STEPS_FIELD_NUMBER: _ClassVar[int]
    new_seqs: _containers.RepeatedCompositeFieldContainer[NewSequence]
    scheduled: _containers.RepeatedCompositeFieldContainer[ScheduledSeq]
    finished_seq_ids: _containers.RepeatedScalarFieldContainer[int]
    block_copies: _containers.RepeatedCompositeFieldContainer[BlockCopy]
    num_steps: int
    def __init__(self, new_seqs: _Optional[_Iterable[_Union[NewSequence, _Mapping]]] = ..., scheduled: _Optional[_Iterable[_Union[ScheduledSeq, _Mapping]]] = ..., finished_seq_ids: _Optional[_Iterable[int]] = ..., block_copies: _Optional[_Iterable[_Union[BlockCopy, _Mapping]]] = ..., num_steps: _Optional[int] = ...) -> None: ...

class SeqOutput(_message.Message):
    __slots__ = ("seq_id", "tokens", "prompt_logprobs")
    SEQ_ID_FIELD_NUMBER: _ClassVar[int]
    TOKENS_FIELD_NUMBER: _ClassVar[int]
    PROMPT_LOGPROBS_FIELD_NUMBER: _ClassVar[int]
    seq_id: int
    tokens: _containers.RepeatedCompositeFieldContainer[_common_pb2.Token]
    prompt_logprobs: _containers.RepeatedCompositeFieldContainer[_common_pb2.Token]
    def __init__(self, seq_id: _Optional[int] = ..., tokens: _Optional[_Iterable[_Union[_common_pb2.Token, _Mapping]]] = ..., prompt_logprobs: _Optional[_Iterable[_Union[_common_pb2.Token, _Mapping]]] = ...) -> None: ...

class StepResponse(_message.Message):
    __slots__ = ("outputs", "step_seconds")
    OUTPUTS_FIELD_NUMBER: _ClassVar[int]
    STEP_SECONDS_FIELD_NUMBER: _ClassVar[int]
    outputs: _containers.RepeatedCompositeFieldContainer[SeqOutput]
    step_seconds: float
    def __init__(self, outputs: _Optional[_Iterable[_Union[SeqOutput, _Mapping]]] = ..., step_seconds: _Optional[float] = ...) -> None: ...

class FreeSequencesRequest(_message.Message):
    __slots__ = ("seq_ids",)
    SEQ_IDS_FIELD_NUMBER: _ClassVar[int]
    seq_ids: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, seq_ids: _Optional[_Iterable[int]] = ...) -> None: ...

class FreeSequencesResponse(_message.Message):
    __slots__ = ("freed",)
    FREED_FIELD_NUMBER: _ClassVar[int]
    freed: int
    def __init__(self, freed: _Optional[int] = ...) -> None: ...

class LoadAdapterRequest(_message.Message):
    __slots__ = ("name", "ref")
    NAME_FIELD_NUMBER: _ClassVar[int]
    REF_FIELD_NUMBER: _ClassVar[int]
    name: str
    ref: _common_pb2.ModelRef
    def __init__(self, name: _Optional[str] = ..., ref: _Optional[_Union[_common_pb2.ModelRef, _Mapping]] = ...) -> None: ...

class AdapterInfo(_message.Message):
    __slots__ = ("name", "source", "rank", "base_model")
    NAME_FIELD_NUMBER: _ClassVar[int]
    SOURCE_FIELD_NUMBER: _ClassVar[int]
    RANK_FIELD_NUMBER: _ClassVar[int]
    BASE_MODEL_FIELD_NUMBER: _ClassVar[int]
    name: str
    source: str
    rank: int
    base_model: str
    def __init__(self, name: _Optional[str] = ..., source: _Optional[str] = ..., rank: _Optional[int] = ..., base_model: _Optional[str] = ...) -> None: ...

class UnloadAdapterRequest(_message.Message):
    __slots__ = ("name",)
    NAME_FIELD_NUMBER: _ClassVar[int]
    name: str
    def __init__(self, name: _Optional[str] = ...) -> None: ...

class UnloadAdapterResponse(_message.Message):
    __slots__ = ("unloaded",)
    UNLOADED_FIELD_NUMBER: _ClassVar[int]
    unloaded: bool
    def __init__(self, unloaded: _Optional[bool] = ...) -> None: ...
