"""Settings of a scheduler deployment: the engine options every replica shares, and
the service around them (`cairn scheduler serve`, env `CAIRN_SCHEDULER_<FIELD>`).

`EngineOptions` is also what the offline `LLM` takes as keyword arguments, so a
setting means the same in a server and in a batch job.
"""

from __future__ import annotations

from typing import ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from cairn.common.config import GrpcPort, MetricsPort, ServiceConfig
from cairn.services.scheduler.adapters import parse_lora_modules
from cairn.services.scheduler.config import SchedulerConfig
from cairn.services.worker.engine_config import EngineConfig


class EngineOptions(BaseModel):
    """How each replica runs the model and how its scheduler batches."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    device: Literal["auto", "cpu", "cuda", "xpu"] = Field("auto", description="worker device kind")
    dtype: Literal["auto", "float32", "float16", "bfloat16"] = Field(
        "auto", description="weight and activation dtype; auto takes the checkpoint's"
    )
    block_size: int = Field(16, gt=0, description="tokens per KV block")
    gpu_memory_utilization: float = Field(
        0.9, gt=0, le=1, description="fraction of accelerator memory a worker may fill"
    )
    num_blocks: int | None = Field(
        None, gt=0, description="KV blocks per replica; unset: sized from memory (cpu_kv_cache_gb on CPU)"
    )
    cpu_kv_cache_gb: float = Field(1.0, gt=0, description="KV cache size of a CPU worker, GiB")
    max_num_seqs: int = Field(256, gt=0, description="most sequences in one step")
    max_num_batched_tokens: int = Field(8192, gt=0, description="most tokens computed in one step")
    max_model_len: int | None = Field(
        None, gt=0, description="longest prompt + output; unset: the model's limit"
    )
    enable_chunked_prefill: bool = Field(True, description="split long prompts across steps")
    enable_prefix_caching: bool = Field(True, description="reuse KV blocks of shared prompt prefixes")
    num_scheduler_steps: int = Field(
        1, gt=0, le=64, description="decode steps per worker call when the batch is all decodes"
    )
    enforce_eager: bool = Field(False, description="never capture CUDA graphs")
    seed: int = Field(0, ge=0, description="sampling seed of rows that bring none")
    quantization: Literal["auto", "none", "w8a16", "w4a16", "w8a8_int8", "w8a8_fp8"] = Field(
        "auto", description="weight quantization; auto serves what the checkpoint declares"
    )
    kv_cache_dtype: Literal["auto", "int8", "fp8"] = Field(
        "auto", description="KV cache element type; auto: what the checkpoint declares, else the model dtype"
    )
    max_loras: int = Field(
        0, ge=0, description="LoRA adapters each worker holds at once; 0 serves the base model only"
    )
    max_lora_rank: int = Field(16, gt=0, description="largest LoRA rank accepted")
    tensor_parallel_size: int = Field(
        1, gt=0, description="devices each replica is split over (tensor parallelism, GPUs of one node)"
    )

    def engine_config(self, model: str, load_format: str = "safetensors") -> EngineConfig:
        """What each worker loads. The worker's step limits match the scheduler's,
        so every step the scheduler builds is one the worker accepts."""
        return EngineConfig(
            model=model,
            dtype=self.dtype,
            device=self.device,
            block_size=self.block_size,
            gpu_memory_utilization=self.gpu_memory_utilization,
            num_blocks=self.num_blocks,
            cpu_kv_cache_gb=self.cpu_kv_cache_gb,
            max_num_seqs=self.max_num_seqs,
            max_num_batched_tokens=self._step_budget(),
            max_model_len=self.max_model_len,
            enforce_eager=self.enforce_eager,
            seed=self.seed,
            load_format=load_format,
            quantization=self.quantization,
            kv_cache_dtype=self.kv_cache_dtype,
            max_loras=self.max_loras,
            max_lora_rank=self.max_lora_rank,
            tensor_parallel_size=self.tensor_parallel_size,
        )

    def scheduler_config(self, worker_max_model_len: int, num_blocks: int) -> SchedulerConfig:
        """The policy's limits for a replica whose worker reported these figures."""
        max_model_len = min(self.max_model_len or worker_max_model_len, worker_max_model_len)
        budget = self._step_budget()
        if not self.enable_chunked_prefill:
            # Unchunked prompts are computed whole: the longest must fit one step.
            max_model_len = min(max_model_len, budget)
        return SchedulerConfig(
            block_size=self.block_size,
            num_blocks=num_blocks,
            max_num_seqs=self.max_num_seqs,
            max_num_batched_tokens=budget,
            max_model_len=max_model_len,
            enable_chunked_prefill=self.enable_chunked_prefill,
            enable_prefix_caching=self.enable_prefix_caching,
            num_scheduler_steps=self.num_scheduler_steps,
        )

    def _step_budget(self) -> int:
        budget = max(self.max_num_batched_tokens, self.max_num_seqs)
        if not self.enable_chunked_prefill and self.max_model_len:
            budget = max(budget, self.max_model_len)
        return budget


class SchedulerServiceConfig(EngineOptions, ServiceConfig):
    service_name: ClassVar[str] = "scheduler"

    port: GrpcPort = 50053
    metrics_port: MetricsPort = 9093
    model: str = Field("", description="registry reference (name@alias) or model directory to serve")
    deployment: str = Field("", description="name the router routes on; default: the model name")
    num_workers: int = Field(1, ge=0, description="worker replicas (Ray actors) to keep")
    max_queue: int = Field(
        1024, gt=0, description="most sequences waiting for a seat; beyond it Generate is RESOURCE_EXHAUSTED"
    )
    ray_address: str = Field(
        "", description="Ray cluster to join (ray://... or auto); empty: start local Ray"
    )
    raycluster_name: str = Field(
        "", description="KubeRay RayCluster whose worker group grows and shrinks with the pool (in-cluster)"
    )
    raycluster_worker_group: str = Field("gpu-workers", description="worker group of raycluster_name")
    raycluster_namespace: str = Field("", description="namespace of raycluster_name; empty: the pod's own")
    health_check_interval_s: float = Field(2.0, gt=0, description="seconds between worker health checks")
    health_check_timeout_s: float = Field(5.0, gt=0, description="a health check slower than this fails")
    health_check_failures: int = Field(3, gt=0, description="failed checks in a row that mark a worker dead")
    drain_timeout_s: float = Field(
        60.0, ge=0, description="seconds a removed worker's running requests get to finish before they move"
    )
    lora_modules: dict[str, str] = Field(
        default_factory=dict,
        description="LoRA adapters served under a name of their own, as name=ref pairs (a registry reference "
        "or a PEFT directory), e.g. [support=acme/support-lora@production]; any registry adapter of the "
        "served model is also servable by its registry name (needs max_loras > 0)",
    )

    lora_scan_interval_s: float = Field(
        30.0, gt=0, description="seconds between scans of the registry for adapters of the served model"
    )

    @field_validator("lora_modules", mode="before")
    @classmethod
    def _name_ref_pairs(cls, value: object) -> dict[str, str]:
        return parse_lora_modules(value)

    @property
    def deployment_name(self) -> str:
        if self.deployment:
            return self.deployment
        return self.model.rstrip("/").rsplit("/", 1)[-1].split("@", 1)[0].split(":", 1)[0] or "default"
