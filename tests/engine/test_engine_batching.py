"""Step shapes the scheduler mixes: prefill chunks beside decodes, and multi-step decode."""

from __future__ import annotations

import pytest
import torch
from engine_helpers import BlockAllocator, greedy, make_runner, prefill_step, prompts
from runner_probes import recorded_logits

from cairn.services.worker.sampling_params import SamplingParams
from cairn.services.worker.step import NewSequence, ScheduledSeq, StepInput

BLOCK_SIZE = 5


@pytest.mark.parametrize("chunks_first", [False, True], ids=["interleaved", "all-chunks-first"])
def test_mixed_step_gives_the_logits_of_separate_steps(checkpoint, chunks_first: bool) -> None:
    """Two decodes, a first chunk and a resumed chunk in one step, listed with
    chunks ahead of decodes so the runner must reorder them, against each run on its own."""
    path = checkpoint("llama-gqa").path
    decoding = prompts(seed=10, lengths=(13, 29))
    (fresh,) = prompts(seed=11, lengths=(17,))
    (resumed,) = prompts(seed=12, lengths=(23,))

    def history(runner, blocks: BlockAllocator) -> dict[int, list[int]]:
        """Two sequences prefilled and one decoded; sequence 3 has a first chunk of 9 tokens done."""
        tables = {0: blocks.take(10), 1: blocks.take(10), 2: blocks.take(5), 3: blocks.take(5)}
        runner.step(
            StepInput(
                new_seqs=[
                    NewSequence(0, decoding[0], 13, greedy()),
                    NewSequence(1, decoding[1], 29, greedy()),
                    NewSequence(3, resumed, 23, greedy()),
                ],
                scheduled=[
                    ScheduledSeq(0, 0, 13, tables[0]),
                    ScheduledSeq(1, 0, 29, tables[1]),
                    ScheduledSeq(3, 0, 9, tables[3], sample=False),
                ],
            )
        )
        runner.step(StepInput(scheduled=[ScheduledSeq(0, 13, 1), ScheduledSeq(1, 29, 1)]))
        return tables

    mixed_runner, blocks = make_runner(path, block_size=BLOCK_SIZE), BlockAllocator()
    tables = history(mixed_runner, blocks)
    with recorded_logits(mixed_runner) as mixed:
        output = mixed_runner.step(
            StepInput(
                new_seqs=[NewSequence(2, fresh, 17, greedy())],
                scheduled=(
                    [
                        ScheduledSeq(3, 9, 14, sample=True),
                        ScheduledSeq(2, 0, 17, tables[2]),
                        ScheduledSeq(0, 14, 1),
                        ScheduledSeq(1, 30, 1),
                    ]
                    if chunks_first
                    else [
                        ScheduledSeq(3, 9, 14, sample=True),
                        ScheduledSeq(0, 14, 1),
                        ScheduledSeq(2, 0, 17, tables[2]),
                        ScheduledSeq(1, 30, 1),
                    ]
                ),
            )
        )
    # Outputs come in batch order: decodes first, then chunks in the order given.
    chunk_order = [3, 2]
    assert [o.seq_id for o in output.outputs] == [0, 1, *chunk_order]

    separate_runner, blocks = make_runner(path, block_size=BLOCK_SIZE), BlockAllocator()
    tables = history(separate_runner, blocks)
    alone = {}
    with recorded_logits(separate_runner) as logits:
        for seq in (ScheduledSeq(0, 14, 1), ScheduledSeq(1, 30, 1), ScheduledSeq(3, 9, 14)):
            separate_runner.step(StepInput(scheduled=[seq]))
            alone[seq.seq_id] = logits[-1][0]
        separate_runner.step(
            StepInput(
                new_seqs=[NewSequence(2, fresh, 17, greedy())], scheduled=[ScheduledSeq(2, 0, 17, tables[2])]
            )
        )
        alone[2] = logits[-1][0]
    for row, seq_id in enumerate([0, 1, *chunk_order]):
        torch.testing.assert_close(mixed[0][row], alone[seq_id], atol=1e-5, rtol=0)


def run_decodes(checkpoint, params: list[SamplingParams], num_steps: int, total: int) -> dict[int, list]:
    """Prefill four sequences, then decode `total` tokens `num_steps` at a time; every sampled token."""
    runner = make_runner(checkpoint("qwen2").path, block_size=BLOCK_SIZE)
    batch = prompts(seed=13)
    seqs = list(enumerate(batch))
    step = prefill_step(seqs, BlockAllocator(), BLOCK_SIZE, greedy())
    step.new_seqs = [NewSequence(s, p, len(p), params[s]) for s, p in seqs]
    tokens: dict[int, list] = {s: [] for s, _ in seqs}
    for output in runner.step(step).outputs:
        tokens[output.seq_id] += output.tokens
    while len(tokens[0]) < total:
        scheduled = [ScheduledSeq(s, len(p) + len(tokens[s]) - 1, 1) for s, p in seqs]
        for output in runner.step(StepInput(scheduled=scheduled, num_steps=num_steps)).outputs:
            assert len(output.tokens) == num_steps
            tokens[output.seq_id] += output.tokens
    return tokens


@pytest.mark.parametrize(
    "params",
    [
        pytest.param([greedy()] * 4, id="greedy"),
        pytest.param(
            [
                SamplingParams(temperature=0.8, top_p=0.9, seed=1, logprobs=2),
                greedy(repetition_penalty=1.3),
                SamplingParams(temperature=1.0, seed=2, frequency_penalty=0.5),
                greedy(logprobs=0),
            ],
            id="seeded-and-penalized",
        ),
    ],
)
def test_multi_step_decode_matches_single_steps(checkpoint, params: list[SamplingParams]) -> None:
    single = run_decodes(checkpoint, params, num_steps=1, total=25)
    multi = run_decodes(checkpoint, params, num_steps=8, total=25)
    for seq_id, tokens in single.items():
        assert [t.token_id for t in multi[seq_id]] == [t.token_id for t in tokens]
        for ours, theirs in zip(multi[seq_id], tokens, strict=True):
            assert (ours.logprob is None) == (theirs.logprob is None)
            if ours.logprob is not None:
                assert ours.logprob == pytest.approx(theirs.logprob, abs=1e-5)
                assert [t.token_id for t in ours.top_logprobs] == [t.token_id for t in theirs.top_logprobs]
