"""From the dataset spec to encoded train and eval items, identically on every rank."""

from __future__ import annotations

import logging
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cairn.common.errors import InvalidArgument
from cairn.jobs.datasets import check_sha256

from ..plan import DatasetFormat, Method, TrainPlan, check_format_for_method
from .encode import Encoder, PairSample, Sample, TemplateError
from .examples import Conversation, Document, Example, Preference
from .packing import Row, pack, single_rows
from .reader import read_examples

logger = logging.getLogger("cairn.trainer")

Fetch = Callable[[str], Path]


@dataclass(frozen=True)
class PreparedData:
    format: DatasetFormat
    train: list[Row] | list[PairSample]
    eval: list[Row] | list[PairSample]
    sha256: str
    eval_sha256: str


def prepare(plan: TrainPlan, fetch: Fetch, tokenizer: Any) -> PreparedData:
    spec = plan.dataset
    path = fetch(spec.uri)
    digest = check_sha256(path, spec.sha256, "dataset")
    dataset_format, examples = read_examples(path, spec.format)
    check_format_for_method(
        dataset_format, plan.method, f"dataset {path.name} (read as {dataset_format.value})"
    )
    eval_digest = ""
    if spec.eval_uri:
        eval_path = fetch(spec.eval_uri)
        eval_digest = check_sha256(eval_path, "", "eval dataset")
        eval_format, eval_examples = read_examples(eval_path, spec.format)
        if eval_format != dataset_format:
            raise InvalidArgument(
                f"eval dataset {eval_path.name} reads as {eval_format.value} but the training data as "
                f"{dataset_format.value}"
            )
    elif spec.eval_split:
        examples, eval_examples = _split(examples, spec.eval_split, plan.seed)
    else:
        eval_examples = []

    encoder = Encoder(tokenizer, plan.max_length)
    train = _encode(encoder, examples, plan, "training")
    held_out = _encode(encoder, eval_examples, plan, "evaluation") if eval_examples else []
    logger.info("dataset %s: %s format, %d training and %d evaluation items", path.name,
                dataset_format.value, len(train), len(held_out))  # fmt: skip
    return PreparedData(dataset_format, train, held_out, digest, eval_digest)


def _split(examples: list[Example], fraction: float, seed: int) -> tuple[list[Example], list[Example]]:
    if len(examples) < 2:
        raise InvalidArgument("dataset.eval_split needs at least two examples; give eval_uri instead")
    order = list(range(len(examples)))
    random.Random(seed).shuffle(order)
    held = min(len(examples) - 1, max(1, round(fraction * len(examples))))
    keep = sorted(order[held:])
    return [examples[i] for i in keep], [examples[i] for i in sorted(order[:held])]


def _encode(
    encoder: Encoder, examples: Sequence[Example], plan: TrainPlan, what: str
) -> list[Row] | list[PairSample]:
    try:
        if plan.method == Method.DPO:
            pairs = [encoder.preference(e) for e in examples if isinstance(e, Preference)]
            kept_pairs = [p for p in pairs if p.chosen.num_labels and p.rejected.num_labels]
            _report_dropped(len(pairs) - len(kept_pairs), len(pairs), what, plan)
            return kept_pairs
        samples: list[Sample] = []
        for example in examples:
            if isinstance(example, Document):
                samples += encoder.document(example)
            elif isinstance(example, Conversation):
                samples.append(encoder.conversation(example))
    except TemplateError as e:
        raise InvalidArgument(str(e)) from None
    kept = [s for s in samples if s.num_labels]
    _report_dropped(len(samples) - len(kept), len(samples), what, plan)
    return pack(kept, plan.max_length) if plan.packing else single_rows(kept)


def _report_dropped(dropped: int, total: int, what: str, plan: TrainPlan) -> None:
    if dropped == total:
        raise InvalidArgument(
            f"no {what} example keeps a token to learn from within args.max_length={plan.max_length}; "
            "raise max_length or shorten the prompts"
        )
    if dropped:
        logger.warning("%d of %d %s examples dropped: nothing to learn left within max_length=%d",
                       dropped, total, what, plan.max_length)  # fmt: skip
