"""The pieces of tensor parallelism that need no process group: how layers and checkpoint
tensors split over ranks (each rank's share built in this process and summed or
concatenated by hand), what a rank reads of a checkpoint, and the configurations refused."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from cairn.common.errors import InvalidArgument
from cairn.services.worker import loader
from cairn.services.worker.convert import engine_config_from_proto, engine_config_to_proto
from cairn.services.worker.distributed import TensorParallel
from cairn.services.worker.engine_config import EngineConfig
from cairn.services.worker.kv_cache import rank_cache_config
from cairn.services.worker.model_runner import ModelRunner
from cairn.services.worker.models import ModelConfig
from cairn.services.worker.models.parallel import (
    ColumnParallelLinear,
    Narrow,
    ParallelLMHead,
    RowParallelLinear,
    check_shardable,
)
from cairn.services.worker.quantization.config import dummy_scheme


def _ranks(size: int) -> list[TensorParallel]:
    # No process group: building a rank's layers and reading its weights need none.
    return [TensorParallel(rank, size) for rank in range(size)]


def _narrowed(full: torch.Tensor, part: Narrow) -> torch.Tensor:
    assert full.shape[part.dim] == part.full
    return full.narrow(part.dim, part.start, part.length)


@pytest.mark.parametrize(("heads", "kv_heads", "size"), [(8, 2, 4), (8, 2, 2), (4, 1, 4), (8, 8, 2)])
def test_each_rank_holds_its_query_heads_and_the_kv_heads_they_read(
    heads: int, kv_heads: int, size: int
) -> None:
    """The ranks hold every query head once, and the KV head a rank's attention pairs with each
    of its query heads (local query head i reads local KV head i // group) is the one the model
    pairs it with: query head h reads KV head h // (heads / kv_heads)."""
    head_dim = 4
    sizes = (heads * head_dim, kv_heads * head_dim, kv_heads * head_dim)
    replicas = max(1, size // kv_heads)
    held = []
    for tp in _ranks(size):
        layer = ColumnParallelLinear(16, sizes, tp, replicas=(1, replicas, replicas))
        q, k, v = (layer.checkpoint_part("weight", part) for part in range(3))
        assert (q.length + k.length + v.length, 16) == tuple(layer.weight.shape)
        assert k == v
        q_first, kv_first = q.start // head_dim, k.start // head_dim
        local_heads, local_kv = q.length // head_dim, k.length // head_dim
        for i in range(local_heads):
            reads = kv_first + i // (local_heads // local_kv)
            assert reads == (q_first + i) // (heads // kv_heads)
            held.append(q_first + i)
    assert sorted(held) == list(range(heads))


@pytest.mark.parametrize("size", [2, 4])
def test_row_parallel_partial_sums_add_up_with_the_bias_once(size: int) -> None:
    full = torch.nn.Linear(32, 8, bias=True)
    x = torch.randn(5, 32)
    total = torch.zeros(5, 8)
    for tp in _ranks(size):
        layer = RowParallelLinear(32, 8, tp, bias=True)
        assert layer.checkpoint_part("bias", 0) is None
        with torch.no_grad():
            layer.weight.copy_(_narrowed(full.weight, layer.checkpoint_part("weight", 0)))
            layer.bias.copy_(full.bias)
        total += layer(x[:, tp.rank * (32 // size) : (tp.rank + 1) * (32 // size)])
    torch.testing.assert_close(total, full(x))


def test_lm_head_rows_cover_a_padded_vocabulary_once() -> None:
    vocab, size = 10, 4
    parts = [ParallelLMHead(8, vocab, tp).checkpoint_part("weight", 0) for tp in _ranks(size)]
    assert [(p.start, p.length, p.full) for p in parts] == [(0, 3, 10), (3, 3, 10), (6, 3, 10), (9, 3, 10)]


def _config(**overrides: int) -> ModelConfig:
    hf = {
        "architectures": ["LlamaForCausalLM"],
        "vocab_size": 100,
        "hidden_size": 48,
        "intermediate_size": 96,
        "num_hidden_layers": 1,
        "num_attention_heads": 6,
        "num_key_value_heads": 3,
    }
    return ModelConfig.from_hf(hf | overrides)


def test_a_layout_that_does_not_split_is_refused() -> None:
    check_shardable(_config(), 3)
    check_shardable(_config(num_key_value_heads=1), 2)
    for config, size, what in [
        (_config(), 4, "6 attention heads"),
        (_config(), 2, "3 KV heads"),
        (_config(intermediate_size=100), 3, "MLP of 100"),
    ]:
        with pytest.raises(InvalidArgument, match=what):
            check_shardable(config, size)


def test_a_rank_reads_only_its_slices_of_the_checkpoint(
    tiny_model_factory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every split tensor comes through a safetensors slice of the rank's part (never the whole
    tensor), and lands where that rank's layer expects it."""
    model_dir = tiny_model_factory(num_heads=4, num_kv_heads=1, vocab_size=1027)
    config = ModelConfig.from_dir(model_dir)
    whole_reads: list[str] = []

    class Recording:
        def __init__(self, *args, **kwargs) -> None:
            self.file = safe_open(*args, **kwargs)

        def __enter__(self):
            self.shard = self.file.__enter__()
            return self

        def __exit__(self, *exc):
            return self.file.__exit__(*exc)

        def keys(self):
            return self.shard.keys()

        def get_slice(self, name):
            return self.shard.get_slice(name)

        def get_tensor(self, name):
            whole_reads.append(name)
            return self.shard.get_tensor(name)

    monkeypatch.setattr(loader, "safe_open", Recording)
    tp = TensorParallel(rank=1, size=2)
    model = loader.load_model(model_dir, config, torch.device("cpu"), torch.float32, 64, tp=tp)
    assert whole_reads and all(name.endswith("norm.weight") for name in whole_reads)

    with safe_open(model_dir / "model.safetensors", framework="pt") as shard:
        full = {name: shard.get_tensor(name) for name in shard.keys()}  # noqa: SIM118
    attention = model.model.layers[0].self_attn
    q, k, v = attention.qkv_proj.weight.split(attention.shard_sizes())
    head_dim = config.head_dim
    torch.testing.assert_close(q, full["model.layers.0.self_attn.q_proj.weight"][2 * head_dim : 4 * head_dim])
    # One KV head for two ranks: both hold all of it.
    torch.testing.assert_close(k, full["model.layers.0.self_attn.k_proj.weight"])
    torch.testing.assert_close(v, full["model.layers.0.self_attn.v_proj.weight"])
    o_proj = full["model.layers.0.self_attn.o_proj.weight"]
    torch.testing.assert_close(attention.o_proj.weight, o_proj[:, 2 * head_dim : 4 * head_dim])
    # Rows 514..1027 of the vocabulary, one row of padding after the last.
    embed = model.model.embed_tokens.weight
    assert embed.shape[0] == 514
    torch.testing.assert_close(embed[:513], full["model.embed_tokens.weight"][514:])
    assert not embed[513:].any()


def test_read_part_checks_the_full_size_and_pads(tmp_path: Path) -> None:
    path = tmp_path / "t.safetensors"
    save_file({"w": torch.arange(12.0).view(6, 2)}, path)
    with safe_open(path, framework="pt") as shard:
        assert loader.read_part(shard, "w", Narrow(0, 4, 3, 6)).tolist() == [[8, 9], [10, 11], [0, 0]]
        assert loader.read_part(shard, "w", Narrow(1, 1, 1, 2)).flatten().tolist() == [1, 3, 5, 7, 9, 11]
        with pytest.raises(InvalidArgument, match="expected 8 along dim 0"):
            loader.read_part(shard, "w", Narrow(0, 0, 4, 8))


def test_weight_quantized_models_are_served_on_one_device(tiny_model_dir: Path) -> None:
    config = ModelConfig.from_dir(tiny_model_dir)
    with pytest.raises(InvalidArgument, match="tensor_parallel_size 2"):
        loader.build_model(
            config, torch.device("cpu"), torch.float32, 64, dummy_scheme("w8a16"), TensorParallel(0, 2)
        )


def test_runner_needs_a_group_of_its_size_and_no_lora(tiny_model_dir: Path) -> None:
    config = EngineConfig(model=str(tiny_model_dir), device="cpu", tensor_parallel_size=2)
    with pytest.raises(InvalidArgument, match="group of that many ranks"):
        ModelRunner(config)
    lora = EngineConfig(model=str(tiny_model_dir), device="cpu", tensor_parallel_size=2, max_loras=2)
    with pytest.raises(InvalidArgument, match="LoRA"):
        ModelRunner(lora, tp=TensorParallel(0, 2))
    with pytest.raises(InvalidArgument, match="tensor_parallel_size must be > 0"):
        EngineConfig(model="m", tensor_parallel_size=0)


def test_tensor_parallel_size_travels_in_the_engine_config() -> None:
    config = EngineConfig(model="/m", tensor_parallel_size=4)
    assert engine_config_from_proto(engine_config_to_proto(config)).tensor_parallel_size == 4
    assert (
        engine_config_from_proto(engine_config_to_proto(EngineConfig(model="/m"))).tensor_parallel_size == 1
    )


def test_a_rank_caches_its_kv_heads(tiny_model_dir: Path) -> None:
    config = ModelConfig.from_dir(tiny_model_dir)
    assert json.loads((tiny_model_dir / "config.json").read_text())["num_key_value_heads"] == 2
    assert [rank_cache_config(config, size).num_kv_heads for size in (1, 2, 4)] == [2, 1, 1]


def test_one_rank_collectives_hand_back_their_input() -> None:
    tp = TensorParallel()
    x = torch.randn(2, 3)
    assert tp.all_reduce(x) is x and tp.all_gather(x) is x and tp.broadcast(x) is x
    assert tp.min(7) == 7
