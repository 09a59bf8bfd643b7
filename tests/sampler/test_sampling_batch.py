"""Batch building: one tensor per parameter in use, nothing for the rest."""

from __future__ import annotations

import pytest

from cairn.services.worker.sampling_params import SamplingParams

VOCAB = 32
TENSOR_FIELDS = [
    "greedy",
    "temperature",
    "rank_filter_rows",
    "top_k",
    "top_p",
    "log_min_p",
    "seeded_rows",
    "seeds",
    "positions",
    "logit_bias",
    "repetition_penalty",
    "seen_tokens",
    "presence_penalty",
    "frequency_penalty",
    "output_counts",
    "banned_tokens",
]


def built_fields(batch) -> set[str]:
    return {name for name in TENSOR_FIELDS if getattr(batch, name) is not None}


def test_plain_greedy_builds_nothing(build) -> None:
    batch = build([SamplingParams(temperature=0.0, top_p=0.3, seed=1)] * 4, VOCAB)
    assert batch.argmax_only and batch.all_greedy
    assert built_fields(batch) == set()


def test_plain_random_builds_nothing(build) -> None:
    batch = build([SamplingParams()] * 4, VOCAB, outputs=[[1, 2]] * 4)
    assert not batch.argmax_only and not batch.all_greedy
    assert built_fields(batch) == set()


@pytest.mark.parametrize(
    ("params", "fields"),
    [
        (SamplingParams(temperature=0.5), {"temperature"}),
        (SamplingParams(top_k=3), {"top_k", "rank_filter_rows"}),
        (SamplingParams(top_p=0.9), {"top_p", "rank_filter_rows"}),
        (SamplingParams(min_p=0.1), {"log_min_p"}),
        (SamplingParams(seed=3), {"seeds", "positions", "seeded_rows"}),
        (SamplingParams(logit_bias={2: 1.0}), {"logit_bias"}),
        (SamplingParams(repetition_penalty=1.2), {"repetition_penalty", "seen_tokens"}),
        (SamplingParams(presence_penalty=0.5), {"presence_penalty", "frequency_penalty", "output_counts"}),
        (SamplingParams(frequency_penalty=0.5), {"presence_penalty", "frequency_penalty", "output_counts"}),
        (SamplingParams(min_tokens=5, stop_token_ids=(4,)), {"banned_tokens"}),
    ],
)
def test_each_parameter_builds_only_its_own_tensors(build, params: SamplingParams, fields: set[str]) -> None:
    batch = build([SamplingParams(), params], VOCAB, outputs=[[1], [2]])
    assert built_fields(batch) == fields


def test_greedy_rows_bring_no_filters_or_seeds(build) -> None:
    params = [SamplingParams(temperature=0.0, top_k=2, top_p=0.5, min_p=0.3, seed=4), SamplingParams()]
    batch = build(params, VOCAB)
    assert built_fields(batch) == {"greedy"}


def test_every_row_seeded_needs_no_row_index(build) -> None:
    batch = build([SamplingParams(seed=1), SamplingParams(seed=2**70)], VOCAB, outputs=[[], [1, 2, 3]])
    assert batch.seeded_rows is None
    assert batch.seeds.tolist() == [1, 0] and batch.positions.tolist() == [0, 3]


def test_top_k_beyond_the_vocabulary_means_off(build) -> None:
    batch = build([SamplingParams(top_k=VOCAB + 10), SamplingParams(top_k=0)], VOCAB)
    assert built_fields(batch) == set()
    batch = build([SamplingParams(top_k=VOCAB + 10), SamplingParams(top_k=5)], VOCAB)
    assert batch.rank_filter_rows.tolist() == [1] and batch.top_k.tolist() == [5]


def test_rank_filters_hold_only_the_rows_that_use_them(build) -> None:
    params = [SamplingParams(top_k=4), SamplingParams(), SamplingParams(top_k=9, top_p=0.5)]
    batch = build(params, VOCAB)
    assert batch.rank_filter_rows.tolist() == [0, 2]
    assert batch.top_k.tolist() == [4, 9]
    assert batch.top_p[:, 0].tolist() == [float("inf"), 0.5]
    # Every filtered row has a top-k: its 9 best tokens are all that can survive.
    assert batch.num_candidates == 9
    # A top-p row without top-k needs the whole sorted vocabulary.
    batch = build([*params, SamplingParams(top_p=0.9)], VOCAB)
    assert batch.top_k.tolist() == [4, 9, VOCAB] and batch.num_candidates == VOCAB


def test_min_tokens_stop_banning_once_reached(build) -> None:
    params = [SamplingParams(min_tokens=2, stop_token_ids=(4,))]
    assert build(params, VOCAB, outputs=[[1]], eos_token_id=0).banned_tokens is not None
    assert build(params, VOCAB, outputs=[[1, 1]], eos_token_id=0).banned_tokens is None


def test_prompt_ids_past_the_logits_vocabulary_are_ignored(build) -> None:
    batch = build([SamplingParams(repetition_penalty=1.5)], VOCAB, prompts=[[1, VOCAB + 3]], outputs=[[2]])
    assert batch.seen_tokens[0].nonzero().flatten().tolist() == [1, 2]
