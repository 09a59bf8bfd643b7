"""The runner's contract with the scheduler: state kept between steps, and steps it refuses."""

from __future__ import annotations

import pytest
import torch
from engine_helpers import BlockAllocator, greedy, make_runner, prompts

from cairn.common.errors import FailedPrecondition, InvalidArgument, NotFound, ResourceExhausted
from cairn.services.worker.driver import Driver
from cairn.services.worker.engine_config import EngineConfig
from cairn.services.worker.kv_cache import KVCache, block_bytes
from cairn.services.worker.model_runner import ModelRunner
from cairn.services.worker.step import NewSequence, ScheduledSeq, StepInput


@pytest.fixture
def runner(checkpoint) -> ModelRunner:
    return make_runner(checkpoint("llama-gqa").path, block_size=4, num_blocks=32)


def introduce(runner: ModelRunner, seq_id: int, length: int, blocks: list[int]) -> StepInput:
    (prompt,) = prompts(seed=seq_id, lengths=(length,))
    runner.step(StepInput(new_seqs=[NewSequence(seq_id, prompt, length, greedy())]))
    return StepInput(scheduled=[ScheduledSeq(seq_id, 0, length, blocks)])


@pytest.mark.parametrize(
    ("scheduled", "error", "message"),
    [
        (ScheduledSeq(9, 0, 1), NotFound, "sequence 9 is unknown"),
        (ScheduledSeq(1, 0, 11, [0, 1, 2]), InvalidArgument, "does not have"),
        (ScheduledSeq(1, 0, 10, [0, 1]), InvalidArgument, "too few blocks"),
        (ScheduledSeq(1, 0, 10, [0, 1, 32]), InvalidArgument, r"new_block_ids must be in \[0, 32\)"),
        (ScheduledSeq(1, 0, 6, [0, 1]), InvalidArgument, "samples before the end"),
        (ScheduledSeq(1, -1, 2, [0]), InvalidArgument, "negative"),
        (ScheduledSeq(1, 0, 0, [0]), InvalidArgument, "num_scheduled_tokens"),
    ],
)
def test_unexecutable_steps_are_refused(runner, scheduled, error, message) -> None:
    introduce(runner, 1, 10, [])
    with pytest.raises(error, match=message):
        runner.step(StepInput(scheduled=[scheduled]))
    # Nothing was applied: the valid step still runs.
    (output,) = runner.step(introduce(runner, 1, 10, [0, 1, 2])).outputs
    assert output.seq_id == 1 and len(output.tokens) == 1


def test_batch_level_limits_are_enforced(checkpoint) -> None:
    runner = make_runner(checkpoint("llama-gqa").path, block_size=4, num_blocks=64, max_num_seqs=2)
    blocks = BlockAllocator()
    steps = [introduce(runner, s, 6, blocks.take(2)) for s in range(3)]
    scheduled = [s for step in steps for s in step.scheduled]
    with pytest.raises(InvalidArgument, match="max_num_seqs is 2"):
        runner.step(StepInput(scheduled=scheduled))
    with pytest.raises(InvalidArgument, match="scheduled twice"):
        runner.step(StepInput(scheduled=[scheduled[0], scheduled[0]]))
    big = make_runner(checkpoint("llama-gqa").path, block_size=4, num_blocks=64, max_num_batched_tokens=16)
    with pytest.raises(InvalidArgument, match="max_num_batched_tokens is 16"):
        big.step(introduce(big, 0, 17, blocks.take(5)))


def test_new_sequences_are_validated(runner) -> None:
    with pytest.raises(InvalidArgument, match="outside the vocabulary"):
        runner.step(StepInput(new_seqs=[NewSequence(0, [1, 256], 2, greedy())]))
    with pytest.raises(InvalidArgument, match="max_model_len"):
        runner.step(StepInput(new_seqs=[NewSequence(0, [1] * 513, 513, greedy())]))
    with pytest.raises(NotFound, match="sequence 7"):
        runner.step(StepInput(new_seqs=[NewSequence(0, [1, 2], 2, greedy(), parent_seq_id=7)]))
    with pytest.raises(InvalidArgument, match="block_copies"):
        runner.step(StepInput(block_copies=[(0, 32)]))


