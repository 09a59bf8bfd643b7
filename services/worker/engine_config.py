"""How a worker runs its model: the in-process twin of `cairn.v1.EngineConfig`.

Fields mirror the proto; `None` means "the default noted", resolved once the
model's own config is known (see `ModelRunner.load`).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from cairn.common.errors import InvalidArgument
from cairn.services.worker.quantization.config import KV_CACHE_DTYPES, QUANTIZATIONS

_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
_DEVICES = ("auto", "cpu", "cuda", "xpu")
_LOAD_FORMATS = ("safetensors", "dummy")


@dataclass
class EngineConfig:
    # A local model directory or a registry reference ("name@alias", "name:3").
    model: str
    # "auto" takes the checkpoint's dtype (fp32 checkpoints run in bf16 on accelerators).
    dtype: str = "auto"
    # "auto" picks CUDA, then XPU, then CPU.
    device: str = "auto"
    device_index: int = 0
    # Devices one replica is split over (tensor parallelism); heads and MLP must split evenly.
    tensor_parallel_size: int = 1
    block_size: int = 16
    # Fraction of the accelerator's memory the worker may fill, KV cache included.
    gpu_memory_utilization: float = 0.9
    # Force this many KV blocks instead of sizing from memory.
    num_blocks: int | None = None
    # KV cache size on CPU devices, in GiB.
    cpu_kv_cache_gb: float = 1.0
    max_num_seqs: int = 256
    max_num_batched_tokens: int = 8192
    # Longest sequence (prompt + output); None takes the model's limit.
    max_model_len: int | None = None
    # Never capture CUDA graphs.
    enforce_eager: bool = False
    # Seed for sampling rows that bring no seed of their own.
    seed: int = 0
    # Where registry references are pulled to.
    model_cache_dir: Path | None = None
    # "safetensors" loads the checkpoint; "dummy" gives random weights from config.json
    # alone (benchmarks and profiling, like vLLM's load_format=dummy).
    load_format: str = "safetensors"
    # Weight quantization: "auto" serves what the checkpoint declares; w8a16, w4a16, w8a8_int8,
    # w8a8_fp8 must match it (or give random weights of that kind with load_format dummy).
    quantization: str = "auto"
    # KV cache element type: "auto" (the checkpoint's kv_cache_scheme, else the model dtype),
    # "int8" or "fp8" (the checkpoint's static scales when it has them, else dynamic ones).
    kv_cache_dtype: str = "auto"
    # LoRA: adapters resident at once in the device pool (0 disables LoRA), and the largest rank
    # accepted (every slot is allocated at this rank).
    max_loras: int = 0
    max_lora_rank: int = 16

    def __post_init__(self) -> None:
        checks = [
            (self.dtype == "auto" or self.dtype in _DTYPES, f"dtype must be auto or one of {list(_DTYPES)}"),
            (self.device in _DEVICES, f"device must be one of {list(_DEVICES)}, got {self.device!r}"),
            (self.load_format in _LOAD_FORMATS, f"load_format must be one of {list(_LOAD_FORMATS)}"),
            (self.quantization in QUANTIZATIONS, f"quantization must be one of {list(QUANTIZATIONS)}"),
            (
                self.kv_cache_dtype in KV_CACHE_DTYPES,
                f"kv_cache_dtype must be one of {list(KV_CACHE_DTYPES)}",
            ),
            (self.block_size > 0, f"block_size must be > 0, got {self.block_size}"),
            (
                self.tensor_parallel_size > 0,
                f"tensor_parallel_size must be > 0, got {self.tensor_parallel_size}",
            ),
            (
                0.0 < self.gpu_memory_utilization <= 1.0,
                f"gpu_memory_utilization must be in (0, 1], got {self.gpu_memory_utilization}",
            ),
            (
                self.num_blocks is None or self.num_blocks > 0,
                f"num_blocks must be > 0, got {self.num_blocks}",
            ),
            (self.cpu_kv_cache_gb > 0, f"cpu_kv_cache_gb must be > 0, got {self.cpu_kv_cache_gb}"),
            (self.max_loras >= 0, f"max_loras must be >= 0, got {self.max_loras}"),
            (self.max_lora_rank > 0, f"max_lora_rank must be > 0, got {self.max_lora_rank}"),
            (self.max_num_seqs > 0, f"max_num_seqs must be > 0, got {self.max_num_seqs}"),
            (
                self.max_num_batched_tokens >= self.max_num_seqs,
                "max_num_batched_tokens must be >= max_num_seqs (every sequence needs a token per step)",
            ),
            (
                self.max_model_len is None or self.max_model_len > 0,
                f"max_model_len must be > 0, got {self.max_model_len}",
            ),
        ]
        for ok, message in checks:
            if not ok:
                raise InvalidArgument(message)

    def torch_device(self) -> torch.device:
        kind = self.device
        if kind == "auto":
            if torch.cuda.is_available():
                kind = "cuda"
            elif hasattr(torch, "xpu") and torch.xpu.is_available():
                kind = "xpu"
            else:
                kind = "cpu"
        return torch.device("cpu") if kind == "cpu" else torch.device(kind, self.device_index)

    def torch_dtype(self, checkpoint_dtype: str | None, device: torch.device) -> torch.dtype:
        if self.dtype != "auto":
            return _DTYPES[self.dtype]
        dtype = _DTYPES.get(checkpoint_dtype or "", torch.float32)
        if dtype == torch.float32 and device.type != "cpu":
            return torch.bfloat16
        return dtype
