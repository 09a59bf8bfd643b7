"""The scheduler driving the real worker (ModelRunner on CPU, a small random
Llama): the step contract holds end to end, and preemption, chunked prefill,
prefix caching, forks with copy-on-write and multi-step decode leave every
request's tokens exactly as when it runs with none of them."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from cairn.services.scheduler.block_manager import BlockManager
from cairn.services.scheduler.config import SchedulerConfig
from cairn.services.scheduler.policy import Scheduler
from cairn.services.scheduler.sequence import Request
from cairn.services.worker.engine_config import EngineConfig
from cairn.services.worker.model_runner import ModelRunner
from cairn.services.worker.sampling_params import SamplingParams

BLOCK_SIZE = 4
VOCAB = 256


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=VOCAB,
        hidden_size=64,
        intermediate_size=96,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=256,
        initializer_range=0.05,
        eos_token_id=None,
        bos_token_id=None,
        pad_token_id=None,
    )
    path = tmp_path_factory.mktemp("scheduler-llama")
    LlamaForCausalLM(config).eval().save_pretrained(path)
    return path


def requests() -> list[Request]:
    generator = torch.Generator().manual_seed(1)
    shared = torch.randint(0, VOCAB, (13,), generator=generator).tolist()
    prompts = [shared + torch.randint(0, VOCAB, (n,), generator=generator).tolist() for n in (2, 5, 9)]
    prompts += [torch.randint(0, VOCAB, (n,), generator=generator).tolist() for n in (3, 22)]
    greedy = SamplingParams(temperature=0.0, max_tokens=8)
    made = [Request(f"r{i}", p, greedy) for i, p in enumerate(prompts)]
    # n = 3 forks after the 14-token prompt (a partial tail block, so copy-on-write).
    made.append(Request("forked", prompts[0][:14], SamplingParams(max_tokens=6, seed=11), n=3))
    return made


def generate(model_dir: Path, num_blocks: int, **config: object) -> tuple[dict, Scheduler]:
    engine = EngineConfig(
        model=str(model_dir),
        dtype="float32",
        device="cpu",
        block_size=BLOCK_SIZE,
        num_blocks=num_blocks,
        max_num_seqs=8,
        max_num_batched_tokens=64,
    )
    runner = ModelRunner(engine)
    runner.load()
    runner.profile_and_allocate_kv_cache()
    settings = {
        "block_size": BLOCK_SIZE,
        "max_num_seqs": 8,
        "max_num_batched_tokens": 64,
        "max_model_len": 64,
    }
    scheduler_config = SchedulerConfig(**(settings | config))
    scheduler = Scheduler(scheduler_config, BlockManager(runner.num_blocks, BLOCK_SIZE))
    for request in requests():
        scheduler.add_request(request)
    tokens: dict[tuple[str, int], list[int]] = {}
    while scheduler.has_unfinished_requests():
        step = scheduler.schedule()
        for delta in scheduler.update(step, runner.step(step.input)):
            for sample in delta.samples:
                tokens.setdefault((delta.request_id, sample.index), []).extend(sample.token_ids)
        scheduler.check_invariants()
    final = scheduler.schedule()
    if not final.is_empty:
        scheduler.update(final, runner.step(final.input))
    assert len(runner.table) == 0
    assert scheduler.block_manager.num_free_blocks == scheduler.block_manager.num_blocks
    return tokens, scheduler


def test_the_real_worker_gives_the_same_tokens_under_every_scheduling_feature(model_dir: Path) -> None:
    plain, _ = generate(model_dir, num_blocks=256, enable_prefix_caching=False, enable_chunked_prefill=False)
    assert len(plain) == 8 and all(len(t) == 8 for k, t in plain.items() if k[0] != "forked")
    assert len({tuple(plain[("forked", i)]) for i in range(3)}) == 3

    squeezed, scheduler = generate(model_dir, num_blocks=16, max_num_batched_tokens=8)
    assert scheduler.num_preemptions > 0
    assert scheduler.block_manager.prefix_cache_hit_rate > 0
    assert squeezed == plain

    multi_step, scheduler = generate(model_dir, num_blocks=256, num_scheduler_steps=4)
    assert multi_step == plain
