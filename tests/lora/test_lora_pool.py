"""The adapter pool: slots, LRU eviction of adapters no sequence holds, pinning, and the errors
a bad adapter or a bad request gets."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
import torch
from lora_helpers import hf_logits, make_runner
from runner_probes import recorded_logits
from safetensors.torch import load_file, save_file

from cairn.common.errors import FailedPrecondition, InvalidArgument, NotFound
from cairn.services.worker.lora import AdapterPool, LoadedAdapter, read_adapter
from cairn.services.worker.sampling_params import SamplingParams
from cairn.services.worker.step import NewSequence, ScheduledSeq, StepInput

GREEDY = SamplingParams(temperature=0.0, max_tokens=64)
PROMPT = [5, 300, 42, 1999, 7, 64, 128]


def _adapter(name: str, slot: int) -> LoadedAdapter:
    return LoadedAdapter(name, f"/adapters/{name}", 4, ("q_proj",), "base", slot)


def test_pool_fills_free_slots_then_evicts_least_recently_used() -> None:
    pool = AdapterPool(2)
    for name in ("a", "b"):
        slot, evicted = pool.slot_for(name, held=set())
        assert evicted is None
        pool.put(_adapter(name, slot))
    assert [a.slot for a in pool.adapters] == [0, 1]
    pool.get("a")  # b is now the least recently used
    slot, evicted = pool.slot_for("c", held=set())
    assert (slot, evicted.name) == (1, "b")
    pool.put(_adapter("c", slot))
    assert "b" not in pool and len(pool) == 2
    # a is least recently used but held by a sequence: c goes instead.
    slot, evicted = pool.slot_for("d", held={0})
    assert (slot, evicted.name) == (1, "c")
    with pytest.raises(FailedPrecondition, match="max_loras"):
        pool.slot_for("d", held={0, 1})
    with pytest.raises(NotFound, match="'zzz' is not loaded"):
        pool.get("zzz")


def test_pool_reload_and_remove_respect_holders() -> None:
    pool = AdapterPool(2)
    pool.put(_adapter("a", 0))
    assert pool.slot_for("a", held=set()) == (0, _adapter("a", 0))
    with pytest.raises(FailedPrecondition, match="in use"):
        pool.slot_for("a", held={0})
    with pytest.raises(FailedPrecondition, match="in use"):
        pool.remove("a", held={0})
    assert pool.remove("a", held=set()) == _adapter("a", 0)
    assert pool.remove("a", held=set()) is None


def test_read_adapter_folds_scaling_and_patterns(peft_adapters) -> None:
    qv = read_adapter(peft_adapters["qv"][0])
    assert qv.target_modules == ("q_proj", "v_proj", "up_proj")
    assert qv.rank == 6  # rank_pattern gives v_proj rank 6
    peft_model = peft_adapters["qv"][1]
    q = peft_model.base_model.model.model.layers[1].self_attn.q_proj
    a, b = qv.weights[(1, "q_proj")]
    torch.testing.assert_close(a, q.lora_A["default"].weight)
    # alpha_pattern gives q_proj alpha 3 at rank 2.
    torch.testing.assert_close(b, q.lora_B["default"].weight * 1.5)
    mlp = read_adapter(peft_adapters["mlp"][0])
    down = peft_adapters["mlp"][1].base_model.model.model.layers[0].mlp.down_proj
    torch.testing.assert_close(mlp.weights[(0, "down_proj")][1], down.lora_B["default"].weight * 16 / 8**0.5)


@pytest.fixture(scope="module")
def runner(tiny_model_dir: Path):
    return make_runner(tiny_model_dir, max_loras=2)


@pytest.fixture(autouse=True)
def _empty_pool(runner):
    yield
    runner.free(list(runner.table.seqs))
    for adapter in runner.adapters:
        runner.unload_adapter(adapter.name)


def _prefill(runner, seq_id: int, adapter: str = "") -> torch.Tensor:
    step = StepInput(
        new_seqs=[NewSequence(seq_id, PROMPT, len(PROMPT), GREEDY, adapter=adapter)],
        scheduled=[ScheduledSeq(seq_id, 0, len(PROMPT), list(range(seq_id * 4, seq_id * 4 + 4)))],
    )
    with recorded_logits(runner) as seen:
        runner.step(step)
    return seen[0][0]


def test_runner_evicts_lru_and_keeps_held_adapters(runner, peft_adapters, hf_base) -> None:
    attn, mlp, qv = (peft_adapters[n][0] for n in ("attn", "mlp", "qv"))
    assert runner.load_adapter("attn", attn).slot == 0
    assert runner.load_adapter("mlp", mlp).slot == 1
    _prefill(runner, 1, "attn")  # attn is held from now on, and the most recently used
    loaded = runner.load_adapter("qv", qv)
    assert loaded.slot == 1 and [a.name for a in runner.adapters] == ["attn", "qv"]
    with pytest.raises(NotFound, match="'mlp' is not loaded"):
        _prefill(runner, 2, "mlp")
    _prefill(runner, 3, "qv")
    with pytest.raises(FailedPrecondition, match="held by live sequences"):
        runner.load_adapter("mlp", mlp)
    with pytest.raises(FailedPrecondition, match="in use"):
        runner.unload_adapter("qv")
    runner.free([3])
    assert runner.load_adapter("mlp", mlp).slot == 1
    # The slot now holds mlp, whose outputs are mlp's and not what qv left there.
    expected = hf_logits(peft_adapters["mlp"][1], PROMPT)[-1]
    torch.testing.assert_close(_prefill(runner, 4, "mlp"), expected, rtol=1e-4, atol=1e-4)


def test_unloaded_slot_adds_nothing(runner, peft_adapters, hf_base) -> None:
    runner.load_adapter("attn", peft_adapters["attn"][0])
    assert runner.unload_adapter("attn") is True
    assert runner.unload_adapter("attn") is False
    assert runner.adapters == []
    torch.testing.assert_close(_prefill(runner, 1), hf_logits(hf_base, PROMPT)[-1], rtol=1e-4, atol=1e-4)


def test_reloading_a_name_replaces_its_weights(runner, peft_adapters) -> None:
    runner.load_adapter("x", peft_adapters["attn"][0])
    runner.load_adapter("x", peft_adapters["mlp"][0])
    assert [(a.name, a.rank, a.slot) for a in runner.adapters] == [("x", 8, 0)]
    expected = hf_logits(peft_adapters["mlp"][1], PROMPT)[-1]
    torch.testing.assert_close(_prefill(runner, 1, "x"), expected, rtol=1e-4, atol=1e-4)


def test_fork_must_keep_its_parents_adapter(runner, peft_adapters) -> None:
    runner.load_adapter("attn", peft_adapters["attn"][0])
    _prefill(runner, 1, "attn")
    fork = NewSequence(2, PROMPT, len(PROMPT), GREEDY, parent_seq_id=1)
    with pytest.raises(InvalidArgument, match="parent's adapter"):
        runner.step(StepInput(new_seqs=[fork]))


def _rewrite(directory: Path, config: dict | None = None, tensors: dict | None = None) -> Path:
    if config is not None:
        path = directory / "adapter_config.json"
        path.write_text(json.dumps(json.loads(path.read_text()) | config))
    if tensors is not None:
        save_file(tensors, directory / "adapter_model.safetensors")
    return directory


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda d: _rewrite(d, {"target_modules": ["q_proj", "lm_head"]}), r"\['lm_head'\] cannot be served"),
        (lambda d: _rewrite(d, {"use_dora": True}), "DoRA"),
        (lambda d: _rewrite(d, {"modules_to_save": ["lm_head"]}), "modules_to_save"),
        (lambda d: _rewrite(d, {"peft_type": "PREFIX_TUNING"}), "only LORA"),
        (lambda d: _rewrite(d, {"r": 5}), "configured rank is 5"),
        (lambda d: (d / "adapter_config.json").write_text("{not json"), "not valid JSON"),
        (lambda d: (d / "adapter_config.json").unlink(), "no adapter_config.json"),
        (lambda d: (d / "adapter_model.safetensors").unlink(), "no adapter_model.safetensors"),
        (lambda d: (d / "adapter_model.safetensors").write_bytes(b"\x10\x00garbage"), "not a readable"),
    ],
    ids=["lm-head", "dora", "to-save", "prefix", "rank", "json", "no-config", "no-weights", "corrupt"],
)
def test_bad_adapters_are_invalid_argument(runner, adapter_copy, change, message: str) -> None:
    directory = adapter_copy("attn")
    change(directory)
    with pytest.raises(InvalidArgument, match=message):
        runner.load_adapter("bad", directory)
    assert runner.adapters == []


def test_adapter_of_another_base_is_invalid_argument(runner, adapter_copy) -> None:
    directory = adapter_copy("attn")
    tensors = load_file(directory / "adapter_model.safetensors")
    key = next(k for k in tensors if k.endswith("layers.0.self_attn.o_proj.lora_A.weight"))
    tensors[key] = torch.randn(4, 32)
    _rewrite(directory, tensors=tensors)
    with pytest.raises(InvalidArgument, match="different base model"):
        runner.load_adapter("other", directory)
    # A layer the served model does not have.
    deeper = adapter_copy("qv")
    tensors = load_file(deeper / "adapter_model.safetensors")
    for key in [k for k in tensors if ".layers.1." in k]:
        tensors[key.replace(".layers.1.", ".layers.7.")] = tensors[key].clone()
    _rewrite(deeper, tensors=tensors)
    with pytest.raises(InvalidArgument, match="layer 7, but the served model has 2 layers"):
        runner.load_adapter("deeper", deeper)


def test_rank_above_max_lora_rank_is_invalid_argument(runner, peft_adapters) -> None:
    with pytest.raises(InvalidArgument, match="rank 16, above this worker's max_lora_rank 8"):
        runner.load_adapter("wide", peft_adapters["wide"][0])


def test_other_base_name_with_fitting_shapes_only_warns(runner, adapter_copy, caplog) -> None:
    directory = _rewrite(adapter_copy("attn"), {"base_model_name_or_path": "someone/else"})
    with caplog.at_level(logging.WARNING):
        runner.load_adapter("renamed", directory)
    assert "trained on someone/else" in caplog.text
    assert runner.adapters[0].base_model == "someone/else"


def test_missing_directory_is_not_found(runner, tmp_path: Path) -> None:
    with pytest.raises(NotFound):
        runner.load_adapter("gone", tmp_path / "nothing")


def test_unknown_adapter_in_a_sequence_is_not_found(runner) -> None:
    with pytest.raises(NotFound, match="'ghost'"):
        _prefill(runner, 1, "ghost")


def test_lora_disabled(tiny_model_dir: Path, peft_adapters) -> None:
    runner = make_runner(tiny_model_dir, max_loras=0, num_blocks=32)
    assert runner.adapters == [] and runner.lora is None
    with pytest.raises(FailedPrecondition, match="LoRA is disabled"):
        runner.load_adapter("attn", peft_adapters["attn"][0])
    with pytest.raises(FailedPrecondition, match="LoRA is disabled"):
        _prefill(runner, 1, "attn")


def test_multi_step_decode_with_adapters_equals_single_steps(runner, peft_adapters) -> None:
    runner.load_adapter("attn", peft_adapters["attn"][0])
    runner.load_adapter("qv", peft_adapters["qv"][0])
    adapters = ["attn", "", "qv"]

    def generate(num_steps: int, first_id: int) -> list[list[int]]:
        ids = {first_id + i: name for i, name in enumerate(adapters)}
        # 8 blocks of 4 tokens: the prompt and every token generated.
        blocks = {sid: list(range(i * 8, i * 8 + 8)) for i, sid in enumerate(ids)}
        out = runner.step(
            StepInput(
                new_seqs=[NewSequence(s, PROMPT, len(PROMPT), GREEDY, adapter=a) for s, a in ids.items()],
                scheduled=[ScheduledSeq(s, 0, len(PROMPT), blocks[s]) for s in ids],
            )
        )
        tokens = {o.seq_id: [o.tokens[0].token_id] for o in out.outputs}
        for k in range(0, 6, num_steps):
            scheduled = [ScheduledSeq(s, len(PROMPT) + k, 1) for s in ids]
            out = runner.step(StepInput(scheduled=scheduled, num_steps=num_steps))
            for o in out.outputs:
                tokens[o.seq_id] += [t.token_id for t in o.tokens]
        runner.free(list(ids))
        return [tokens[s] for s in ids]

    single = generate(1, 10)
    assert single == generate(3, 20)
    assert len({tuple(t) for t in single}) == 3
