from cairn.v1 import common_pb2 as _common_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class TrainMethod(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    TRAIN_METHOD_UNSPECIFIED: _ClassVar[TrainMethod]
    TRAIN_METHOD_SFT: _ClassVar[TrainMethod]
    TRAIN_METHOD_LORA: _ClassVar[TrainMethod]
    TRAIN_METHOD_QLORA: _ClassVar[TrainMethod]
    TRAIN_METHOD_PREFIX_TUNING: _ClassVar[TrainMethod]
    TRAIN_METHOD_DPO: _ClassVar[TrainMethod]
    TRAIN_METHOD_PRETRAIN: _ClassVar[TrainMethod]

class DatasetFormat(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    DATASET_FORMAT_AUTO: _ClassVar[DatasetFormat]
    DATASET_FORMAT_SRC_TGT: _ClassVar[DatasetFormat]
    DATASET_FORMAT_CONVERSATIONS: _ClassVar[DatasetFormat]
    DATASET_FORMAT_ALPACA: _ClassVar[DatasetFormat]
    DATASET_FORMAT_MESSAGES: _ClassVar[DatasetFormat]
    DATASET_FORMAT_DPO_SRC_TGT: _ClassVar[DatasetFormat]
    DATASET_FORMAT_DPO_PAIRS: _ClassVar[DatasetFormat]
    DATASET_FORMAT_TEXT: _ClassVar[DatasetFormat]

class ZeroStage(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    ZERO_STAGE_NONE: _ClassVar[ZeroStage]
    ZERO_STAGE_2: _ClassVar[ZeroStage]
    ZERO_STAGE_3: _ClassVar[ZeroStage]
TRAIN_METHOD_UNSPECIFIED: TrainMethod
TRAIN_METHOD_SFT: TrainMethod
TRAIN_METHOD_LORA: TrainMethod
TRAIN_METHOD_QLORA: TrainMethod
TRAIN_METHOD_PREFIX_TUNING: TrainMethod
TRAIN_METHOD_DPO: TrainMethod
TRAIN_METHOD_PRETRAIN: TrainMethod
DATASET_FORMAT_AUTO: DatasetFormat
DATASET_FORMAT_SRC_TGT: DatasetFormat
DATASET_FORMAT_CONVERSATIONS: DatasetFormat
DATASET_FORMAT_ALPACA: DatasetFormat
DATASET_FORMAT_MESSAGES: DatasetFormat
DATASET_FORMAT_DPO_SRC_TGT: DatasetFormat
DATASET_FORMAT_DPO_PAIRS: DatasetFormat
DATASET_FORMAT_TEXT: DatasetFormat
ZERO_STAGE_NONE: ZeroStage
ZERO_STAGE_2: ZeroStage
ZERO_STAGE_3: ZeroStage

class DatasetSpec(_message.Message):
    __slots__ = ("uri", "format", "eval_split", "eval_uri", "sha256")
    URI_FIELD_NUMBER: _ClassVar[int]
    FORMAT_FIELD_NUMBER: _ClassVar[int]
    EVAL_SPLIT_FIELD_NUMBER: _ClassVar[int]
    EVAL_URI_FIELD_NUMBER: _ClassVar[int]
    SHA256_FIELD_NUMBER: _ClassVar[int]
    uri: str
    format: DatasetFormat
    eval_split: float
    eval_uri: str
    sha256: str
    def __init__(self, uri: _Optional[str] = ..., format: _Optional[_Union[DatasetFormat, str]] = ..., eval_split: _Optional[float] = ..., eval_uri: _Optional[str] = ..., sha256: _Optional[str] = ...) -> None: ...

class LoraSpec(_message.Message):
    __slots__ = ("r", "alpha", "dropout", "target_modules")
    R_FIELD_NUMBER: _ClassVar[int]
    ALPHA_FIELD_NUMBER: _ClassVar[int]
    DROPOUT_FIELD_NUMBER: _ClassVar[int]
    TARGET_MODULES_FIELD_NUMBER: _ClassVar[int]
    r: int
    alpha: float
    dropout: float
    target_modules: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, r: _Optional[int] = ..., alpha: _Optional[float] = ..., dropout: _Optional[float] = ..., target_modules: _Optional[_Iterable[str]] = ...) -> None: ...

class PrefixSpec(_message.Message):
    __slots__ = ("num_virtual_tokens",)
    NUM_VIRTUAL_TOKENS_FIELD_NUMBER: _ClassVar[int]
    num_virtual_tokens: int
    def __init__(self, num_virtual_tokens: _Optional[int] = ...) -> None: ...

class DpoSpec(_message.Message):
    __slots__ = ("beta", "reference_model")
    BETA_FIELD_NUMBER: _ClassVar[int]
    REFERENCE_MODEL_FIELD_NUMBER: _ClassVar[int]
    beta: float
    reference_model: _common_pb2.ModelRef
    def __init__(self, beta: _Optional[float] = ..., reference_model: _Optional[_Union[_common_pb2.ModelRef, _Mapping]] = ...) -> None: ...

class TrainingArgs(_message.Message):
    __slots__ = ("learning_rate", "lr_scheduler", "warmup_ratio", "num_epochs", "max_steps", "micro_batch_size", "gradient_accumulation_steps", "gradient_checkpointing", "precision", "seed", "max_length", "packing", "eval_steps", "save_steps", "save_total_limit", "logging_steps", "weight_decay", "max_grad_norm", "zero_stage", "zero_offload", "num_workers")
    LEARNING_RATE_FIELD_NUMBER: _ClassVar[int]
    LR_SCHEDULER_FIELD_NUMBER: _ClassVar[int]
    WARMUP_RATIO_FIELD_NUMBER: _ClassVar[int]
    NUM_EPOCHS_FIELD_NUMBER: _ClassVar[int]
    MAX_STEPS_FIELD_NUMBER: _ClassVar[int]
    MICRO_BATCH_SIZE_FIELD_NUMBER: _ClassVar[int]
    GRADIENT_ACCUMULATION_STEPS_FIELD_NUMBER: _ClassVar[int]
    GRADIENT_CHECKPOINTING_FIELD_NUMBER: _ClassVar[int]
    PRECISION_FIELD_NUMBER: _ClassVar[int]
    SEED_FIELD_NUMBER: _ClassVar[int]
    MAX_LENGTH_FIELD_NUMBER: _ClassVar[int]
    PACKING_FIELD_NUMBER: _ClassVar[int]
    EVAL_STEPS_FIELD_NUMBER: _ClassVar[int]
    SAVE_STEPS_FIELD_NUMBER: _ClassVar[int]
    SAVE_TOTAL_LIMIT_FIELD_NUMBER: _ClassVar[int]
    LOGGING_STEPS_FIELD_NUMBER: _ClassVar[int]
    WEIGHT_DECAY_FIELD_NUMBER: _ClassVar[int]
    MAX_GRAD_NORM_FIELD_NUMBER: _ClassVar[int]
    ZERO_STAGE_FIELD_NUMBER: _ClassVar[int]
    ZERO_OFFLOAD_FIELD_NUMBER: _ClassVar[int]
    NUM_WORKERS_FIELD_NUMBER: _ClassVar[int]
    learning_rate: float
    lr_scheduler: str
    warmup_ratio: float
    num_epochs: float
    max_steps: int
    micro_batch_size: int
    gradient_accumulation_steps: int
    gradient_checkpointing: bool
    precision: str
    seed: int
    max_length: int
    packing: bool
    eval_steps: int
    save_steps: int
    save_total_limit: int
    logging_steps: int
    weight_decay: float
    max_grad_norm: float
    zero_stage: ZeroStage
    zero_offload: bool
    num_workers: int
    def __init__(self, learning_rate: _Optional[float] = ..., lr_scheduler: _Optional[str] = ..., warmup_ratio: _Optional[float] = ..., num_epochs: _Optional[float] = ..., max_steps: _Optional[int] = ..., micro_batch_size: _Optional[int] = ..., gradient_accumulation_steps: _Optional[int] = ..., gradient_checkpointing: _Optional[bool] = ..., precision: _Optional[str] = ..., seed: _Optional[int] = ..., max_length: _Optional[int] = ..., packing: _Optional[bool] = ..., eval_steps: _Optional[int] = ..., save_steps: _Optional[int] = ..., save_total_limit: _Optional[int] = ..., logging_steps: _Optional[int] = ..., weight_decay: _Optional[float] = ..., max_grad_norm: _Optional[float] = ..., zero_stage: _Optional[_Union[ZeroStage, str]] = ..., zero_offload: _Optional[bool] = ..., num_workers: _Optional[int] = ...) -> None: ...

class TrainOutputSpec(_message.Message):
    __slots__ = ("name", "aliases", "merge_lora")
    NAME_FIELD_NUMBER: _ClassVar[int]
    ALIASES_FIELD_NUMBER: _ClassVar[int]
    MERGE_LORA_FIELD_NUMBER: _ClassVar[int]
    name: str
    aliases: _containers.RepeatedScalarFieldContainer[str]
    merge_lora: bool
    def __init__(self, name: _Optional[str] = ..., aliases: _Optional[_Iterable[str]] = ..., merge_lora: _Optional[bool] = ...) -> None: ...

class TrainJobSpec(_message.Message):
    __slots__ = ("base_model", "method", "dataset", "args", "lora", "prefix", "dpo", "output", "runner", "labels")
    class LabelsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    BASE_MODEL_FIELD_NUMBER: _ClassVar[int]
    METHOD_FIELD_NUMBER: _ClassVar[int]
    DATASET_FIELD_NUMBER: _ClassVar[int]
    ARGS_FIELD_NUMBER: _ClassVar[int]
    LORA_FIELD_NUMBER: _ClassVar[int]
    PREFIX_FIELD_NUMBER: _ClassVar[int]
    DPO_FIELD_NUMBER: _ClassVar[int]
    OUTPUT_FIELD_NUMBER: _ClassVar[int]
    RUNNER_FIELD_NUMBER: _ClassVar[int]
    LABELS_FIELD_NUMBER: _ClassVar[int]
    base_model: _common_pb2.ModelRef
    method: TrainMethod
    dataset: DatasetSpec
    args: TrainingArgs
    lora: LoraSpec
    prefix: PrefixSpec
    dpo: DpoSpec
    output: TrainOutputSpec
    runner: _common_pb2.RunnerKind
    labels: _containers.ScalarMap[str, str]
    def __init__(self, base_model: _Optional[_Union[_common_pb2.ModelRef, _Mapping]] = ..., method: _Optional[_Union[TrainMethod, str]] = ..., dataset: _Optional[_Union[DatasetSpec, _Mapping]] = ..., args: _Optional[_Union[TrainingArgs, _Mapping]] = ..., lora: _Optional[_Union[LoraSpec, _Mapping]] = ..., prefix: _Optional[_Union[PrefixSpec, _Mapping]] = ..., dpo: _Optional[_Union[DpoSpec, _Mapping]] = ..., output: _Optional[_Union[TrainOutputSpec, _Mapping]] = ..., runner: _Optional[_Union[_common_pb2.RunnerKind, str]] = ..., labels: _Optional[_Mapping[str, str]] = ...) -> None: ...

class TrainJob(_message.Message):
    __slots__ = ("id", "spec", "status", "final_train_loss", "final_eval_loss")
    ID_FIELD_NUMBER: _ClassVar[int]
    SPEC_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    FINAL_TRAIN_LOSS_FIELD_NUMBER: _ClassVar[int]
    FINAL_EVAL_LOSS_FIELD_NUMBER: _ClassVar[int]
    id: str
    spec: TrainJobSpec
    status: _common_pb2.JobStatus
    final_train_loss: float
    final_eval_loss: float
    def __init__(self, id: _Optional[str] = ..., spec: _Optional[_Union[TrainJobSpec, _Mapping]] = ..., status: _Optional[_Union[_common_pb2.JobStatus, _Mapping]] = ..., final_train_loss: _Optional[float] = ..., final_eval_loss: _Optional[float] = ...) -> None: ...

class ListTrainJobsResponse(_message.Message):
    __slots__ = ("jobs", "next_page_token")
    JOBS_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    jobs: _containers.RepeatedCompositeFieldContainer[TrainJob]
    next_page_token: str
    def __init__(self, jobs: _Optional[_Iterable[_Union[TrainJob, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...
