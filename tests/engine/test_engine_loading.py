"""Loading HF directories: sharded checkpoints, config parsing, and clear errors for what is unsupported."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from engine_helpers import VARIANTS, build_hf_model, greedy, hf_logits, make_runner, prompts
from runner_probes import recorded_logits
from safetensors.torch import load_file, save_file

from cairn.common.errors import InvalidArgument, NotFound
from cairn.services.worker.driver import Driver
from cairn.services.worker.loader import checkpoint_files, resolve_model_path
from cairn.services.worker.models import ModelConfig
from cairn.services.worker.step import NewSequence, ScheduledSeq, StepInput


def prefill_logits(path: Path, prompt: list[int], **overrides) -> torch.Tensor:
    runner = make_runner(path, **overrides)
    step = StepInput(
        new_seqs=[NewSequence(0, prompt, len(prompt), greedy())],
        scheduled=[ScheduledSeq(0, 0, len(prompt), list(range(-(-len(prompt) // 5))))],
    )
    with recorded_logits(runner) as logits:
        runner.step(step)
    return logits[0][0]


def test_sharded_checkpoint_gives_the_same_logits(tmp_path: Path) -> None:
    model_class, config = VARIANTS["llama-3.2"]
    hf = build_hf_model(model_class, config, seed=21)
    hf.save_pretrained(tmp_path / "single")
    hf.save_pretrained(tmp_path / "sharded", max_shard_size="40KB")
    shards = checkpoint_files(tmp_path / "sharded")
    assert len(shards) > 2
    assert (tmp_path / "sharded" / "model.safetensors.index.json").is_file()
    (prompt,) = prompts(seed=22, lengths=(19,))
    sharded = prefill_logits(tmp_path / "sharded", prompt)
    torch.testing.assert_close(sharded, prefill_logits(tmp_path / "single", prompt), atol=0, rtol=0)
    torch.testing.assert_close(sharded, hf_logits(hf, prompt)[-1], atol=1e-4, rtol=0)


def test_tied_embeddings_share_one_tensor(checkpoint) -> None:
    runner = make_runner(checkpoint("qwen2").path)
    model = runner.model
    assert model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr()
    untied = make_runner(checkpoint("llama-gqa").path).model
    assert untied.lm_head.weight.data_ptr() != untied.model.embed_tokens.weight.data_ptr()


@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
def test_weights_are_cast_to_the_requested_dtype(checkpoint, dtype: str) -> None:
    runner = make_runner(checkpoint("mistral").path, dtype=dtype)
    assert {p.dtype for p in runner.model.parameters()} == {getattr(torch, dtype)}
    assert runner.kv_cache.storage.dtype == getattr(torch, dtype)
    (prompt,) = prompts(seed=23, lengths=(11,))
    logits = prefill_logits(checkpoint("mistral").path, prompt, dtype=dtype)
    reference = hf_logits(checkpoint("mistral").hf, prompt)[-1]
    torch.testing.assert_close(logits, reference, atol=5e-2, rtol=0)


def copy_checkpoint(source: Path, target: Path) -> Path:
    shutil.copytree(source, target)
    return target


def test_unsupported_architecture_names_the_supported_ones(checkpoint, tmp_path: Path) -> None:
    path = copy_checkpoint(checkpoint("llama-gqa").path, tmp_path / "gpt2")
    config = json.loads((path / "config.json").read_text())
    config["architectures"] = ["GPT2LMHeadModel"]
    (path / "config.json").write_text(json.dumps(config))
    with pytest.raises(InvalidArgument, match=r"GPT2LMHeadModel.*LlamaForCausalLM.*Qwen2ForCausalLM"):
        make_runner(path)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (
            {"rope_parameters": {"rope_type": "yarn", "factor": 4.0, "rope_theta": 1e4}},
            "rope_scaling type 'yarn'",
        ),
        ({"hidden_act": "gelu"}, "hidden_act"),
        ({"num_key_value_heads": 3}, "multiple of kv heads"),
    ],
)
def test_unsupported_config_values_are_rejected(checkpoint, change: dict, message: str) -> None:
    config = json.loads((checkpoint("llama-gqa").path / "config.json").read_text())
    with pytest.raises(InvalidArgument, match=message):
        ModelConfig.from_hf({**config, **change})


def test_transformers_4_style_config_parses() -> None:
    config = ModelConfig.from_hf(
        {
            "architectures": ["LlamaForCausalLM"],
            "vocab_size": 128256,
            "hidden_size": 4096,
            "intermediate_size": 14336,
            "num_hidden_layers": 32,
            "num_attention_heads": 32,
            "num_key_value_heads": 8,
            "max_position_embeddings": 131072,
            "rope_theta": 500000.0,
            "rope_scaling": {
                "type": "llama3",
                "factor": 8.0,
                "low_freq_factor": 1.0,
                "high_freq_factor": 4.0,
            },
            "torch_dtype": "bfloat16",
            "eos_token_id": [128001, 128009],
        }
    )
    assert config.head_dim == 128
    assert config.rope_theta == 500000.0
    assert config.rope_scaling == {
        "rope_type": "llama3",
        "factor": 8.0,
        "low_freq_factor": 1.0,
        "high_freq_factor": 4.0,
    }
    assert config.checkpoint_dtype == "bfloat16"
    assert config.eos_token_ids == (128001, 128009)
    assert not config.qkv_bias


def test_sliding_window_caps_the_model_length_only_where_it_applies() -> None:
    base = {"vocab_size": 8, "hidden_size": 8, "intermediate_size": 8, "num_hidden_layers": 1}
    base |= {"num_attention_heads": 2, "max_position_embeddings": 32768, "sliding_window": 4096}
    mistral = ModelConfig.from_hf({**base, "architectures": ["MistralForCausalLM"]})
    assert mistral.max_model_len == 4096
    qwen2 = ModelConfig.from_hf({**base, "architectures": ["Qwen2ForCausalLM"], "use_sliding_window": False})
    assert qwen2.max_model_len == 32768
    assert qwen2.qkv_bias and not qwen2.o_proj_bias


def test_missing_and_unexpected_weights_are_rejected(checkpoint, tmp_path: Path) -> None:
    source = checkpoint("llama-gqa").path
    tensors = load_file(source / "model.safetensors")

    def variant(name: str, changed: dict[str, torch.Tensor]) -> Path:
        path = tmp_path / name
        path.mkdir()
        shutil.copy(source / "config.json", path / "config.json")
        save_file(changed, path / "model.safetensors")
        return path

    missing = {k: v for k, v in tensors.items() if k != "model.layers.1.self_attn.k_proj.weight"}
    with pytest.raises(InvalidArgument, match=r"missing 1 weights.*qkv_proj.weight\[1\]"):
        make_runner(variant("missing", missing))
    with pytest.raises(InvalidArgument, match=r"model\.layers\.0\.extra\.weight matches no parameter"):
        make_runner(variant("unexpected", {**tensors, "model.layers.0.extra.weight": torch.zeros(2)}))
    reshaped = {**tensors, "model.norm.weight": torch.zeros(3)}
    with pytest.raises(InvalidArgument, match=r"model.norm.weight has shape \(3,\)"):
        make_runner(variant("reshaped", reshaped))


def test_resolve_model_path(checkpoint, tmp_path: Path) -> None:
    path = checkpoint("llama-gqa").path
    assert resolve_model_path(str(path)) == path
    with pytest.raises(NotFound, match="does not exist"):
        resolve_model_path(str(tmp_path / "absent"))
    with pytest.raises(InvalidArgument, match=r"no config\.json"):
        make_runner(tmp_path)


def test_dummy_weights_need_only_config_json(checkpoint, tmp_path: Path) -> None:
    shutil.copy(checkpoint("qwen2").path / "config.json", tmp_path / "config.json")
    runner = make_runner(tmp_path, load_format="dummy", seed=3)
    model = runner.model
    assert torch.equal(model.model.norm.weight, torch.ones_like(model.model.norm.weight))
    assert 0.015 < model.model.layers[0].mlp.down_proj.weight.std() < 0.025
    again = make_runner(tmp_path, load_format="dummy", seed=3).model
    torch.testing.assert_close(again.lm_head.weight, model.lm_head.weight, atol=0, rtol=0)
    (tokens,) = Driver(runner).generate(prompts(seed=24, lengths=(6,)), greedy(max_tokens=3))
    assert len(tokens) == 3