def test_multi_step_needs_sampled_decodes(runner) -> None:
    step = introduce(runner, 1, 10, [0, 1, 2, 3])
    step.num_steps = 2
    with pytest.raises(InvalidArgument, match="multi-step"):
        runner.step(step)
    step.num_steps = 1
    runner.step(step)
    # Lookahead slots need blocks: positions 10..16 fit 4 blocks, 10..17 do not.
    with pytest.raises(InvalidArgument, match="too few blocks"):
        runner.step(StepInput(scheduled=[ScheduledSeq(1, 10, 1)], num_steps=8))
    (output,) = runner.step(StepInput(scheduled=[ScheduledSeq(1, 10, 1)], num_steps=6)).outputs
    assert len(output.tokens) == 6
    assert runner.table.num_tokens[runner.table.get(1).row] == 17


def test_free_forgets_sequences_and_reintroduction_replaces_state(runner) -> None:
    runner.step(introduce(runner, 1, 10, [0, 1, 2]))
    assert runner.free([1, 2]) == 1
    with pytest.raises(NotFound):
        runner.step(StepInput(scheduled=[ScheduledSeq(1, 10, 1)]))
    runner.step(introduce(runner, 1, 5, [4, 5]))
    row = runner.table.get(1).row
    assert (runner.table.num_tokens[row], runner.table.num_blocks[row]) == (6, 2)
    runner.step(StepInput(finished_seq_ids=[1]))
    assert len(runner.table) == 0


def test_more_live_sequences_than_rows_grow_the_table(runner) -> None:
    blocks = BlockAllocator()
    # The table starts with max_num_seqs (16) rows.
    for seq_id in range(20):
        runner.step(introduce(runner, seq_id, 3, blocks.take(1)))
    assert len(runner.table) == 20
    assert len({runner.table.get(s).row for s in range(20)}) == 20


def test_lifecycle_errors(checkpoint) -> None:
    runner = ModelRunner(EngineConfig(model=str(checkpoint("llama-gqa").path), device="cpu", num_blocks=8))
    with pytest.raises(FailedPrecondition):
        runner.profile_and_allocate_kv_cache()
    runner.load()
    with pytest.raises(FailedPrecondition):
        runner.step(StepInput())
    with pytest.raises(FailedPrecondition):
        runner.load()


def test_cpu_cache_is_sized_from_cpu_kv_cache_gb(checkpoint) -> None:
    runner = make_runner(checkpoint("llama-gqa").path, block_size=16, num_blocks=None, cpu_kv_cache_gb=0.001)
    per_block = block_bytes(runner.model_config, 16, torch.float32)
    assert per_block == 2 * 2 * 16 * 2 * 16 * 4
    assert runner.num_blocks == int(0.001 * 2**30) // per_block
    assert runner.kv_cache_bytes == runner.num_blocks * per_block


def test_block_copies_cover_every_layer_k_and_v(checkpoint) -> None:
    runner = make_runner(checkpoint("llama-gqa").path, num_blocks=6)
    cache: KVCache = runner.kv_cache
    cache.storage.normal_()
    before = cache.storage.clone()
    cache.copy_blocks([(1, 4), (2, 5)])
    assert all(k.shape == v.shape == (6, 5, 2, 16) for k, v in cache.layers)
    torch.testing.assert_close(cache.storage[:, :, 4:6], before[:, :, 1:3], atol=0, rtol=0)
    torch.testing.assert_close(cache.storage[:, :, :4], before[:, :, :4], atol=0, rtol=0)


def test_driver_waves_and_multi_step_agree(checkpoint) -> None:
    runner = make_runner(
        checkpoint("llama-3.2").path, num_blocks=128, max_num_seqs=3, max_num_batched_tokens=24
    )
    batch = prompts(seed=30, lengths=(7, 13, 29, 41, 5))
    single = Driver(runner).generate(batch, greedy(max_tokens=9))
    assert [len(t) for t in single] == [9] * 5
    assert Driver(runner).generate(batch, greedy(max_tokens=9), num_steps=4) == single
    assert len(runner.table) == 0
    with pytest.raises(ResourceExhausted, match="KV blocks"):
        Driver(runner).generate(batch[:3], greedy(max_tokens=400))
