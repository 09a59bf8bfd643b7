"""One quantization from source directory to evaluated artifact; the job and `cairn quantize` both run this.

Steps (reported as progress): read and cut the data, quantize layer by
layer, write the compressed-tensors artifact, then measure perplexity on the
held-out sequences with the serving engine, before and after, and the sizes.
Held-out text is the eval dataset when given, else the calibration stream
past what calibration used; with neither, the report says so (no tokens).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open

from cairn.common.errors import InvalidArgument
from cairn.services.quantizer import calibration, evaluate, export
from cairn.services.quantizer.pipeline import LayerwiseQuantizer, Report
from cairn.services.quantizer.plan import DataPlan, Method, QuantPlan, check_model
from cairn.services.worker.loader import checkpoint_files
from cairn.services.worker.models import ModelConfig

logger = logging.getLogger("cairn.quantizer")

Fetch = Callable[[str], Path]


@dataclass(frozen=True)
class Evaluation:
    perplexity_before: float
    perplexity_after: float
    size_bytes_before: int
    size_bytes_after: int
    eval_tokens: int

    def metrics(self) -> dict[str, float]:
        return {
            "perplexity_before": self.perplexity_before,
            "perplexity_after": self.perplexity_after,
            "size_bytes_before": float(self.size_bytes_before),
            "size_bytes_after": float(self.size_bytes_after),
            "eval_tokens": float(self.eval_tokens),
        }


@dataclass(frozen=True)
class Outcome:
    directory: Path
    evaluation: Evaluation
    # sha256 of the calibration and eval files ("" when none).
    calibration_sha256: str
    eval_sha256: str
    calibration_samples: int


@dataclass
class _Data:
    sequences: list[list[int]]
    sha256: str


def quantize(
    plan: QuantPlan,
    source_dir: Path,
    out_dir: Path,
    *,
    fetch: Fetch,
    device: torch.device,
    report: Report,
    lineage: dict[str, Any],
) -> Outcome:
    """Quantize the model in `source_dir` into `out_dir` and evaluate it. `lineage` goes into the recipe."""
    config = ModelConfig.from_dir(source_dir)
    check_model(plan, config)
    if max(plan.calibration.seq_len, plan.eval.seq_len) > config.max_position_embeddings:
        raise InvalidArgument(
            f"seq_len must be at most the model's max_position_embeddings ({config.max_position_embeddings})"
        )
    tokenizer = _Tokenizer(source_dir)
    calibration_data = _read(plan.calibration, fetch, tokenizer) if plan.calibration.given else None
    samples, used_tokens = None, 0
    if plan.needs_calibration:
        samples = calibration.cut(
            calibration_data.sequences, plan.calibration.seq_len, plan.calibration.num_samples
        )
        if samples.shape[0] == 0:
            total = calibration.total_tokens(calibration_data.sequences)
            raise InvalidArgument(
                f"the calibration data has {total} tokens, fewer than one sample of seq_len "
                f"{plan.calibration.seq_len}; give more data or a shorter calibration.seq_len"
            )
        used_tokens = samples.numel()
        logger.info("calibrating on %d samples of %d tokens", *samples.shape)
    held_out, eval_sha = _held_out(plan, fetch, tokenizer, calibration_data, used_tokens)

    steps = config.num_layers + 3

    def layer_report(done: int, _total: int, message: str) -> None:
        report(done, steps, message)

    model = _load_hf_model(source_dir)
    quantized = LayerwiseQuantizer(plan, device, layer_report).run(model, samples)
    del model
    report(config.num_layers, steps, "writing the compressed-tensors artifact")
    source_names = _checkpoint_names(source_dir)
    quantized_modules = set(quantized.weights)
    unquantized = ["lm_head", *sorted(_linear_modules(source_names) - quantized_modules - {"lm_head"})]
    if plan.method == Method.KV_CACHE_ONLY:
        unquantized = []
    recipe = {
        **lineage,
        "method": plan.method.value,
        "scheme": plan.scheme,
        "parameters": plan.parameters(),
        "calibration": {
            "uri": plan.calibration.dataset_uri or plan.calibration.token_ids_uri,
            "sha256": calibration_data.sha256 if calibration_data else "",
            "samples": 0 if samples is None else samples.shape[0],
            "seq_len": plan.calibration.seq_len,
        },
    }
    export.write_artifact(out_dir, source_dir, plan, quantized, source_names, unquantized, recipe)
    evaluation = _evaluate(plan, source_dir, out_dir, held_out, device, report, steps, config.num_layers)
    recipe["evaluation"] = {**evaluation.metrics(), "eval_sha256": eval_sha}
    export.write_recipe(out_dir, recipe)
    report(steps, steps, "done")
    return Outcome(
        directory=out_dir,
        evaluation=evaluation,
        calibration_sha256=calibration_data.sha256 if calibration_data else "",
        eval_sha256=eval_sha,
        calibration_samples=0 if samples is None else samples.shape[0],
    )


class _Tokenizer:
    """The source model's tokenizer, loaded the first time text needs it."""

    def __init__(self, source_dir: Path) -> None:
        self.source_dir = source_dir
        self._tokenizer: Any = None

    def get(self) -> Any:
        if self._tokenizer is None:
            from transformers import AutoTokenizer

            try:
                self._tokenizer = AutoTokenizer.from_pretrained(self.source_dir)
            except (OSError, ValueError) as e:
                raise InvalidArgument(
                    f"text data needs the model's tokenizer, which {self.source_dir} lacks ({e}); "
                    "give a token-ids file instead"
                ) from None
        return self._tokenizer


