"""Prefill that does not happen in one piece: chunks, prefix-cache hits, forks, prompt logprobs.

Each case must give the logits of a plain one-step prefill of the same tokens.
"""

from __future__ import annotations

import torch
from engine_helpers import BlockAllocator, greedy, hf_logits, make_runner, prompts
from runner_probes import recorded_logits

from cairn.services.worker.step import NewSequence, ScheduledSeq, StepInput

BLOCK_SIZE = 5
TOLERANCE = 1e-5


def one_shot_logits(runner, seq_id: int, tokens: list[int], blocks: BlockAllocator) -> torch.Tensor:
    step = StepInput(
        new_seqs=[NewSequence(seq_id, tokens, len(tokens), greedy())],
        scheduled=[ScheduledSeq(seq_id, 0, len(tokens), blocks.take(-(-len(tokens) // BLOCK_SIZE)))],
    )
    with recorded_logits(runner) as logits:
        runner.step(step)
    return logits[-1][0]


def test_three_chunks_give_the_logits_of_one_prefill(checkpoint) -> None:
    ckpt = checkpoint("llama-gqa")
    runner = make_runner(ckpt.path, block_size=BLOCK_SIZE)
    (prompt,) = prompts(seed=2, lengths=(41,))
    blocks = BlockAllocator()
    expected = one_shot_logits(runner, 0, prompt, blocks)
    table = blocks.take(9)
    runner.step(StepInput(new_seqs=[NewSequence(1, prompt, len(prompt), greedy())]))
    with recorded_logits(runner) as logits:
        # Chunk boundaries (12, 27) fall inside blocks, so a chunk resumes mid-block.
        for start, end, new_blocks in ((0, 12, table[:3]), (12, 27, table[3:6]), (27, 41, table[6:])):
            output = runner.step(
                StepInput(scheduled=[ScheduledSeq(1, start, end - start, new_blocks, sample=end == 41)])
            )
            assert [o.seq_id for o in output.outputs] == ([1] if end == 41 else [])
    assert len(logits) == 1
    torch.testing.assert_close(logits[0][0], expected, atol=TOLERANCE, rtol=0)
    torch.testing.assert_close(expected, hf_logits(ckpt.hf, prompt)[-1], atol=1e-4, rtol=0)


def test_prefix_hit_on_shared_blocks_gives_the_logits_of_one_prefill(checkpoint) -> None:
    runner = make_runner(checkpoint("qwen2").path, block_size=BLOCK_SIZE)
    (owner_prompt,) = prompts(seed=3, lengths=(41,))
    (tail,) = prompts(seed=4, lengths=(17,))
    blocks = BlockAllocator()
    shared = blocks.take(4)
    owner_rest = blocks.take(5)
    runner.step(
        StepInput(
            new_seqs=[NewSequence(0, owner_prompt, 41, greedy())],
            scheduled=[ScheduledSeq(0, 0, 41, shared + owner_rest)],
        )
    )
    # Same first 20 tokens (4 full blocks), then a different tail.
    prompt = owner_prompt[:20] + tail
    expected = one_shot_logits(runner, 1, prompt, blocks)
    with recorded_logits(runner) as logits:
        runner.step(
            StepInput(
                new_seqs=[NewSequence(2, prompt, len(prompt), greedy())],
                scheduled=[ScheduledSeq(2, 20, len(prompt) - 20, shared + blocks.take(4))],
            )
        )
    torch.testing.assert_close(logits[0][0], expected, atol=TOLERANCE, rtol=0)


def test_prefix_hit_mid_block_through_a_block_copy(checkpoint) -> None:
    runner = make_runner(checkpoint("llama-3.2").path, block_size=BLOCK_SIZE)
    (owner_prompt,) = prompts(seed=5, lengths=(29,))
    (tail,) = prompts(seed=6, lengths=(14,))
    blocks = BlockAllocator()
    owner_blocks = blocks.take(6)
    runner.step(
        StepInput(
            new_seqs=[NewSequence(0, owner_prompt, 29, greedy())],
            scheduled=[ScheduledSeq(0, 0, 29, owner_blocks)],
        )
    )
    # 22 shared tokens: 4 full blocks shared, the 5th copied (its last 3 slots get overwritten).
    prompt = owner_prompt[:22] + tail
    expected = one_shot_logits(runner, 1, prompt, blocks)
    copy = blocks.take(1)
    with recorded_logits(runner) as logits:
        runner.step(
            StepInput(
                new_seqs=[NewSequence(2, prompt, len(prompt), greedy())],
                scheduled=[ScheduledSeq(2, 22, len(prompt) - 22, owner_blocks[:4] + copy + blocks.take(3))],
                block_copies=[(owner_blocks[4], copy[0])],
            )
        )
    torch.testing.assert_close(logits[0][0], expected, atol=TOLERANCE, rtol=0)
    # The owner's blocks were only read: its next decode still matches HF.
    with recorded_logits(runner) as logits:
        runner.step(StepInput(scheduled=[ScheduledSeq(0, 29, 1)]))
    tokens = [*owner_prompt, runner.table.get(0).output_ids[0]]
    torch.testing.assert_close(
        logits[0][0], hf_logits(checkpoint("llama-3.2").hf, tokens)[-1], atol=1e-4, rtol=0
    )


def test_fork_shares_full_blocks_and_copies_the_tail(checkpoint) -> None:
    runner = make_runner(checkpoint("mistral").path, block_size=BLOCK_SIZE)
    (prompt,) = prompts(seed=7, lengths=(13,))
    blocks = BlockAllocator()
    parent_blocks = blocks.take(3)
    with recorded_logits(runner) as logits:
        runner.step(
            StepInput(
                new_seqs=[NewSequence(0, prompt, 13, greedy())],
                scheduled=[ScheduledSeq(0, 0, 13, parent_blocks)],
            )
        )
        # The fork recomputes the last prompt token into its copy of the parent's partial block.
        tail = blocks.take(1)
        runner.step(
            StepInput(
                new_seqs=[NewSequence(1, prompt, 13, greedy(), parent_seq_id=0)],
                scheduled=[ScheduledSeq(1, 12, 1, tail)],
                block_copies=[(parent_blocks[2], tail[0])],
            )
        )
    assert runner.table.block_tables[runner.table.get(1).row, :3].tolist() == [*parent_blocks[:2], tail[0]]
    torch.testing.assert_close(logits[1][0], logits[0][0], atol=TOLERANCE, rtol=0)


def test_prompt_logprobs_across_chunks_match_hf(checkpoint) -> None:
    ckpt = checkpoint("llama-gqa")
    runner = make_runner(ckpt.path, block_size=BLOCK_SIZE)
    (prompt,) = prompts(seed=8, lengths=(23,))
    params = greedy(prompt_logprobs=3)
    blocks = BlockAllocator().take(5)
    runner.step(StepInput(new_seqs=[NewSequence(0, prompt, 23, params)]))
    first = runner.step(StepInput(scheduled=[ScheduledSeq(0, 0, 10, blocks[:2], sample=False)])).outputs
    second = runner.step(StepInput(scheduled=[ScheduledSeq(0, 10, 13, blocks[2:])])).outputs
    entries = first[0].prompt_logprobs + second[0].prompt_logprobs
    assert len(second[0].tokens) == 1
    # One entry per prompt token after the first.
    assert [e.token_id for e in entries] == prompt[1:]
    reference = torch.log_softmax(hf_logits(ckpt.hf, prompt), dim=-1)
    chosen = torch.tensor([e.logprob for e in entries])
    torch.testing.assert_close(
        chosen, reference[torch.arange(22), torch.tensor(prompt[1:])], atol=1e-4, rtol=0
    )
    top = reference[:-1].topk(3, dim=-1)
    assert [[t.token_id for t in e.top_logprobs] for e in entries] == top.indices.tolist()
