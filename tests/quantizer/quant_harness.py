"""Helpers for the quantizer suite: services on loopback, specs, artifacts, dequantized twins,
community GPTQ/AWQ checkpoints written the way AutoGPTQ and AutoAWQ pack them, and engine logits."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch
from runner_probes import recorded_logits
from safetensors import safe_open
from safetensors.torch import save_file

from cairn.services.quantizer.methods.rtn import QuantArgs, rtn
from cairn.services.worker.engine_config import EngineConfig
from cairn.services.worker.model_runner import ModelRunner
from cairn.services.worker.sampling_params import SamplingParams
from cairn.services.worker.step import NewSequence, ScheduledSeq, StepInput
from cairn.v1 import quantizer_pb2

BLOCK_SIZE = 4
# Calibration and evaluation sets small enough for the CPU suite.
CALIBRATION = {"num_samples": 8, "seq_len": 64}
EVALUATION = {"num_samples": 4, "seq_len": 64}
LINEARS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


def spec(source: str, quant_type: str, **fields: Any) -> quantizer_pb2.QuantizeJobSpec:
    """A QuantizeJobSpec; `quant_type` is the enum's short name ("gptq"), nested fields as dicts."""
    value = quantizer_pb2.QuantType.Value(f"QUANT_TYPE_{quant_type.upper()}")
    return quantizer_pb2.QuantizeJobSpec(source={"ref": source}, quant_type=value, **fields)


# ---- checkpoints


def read_tensors(model_dir: Path) -> dict[str, torch.Tensor]:
    tensors = {}
    for file in sorted(model_dir.glob("*.safetensors")):
        with safe_open(file, framework="pt") as f:
            tensors.update({name: f.get_tensor(name) for name in f.keys()})  # noqa: SIM118
    return tensors


def write_model(
    out_dir: Path, like: Path, tensors: dict[str, torch.Tensor], quantization: dict | None
) -> Path:
    """An HF directory with `like`'s config (quantization_config replaced) and tokenizer, and `tensors`."""
    shutil.rmtree(out_dir, ignore_errors=True)
    out_dir.mkdir(parents=True)
    config = json.loads((like / "config.json").read_text())
    config.pop("quantization_config", None)
    if quantization is not None:
        config["quantization_config"] = quantization
    (out_dir / "config.json").write_text(json.dumps(config))
    for path in like.iterdir():
        if path.name.startswith("tokenizer") or path.name == "generation_config.json":
            shutil.copy2(path, out_dir / path.name)
    save_file({k: v.contiguous() for k, v in tensors.items()}, out_dir / "model.safetensors")
    return out_dir


def decompressed(artifact: Path, scale_dtype: torch.dtype | None = torch.float32) -> dict[str, torch.Tensor]:
    """The artifact's tensors with every quantized linear layer decompressed by the compressed-tensors
    library's own compressor for its format; KV scales dropped.

    The library multiplies codes by scales in the scales' dtype; with bf16 scales that rounds every
    weight to bf16. `scale_dtype` widens the scales first (None keeps them)."""
    from compressed_tensors.compressors import BaseCompressor
    from compressed_tensors.quantization import QuantizationConfig

    config = QuantizationConfig.model_validate(
        json.loads((artifact / "config.json").read_text())["quantization_config"]
    )
    tensors = read_tensors(artifact)
    out = {name: t for name, t in tensors.items() if not name.endswith(("k_scale", "v_scale"))}
    for scheme in config.config_groups.values():
        compressor = BaseCompressor.get_value_from_registry(scheme.format)
        names = compressor.compression_param_names(scheme)
        for module in {n.rpartition(".")[0] for n in tensors if n.endswith("_proj." + names[0])}:
            state = {p: out.pop(f"{module}.{p}") for p in names}
            if scale_dtype is not None:
                state["weight_scale"] = state["weight_scale"].to(scale_dtype)
            out[f"{module}.weight"] = compressor.decompress(state, scheme)["weight"]
    return out


def dequantized_twin(artifact: Path, out_dir: Path) -> Path:
    """The artifact as the plain fp32 HF model its codes dequantize to (exact products)."""
    dense = {name: tensor.float() for name, tensor in decompressed(artifact).items()}
    return write_model(out_dir, artifact, dense, None)