def _read(data: DataPlan, fetch: Fetch, tokenizer: _Tokenizer) -> _Data:
    from cairn.jobs.datasets import sha256_of

    if data.token_ids_uri:
        path = fetch(data.token_ids_uri)
        return _Data(calibration.read_token_ids(path), sha256_of(path))
    path = fetch(data.dataset_uri)
    documents = calibration.read_documents(path, tokenizer.get())
    return _Data(calibration.tokenize(documents, tokenizer.get()), sha256_of(path))


def _held_out(
    plan: QuantPlan, fetch: Fetch, tokenizer: _Tokenizer, calibration_data: _Data | None, used_tokens: int
) -> tuple[torch.Tensor | None, str]:
    if plan.eval.dataset_uri:
        data = _read(plan.eval, fetch, tokenizer)
        return calibration.cut(data.sequences, plan.eval.seq_len, plan.eval.num_samples), data.sha256
    if calibration_data is None:
        logger.warning("no calibration or eval data: the report will have no perplexity")
        return None, ""
    held_out = calibration.cut(
        calibration_data.sequences, plan.eval.seq_len, plan.eval.num_samples, used_tokens
    )
    if held_out.shape[0] == 0:
        logger.warning(
            "the calibration data has nothing left over for evaluation: no perplexity in the report"
        )
        return None, ""
    return held_out, calibration_data.sha256


def _evaluate(
    plan: QuantPlan,
    source_dir: Path,
    out_dir: Path,
    held_out: torch.Tensor | None,
    device: torch.device,
    report: Report,
    steps: int,
    done: int,
) -> Evaluation:
    sizes = evaluate.checkpoint_bytes(source_dir), evaluate.checkpoint_bytes(out_dir)
    if held_out is None or held_out.shape[0] == 0:
        return Evaluation(0.0, 0.0, *sizes, 0)
    # fp32 on the CPU (bf16 matmuls there are slow and coarse); the artifact's dtype on a GPU.
    dtype = "float32" if device.type == "cpu" else plan.dtype
    report(done + 1, steps, f"evaluating the source on {held_out.shape[0]} held-out sequences")
    before, tokens = evaluate.perplexity(source_dir, held_out, device, dtype)
    report(done + 2, steps, "evaluating the quantized model")
    after, _ = evaluate.perplexity(out_dir, held_out, device, dtype)
    logger.info("perplexity %.3f -> %.3f over %d tokens", before, after, tokens)
    return Evaluation(before, after, *sizes, tokens)


def _load_hf_model(source_dir: Path) -> torch.nn.Module:
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(source_dir, dtype="auto").eval()


def _checkpoint_names(source_dir: Path) -> list[str]:
    names = []
    for file in checkpoint_files(source_dir):
        with safe_open(file, framework="pt") as shard:
            names.extend(shard.keys())
    return names


def _linear_modules(names: list[str]) -> set[str]:
    linear = ("_proj.weight", "lm_head.weight")
    return {name.removesuffix(".weight") for name in names if name.endswith(linear)}
