from cairn.v1 import common_pb2 as _common_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class QuantType(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    QUANT_TYPE_UNSPECIFIED: _ClassVar[QuantType]
    QUANT_TYPE_WEIGHT_ONLY_INT8: _ClassVar[QuantType]
    QUANT_TYPE_WEIGHT_ONLY_INT4: _ClassVar[QuantType]
    QUANT_TYPE_GPTQ: _ClassVar[QuantType]
    QUANT_TYPE_AWQ: _ClassVar[QuantType]
    QUANT_TYPE_SMOOTH_QUANT: _ClassVar[QuantType]
    QUANT_TYPE_FP8: _ClassVar[QuantType]
    QUANT_TYPE_KV_CACHE_ONLY: _ClassVar[QuantType]
QUANT_TYPE_UNSPECIFIED: QuantType
QUANT_TYPE_WEIGHT_ONLY_INT8: QuantType
QUANT_TYPE_WEIGHT_ONLY_INT4: QuantType
QUANT_TYPE_GPTQ: QuantType
QUANT_TYPE_AWQ: QuantType
QUANT_TYPE_SMOOTH_QUANT: QuantType
QUANT_TYPE_FP8: QuantType
QUANT_TYPE_KV_CACHE_ONLY: QuantType

class KvCacheQuantSpec(_message.Message):
    __slots__ = ("dtype", "static_scales")
    DTYPE_FIELD_NUMBER: _ClassVar[int]
    STATIC_SCALES_FIELD_NUMBER: _ClassVar[int]
    dtype: str
    static_scales: bool
    def __init__(self, dtype: _Optional[str] = ..., static_scales: _Optional[bool] = ...) -> None: ...

class CalibrationSpec(_message.Message):
    __slots__ = ("dataset_uri", "token_ids_uri", "num_samples", "seq_len")
    DATASET_URI_FIELD_NUMBER: _ClassVar[int]
    TOKEN_IDS_URI_FIELD_NUMBER: _ClassVar[int]
    NUM_SAMPLES_FIELD_NUMBER: _ClassVar[int]
    SEQ_LEN_FIELD_NUMBER: _ClassVar[int]
    dataset_uri: str
    token_ids_uri: str
    num_samples: int
    seq_len: int
    def __init__(self, dataset_uri: _Optional[str] = ..., token_ids_uri: _Optional[str] = ..., num_samples: _Optional[int] = ..., seq_len: _Optional[int] = ...) -> None: ...

class EvalSpec(_message.Message):
    __slots__ = ("dataset_uri", "num_samples", "seq_len")
    DATASET_URI_FIELD_NUMBER: _ClassVar[int]
    NUM_SAMPLES_FIELD_NUMBER: _ClassVar[int]
    SEQ_LEN_FIELD_NUMBER: _ClassVar[int]
    dataset_uri: str
    num_samples: int
    seq_len: int
    def __init__(self, dataset_uri: _Optional[str] = ..., num_samples: _Optional[int] = ..., seq_len: _Optional[int] = ...) -> None: ...

class QuantizeJobSpec(_message.Message):
    __slots__ = ("source", "quant_type", "bits", "group_size", "symmetric", "act_order", "damp_percent", "smoothquant_alpha", "dtype", "kv_cache", "calibration", "eval", "output_name", "aliases", "ignore", "runner")
    SOURCE_FIELD_NUMBER: _ClassVar[int]
    QUANT_TYPE_FIELD_NUMBER: _ClassVar[int]
    BITS_FIELD_NUMBER: _ClassVar[int]
    GROUP_SIZE_FIELD_NUMBER: _ClassVar[int]
    SYMMETRIC_FIELD_NUMBER: _ClassVar[int]
    ACT_ORDER_FIELD_NUMBER: _ClassVar[int]
    DAMP_PERCENT_FIELD_NUMBER: _ClassVar[int]
    SMOOTHQUANT_ALPHA_FIELD_NUMBER: _ClassVar[int]
    DTYPE_FIELD_NUMBER: _ClassVar[int]
    KV_CACHE_FIELD_NUMBER: _ClassVar[int]
    CALIBRATION_FIELD_NUMBER: _ClassVar[int]
    EVAL_FIELD_NUMBER: _ClassVar[int]
    OUTPUT_NAME_FIELD_NUMBER: _ClassVar[int]
    ALIASES_FIELD_NUMBER: _ClassVar[int]
    IGNORE_FIELD_NUMBER: _ClassVar[int]
    RUNNER_FIELD_NUMBER: _ClassVar[int]
    source: _common_pb2.ModelRef
    quant_type: QuantType
    bits: int
    group_size: int
    symmetric: bool
    act_order: bool
    damp_percent: float
    smoothquant_alpha: float
    dtype: str
    kv_cache: KvCacheQuantSpec
    calibration: CalibrationSpec
    eval: EvalSpec
    output_name: str
    aliases: _containers.RepeatedScalarFieldContainer[str]
    ignore: _containers.RepeatedScalarFieldContainer[str]
    runner: _common_pb2.RunnerKind
    def __init__(self, source: _Optional[_Union[_common_pb2.ModelRef, _Mapping]] = ..., quant_type: _Optional[_Union[QuantType, str]] = ..., bits: _Optional[int] = ..., group_size: _Optional[int] = ..., symmetric: _Optional[bool] = ..., act_order: _Optional[bool] = ..., damp_percent: _Optional[float] = ..., smoothquant_alpha: _Optional[float] = ..., dtype: _Optional[str] = ..., kv_cache: _Optional[_Union[KvCacheQuantSpec, _Mapping]] = ..., calibration: _Optional[_Union[CalibrationSpec, _Mapping]] = ..., eval: _Optional[_Union[EvalSpec, _Mapping]] = ..., output_name: _Optional[str] = ..., aliases: _Optional[_Iterable[str]] = ..., ignore: _Optional[_Iterable[str]] = ..., runner: _Optional[_Union[_common_pb2.RunnerKind, str]] = ...) -> None: ...

class EvalReport(_message.Message):
    __slots__ = ("perplexity_before", "perplexity_after", "size_bytes_before", "size_bytes_after", "eval_tokens")
    PERPLEXITY_BEFORE_FIELD_NUMBER: _ClassVar[int]
    PERPLEXITY_AFTER_FIELD_NUMBER: _ClassVar[int]
    SIZE_BYTES_BEFORE_FIELD_NUMBER: _ClassVar[int]
    SIZE_BYTES_AFTER_FIELD_NUMBER: _ClassVar[int]
    EVAL_TOKENS_FIELD_NUMBER: _ClassVar[int]
    perplexity_before: float
    perplexity_after: float
    size_bytes_before: int
    size_bytes_after: int
    eval_tokens: int
    def __init__(self, perplexity_before: _Optional[float] = ..., perplexity_after: _Optional[float] = ..., size_bytes_before: _Optional[int] = ..., size_bytes_after: _Optional[int] = ..., eval_tokens: _Optional[int] = ...) -> None: ...

class QuantizeJob(_message.Message):
    __slots__ = ("id", "spec", "status", "report")
    ID_FIELD_NUMBER: _ClassVar[int]
    SPEC_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    REPORT_FIELD_NUMBER: _ClassVar[int]
    id: str
    spec: QuantizeJobSpec
    status: _common_pb2.JobStatus
    report: EvalReport
    def __init__(self, id: _Optional[str] = ..., spec: _Optional[_Union[QuantizeJobSpec, _Mapping]] = ..., status: _Optional[_Union[_common_pb2.JobStatus, _Mapping]] = ..., report: _Optional[_Union[EvalReport, _Mapping]] = ...) -> None: ...

class ListQuantizeJobsResponse(_message.Message):
    __slots__ = ("jobs", "next_page_token")
    JOBS_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    jobs: _containers.RepeatedCompositeFieldContainer[QuantizeJob]
    next_page_token: str
    def __init__(self, jobs: _Optional[_Iterable[_Union[QuantizeJob, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...