def _pack_rows(codes: np.ndarray, bits: int) -> np.ndarray:
    """AutoGPTQ's qweight packing: rows i..i+pack of `codes` [K, N] into one uint32 row."""
    pack = 32 // bits
    packed = np.zeros((codes.shape[0] // pack, codes.shape[1]), dtype=np.uint32)
    for row in range(packed.shape[0]):
        for j in range(pack):
            packed[row] |= codes[row * pack + j].astype(np.uint32) << (bits * j)
    return packed


def _pack_columns(codes: np.ndarray, bits: int, order: tuple[int, ...] | None = None) -> np.ndarray:
    """Pack columns of `codes` [R, N] into uint32 words, `order` giving which column each nibble holds."""
    pack = 32 // bits
    order = order or tuple(range(pack))
    packed = np.zeros((codes.shape[0], codes.shape[1] // pack), dtype=np.uint32)
    for col in range(packed.shape[1]):
        for i in range(pack):
            packed[:, col] |= codes[:, col * pack + order[i]].astype(np.uint32) << (bits * i)
    return packed


def _int32(words: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(words.view(np.int32).copy())


def community_checkpoint(
    source: Path, out_dir: Path, dense_dir: Path, layout: str, *, group_size: int, act_order: bool = False
) -> tuple[Path, Path]:
    """The source's linear layers as a GPTQ ("gptq", "gptq_v2") or AWQ ("awq") 4-bit checkpoint, and
    the plain fp32 model those codes dequantize to. Act order shuffles which columns share a group
    (the same way for layers that read the same input, as GPTQ's shared Hessian makes it)."""
    tensors = read_tensors(source)
    generator = torch.Generator().manual_seed(7)
    shuffles: dict[str, torch.Tensor] = {}
    quantized, dense = {}, {}
    for name, weight in tensors.items():
        module = name.removesuffix(".weight")
        if not name.endswith(".weight") or module.rpartition(".")[2] not in LINEARS:
            dense[name] = weight.float()
            continue
        columns = weight.shape[1]
        reader = (
            module.replace("k_proj", "q_proj").replace("v_proj", "q_proj").replace("up_proj", "gate_proj")
        )
        if reader not in shuffles:
            shuffles[reader] = (
                torch.randperm(columns, generator=generator) if act_order else torch.arange(columns)
            )
        perm = shuffles[reader]
        result = rtn(
            weight.float()[:, perm], QuantArgs(4, group_size, symmetric=layout != "awq"), torch.float16
        )
        codes = torch.empty_like(result.codes)
        codes[:, perm] = result.codes
        g_idx = torch.empty(columns, dtype=torch.int32)
        g_idx[perm] = torch.arange(columns, dtype=torch.int32) // group_size
        zero = torch.full_like(result.scale, 8, dtype=torch.int32) if result.zero_point is None else (
            result.zero_point.int() + 8)  # fmt: skip
        unsigned = codes.int() + 8
        scale = result.scale.half()
        dense[name] = (unsigned - zero[:, g_idx.long()]).float() * scale.float()[:, g_idx.long()]
        unsigned = unsigned.t().numpy()  # [K, N], as the packers take it
        if layout == "awq":
            order = (0, 2, 4, 6, 1, 3, 5, 7)
            quantized[f"{module}.qweight"] = _int32(_pack_columns(unsigned, 4, order))
            quantized[f"{module}.qzeros"] = _int32(_pack_columns(zero.t().numpy(), 4, order))
        else:
            stored_zero = zero - 1 if layout == "gptq" else zero
            quantized[f"{module}.qweight"] = _int32(_pack_rows(unsigned, 4))
            quantized[f"{module}.qzeros"] = _int32(_pack_columns(stored_zero.t().numpy(), 4))
            quantized[f"{module}.g_idx"] = g_idx
        quantized[f"{module}.scales"] = scale.t().contiguous()
    if layout == "awq":
        config = {
            "quant_method": "awq",
            "bits": 4,
            "group_size": group_size,
            "zero_point": True,
            "version": "gemm",
        }
    else:
        config = {"quant_method": "gptq", "bits": 4, "group_size": group_size, "desc_act": act_order,
                  "sym": True, "checkpoint_format": layout}  # fmt: skip
    rest = {k: v for k, v in dense.items() if not any(k.endswith(f"{p}.weight") for p in LINEARS)}
    return (
        write_model(out_dir, source, {**rest, **quantized}, config),
        write_model(dense_dir, source, dense, None),
    )


# ---- the engine


def make_runner(path: Path, **overrides: Any) -> ModelRunner:
    settings = dict(dtype="float32", device="cpu", max_num_seqs=4, max_num_batched_tokens=256) | overrides
    runner = ModelRunner(EngineConfig(model=str(path), block_size=BLOCK_SIZE, num_blocks=128, **settings))
    runner.load()
    runner.profile_and_allocate_kv_cache()
    return runner


def teacher_forced_logits(runner: ModelRunner, prompts: list[list[int]], split: int) -> torch.Tensor:
    """Logits at every position of every prompt: each prompt's first `split` tokens as one prefill
    chunk, then the rest one token per step (decode attention over the cache), all in one batch."""
    params = SamplingParams(temperature=0.0, max_tokens=1, prompt_logprobs=0)
    length = len(prompts[0])
    blocks = -(-length // BLOCK_SIZE)
    ids = list(range(len(prompts)))
    with recorded_logits(runner) as seen:
        runner.step(
            StepInput(
                new_seqs=[NewSequence(i, p, length, params) for i, p in zip(ids, prompts, strict=True)],
                scheduled=[
                    ScheduledSeq(i, 0, split, list(range(i * blocks, (i + 1) * blocks)), sample=False)
                    for i in ids
                ],
            )
        )
        for position in range(split, length):
            last = position == length - 1
            runner.step(StepInput(scheduled=[ScheduledSeq(i, position, 1, [], sample=last) for i in ids]))
    runner.free(ids)
    return torch.cat(seen)


def prompts(vocab: int, count: int = 2, length: int = 12, seed: int = 0) -> list[list[int]]:
    generator = torch.Generator().manual_seed(seed)
    return [torch.randint(3, vocab, (length,), generator=generator).tolist() for _ in range(count)]
