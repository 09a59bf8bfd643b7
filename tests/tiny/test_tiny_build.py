"""The tiny model is a genuine HF checkpoint: transformers loads and runs every architecture."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer, GenerationConfig

from cairn.common.errors import AlreadyExists, InvalidArgument
from cairn.tiny.build import build_tiny_model

ARCH_CLASSES = {"llama": "LlamaForCausalLM", "qwen2": "Qwen2ForCausalLM", "mistral": "MistralForCausalLM"}


def _digests(model_dir: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(model_dir.iterdir())}


def _weights(model_dir: Path) -> dict[str, torch.Tensor]:
    tensors: dict[str, torch.Tensor] = {}
    for shard in sorted(model_dir.glob("*.safetensors")):
        tensors.update(load_file(shard))
    return tensors


@pytest.fixture(scope="module", params=sorted(ARCH_CLASSES))
def arch_dir(request: pytest.FixtureRequest, tiny_model_factory) -> tuple[str, Path]:
    return request.param, tiny_model_factory(request.param)


def test_directory_has_the_hf_layout(tiny_model_dir: Path) -> None:
    names = {p.name for p in tiny_model_dir.iterdir()}
    assert names == {
        "config.json",
        "generation_config.json",
        "model.safetensors",
        "tokenizer.json",
        "tokenizer_config.json",
        "special_tokens_map.json",
    }


def test_transformers_loads_and_runs_each_architecture(arch_dir: tuple[str, Path]) -> None:
    arch, model_dir = arch_dir
    model = AutoModelForCausalLM.from_pretrained(model_dir).eval()
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    assert type(model).__name__ == ARCH_CLASSES[arch]

    batch = tokenizer(
        ["The scheduler reads the next batch.", "你好世界 👍"], padding=True, return_tensors="pt"
    )
    with torch.no_grad():
        out = model(**batch, labels=batch.input_ids.masked_fill(batch.attention_mask == 0, -100))
    assert out.logits.shape == (2, batch.input_ids.shape[1], model.config.vocab_size)
    assert torch.isfinite(out.logits).all()
    assert torch.isfinite(out.loss) and out.loss > 0

    generated = model.generate(**batch, max_new_tokens=4, do_sample=False)
    assert generated.shape == (2, batch.input_ids.shape[1] + 4)


def test_config_shape_and_family_defaults(arch_dir: tuple[str, Path]) -> None:
    arch, model_dir = arch_dir
    raw = json.loads((model_dir / "config.json").read_text())
    config = AutoConfig.from_pretrained(model_dir)
    assert raw["architectures"] == [ARCH_CLASSES[arch]]
    assert (config.hidden_size, config.num_hidden_layers, config.intermediate_size) == (64, 2, 128)
    assert (config.num_attention_heads, config.num_key_value_heads) == (4, 2)
    assert config.vocab_size == 2048 and config.max_position_embeddings == 2048
    expected_theta = 500_000.0 if arch == "llama" else 1_000_000.0
    assert config.rope_parameters["rope_theta"] == raw["rope_theta"] == expected_theta
    assert config.tie_word_embeddings is (arch == "qwen2")
    assert raw["torch_dtype"] == raw["dtype"] == "float32"


def test_token_ids_agree_across_files(tiny_model_dir: Path) -> None:
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    config = AutoConfig.from_pretrained(tiny_model_dir)
    generation = GenerationConfig.from_pretrained(tiny_model_dir)
    eot, end_of_text = tokenizer.convert_tokens_to_ids(["<|eot_id|>", "<|end_of_text|>"])
    assert config.bos_token_id == generation.bos_token_id == tokenizer.bos_token_id
    assert config.pad_token_id == generation.pad_token_id == tokenizer.pad_token_id
    assert tokenizer.eos_token_id == eot
    assert sorted(generation.eos_token_id) == sorted(config.eos_token_id) == sorted([eot, end_of_text])


def test_every_parameter_is_random(tiny_model_factory) -> None:
    # HF's default init leaves norms at 1 and biases at 0; engines are tested
    # against this model, so those must carry information too.
    weights = _weights(tiny_model_factory("qwen2"))
    assert "lm_head.weight" not in weights  # tied to the embedding
    norms = [t for name, t in weights.items() if name.endswith("norm.weight")]
    biases = [t for name, t in weights.items() if name.endswith(".bias")]
    assert len(norms) == 5 and len(biases) == 6
    assert all(not torch.allclose(t, torch.ones_like(t)) for t in norms)
    assert all(t.abs().max() > 0 for t in biases)
    embed = weights["model.embed_tokens.weight"]
    assert 0.5 < embed.std() * embed.shape[1] ** 0.5 < 2.0


def test_llama_and_mistral_do_not_share_weights(tiny_model_factory) -> None:
    llama = _weights(tiny_model_factory("llama"))
    mistral = _weights(tiny_model_factory("mistral"))
    assert llama.keys() == mistral.keys()
    assert not torch.equal(llama["model.embed_tokens.weight"], mistral["model.embed_tokens.weight"])


def test_same_arguments_give_byte_identical_files(tiny_model_dir: Path, tmp_path: Path) -> None:
    again = build_tiny_model(tmp_path / "again")
    assert _digests(again) == _digests(tiny_model_dir)


def test_seed_changes_weights_not_tokenizer(tiny_model_dir: Path, tiny_model_factory) -> None:
    other = tiny_model_factory(seed=1)
    assert (other / "tokenizer.json").read_bytes() == (tiny_model_dir / "tokenizer.json").read_bytes()
    assert (other / "model.safetensors").read_bytes() != (tiny_model_dir / "model.safetensors").read_bytes()


def test_bfloat16_build_is_the_float32_build_rounded(tiny_model_dir: Path, tiny_model_factory) -> None:
    bf16_dir = tiny_model_factory(dtype="bfloat16")
    assert AutoModelForCausalLM.from_pretrained(bf16_dir).dtype == torch.bfloat16
    fp32, bf16 = _weights(tiny_model_dir), _weights(bf16_dir)
    assert fp32.keys() == bf16.keys()
    for name, tensor in bf16.items():
        assert tensor.dtype == torch.bfloat16
        assert torch.equal(tensor, fp32[name].to(torch.bfloat16)), name


def test_sharded_build_holds_the_same_weights(tiny_model_dir: Path, tiny_model_factory) -> None:
    sharded = tiny_model_factory(max_shard_size="200KB")
    index = json.loads((sharded / "model.safetensors.index.json").read_text())
    shards = sorted(p.name for p in sharded.glob("*.safetensors"))
    assert len(shards) > 1 and sorted(set(index["weight_map"].values())) == shards
    expected = _weights(tiny_model_dir)
    actual = _weights(sharded)
    assert actual.keys() == expected.keys()
    assert all(torch.equal(actual[name], expected[name]) for name in expected)
    model = AutoModelForCausalLM.from_pretrained(sharded)
    assert torch.equal(model.lm_head.weight, expected["lm_head.weight"])


def test_llama3_rope_scaling_reaches_the_config(tiny_model_factory) -> None:
    scaling = {
        "rope_type": "llama3",
        "factor": 8.0,
        "low_freq_factor": 1.0,
        "high_freq_factor": 4.0,
        "original_max_position_embeddings": 256,
    }
    model_dir = tiny_model_factory(rope_scaling=scaling)
    raw = json.loads((model_dir / "config.json").read_text())
    assert raw["rope_scaling"] == scaling
    model = AutoModelForCausalLM.from_pretrained(model_dir)
    assert model.config.rope_parameters == {**scaling, "rope_theta": 500_000.0}
    ids = torch.arange(6, 600).unsqueeze(0)
    with torch.no_grad():
        assert torch.isfinite(model(ids).logits).all()


def test_mistral_sliding_window(tiny_model_factory) -> None:
    config = AutoConfig.from_pretrained(tiny_model_factory("mistral", sliding_window=64))
    assert config.sliding_window == 64


def test_larger_vocab_than_the_corpus_supports_pads_the_embedding(tiny_model_factory) -> None:
    model_dir = tiny_model_factory(vocab_size=16384)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    assert 4096 < len(tokenizer) < 16384
    assert AutoConfig.from_pretrained(model_dir).vocab_size == 16384


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"architecture": "gpt2"}, "unknown architecture"),
        ({"dtype": "float8"}, "unknown dtype"),
        ({"vocab_size": 100}, "too small"),
        ({"num_heads": 4, "num_kv_heads": 3}, "not a multiple"),
        ({"hidden_size": 66}, "not divisible"),
        ({"sliding_window": 16}, "only supported"),
    ],
)
def test_bad_arguments_are_invalid(tmp_path: Path, kwargs: dict, message: str) -> None:
    with pytest.raises(InvalidArgument, match=message):
        build_tiny_model(tmp_path / "model", **kwargs)
    assert list(tmp_path.iterdir()) == []


def test_refuses_a_non_empty_directory(tmp_path: Path) -> None:
    (tmp_path / "keep.txt").write_text("mine")
    with pytest.raises(AlreadyExists, match="not an empty directory"):
        build_tiny_model(tmp_path)
    assert [p.name for p in tmp_path.iterdir()] == ["keep.txt"]


def test_builds_into_an_empty_directory(tmp_path: Path, tiny_model_dir: Path) -> None:
    target = tmp_path / "empty"
    target.mkdir()
    assert build_tiny_model(target) == target
    assert _digests(target) == _digests(tiny_model_dir)
    assert [p.name for p in tmp_path.iterdir()] == ["empty"]


def test_failed_build_leaves_nothing_behind(tmp_path: Path) -> None:
    # A negative size passes the builder's own checks and fails only when
    # torch creates the layers, after the staging directory exists.
    with pytest.raises(RuntimeError, match="negative dimension"):
        build_tiny_model(tmp_path / "model", intermediate_size=-1)
    assert list(tmp_path.iterdir()) == []
