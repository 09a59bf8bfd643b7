"""The pure-torch references against HF transformers and naive dense attention.

The references are the oracle for the Triton kernels, so they are pinned here
to independent implementations: HF's LlamaRMSNorm, rotary embedding, rope
init functions and eager attention on contiguous K/V.
"""

from __future__ import annotations

import types

import pytest
import torch
import torch.nn.functional as F
from transformers import LlamaConfig
from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS
from transformers.models.llama.modeling_llama import (
    LlamaRMSNorm,
    LlamaRotaryEmbedding,
    apply_rotary_pos_emb,
    eager_attention_forward,
)

from cairn.common.errors import InvalidArgument
from cairn.kernels import build_rope_cache, reference
from cairn.kernels.rope_cache import rope_inv_freq

HEAD_DIM = 16
LLAMA3 = {
    "rope_type": "llama3",
    "factor": 8.0,
    "low_freq_factor": 1.0,
    "high_freq_factor": 4.0,
    "original_max_position_embeddings": 64,
}
ROPE_SCALINGS = [None, {"rope_type": "default"}, {"type": "linear", "factor": 4.0}, LLAMA3]


def _llama_config(rope_scaling: dict | None, theta: float = 500000.0) -> LlamaConfig:
    return LlamaConfig(
        hidden_size=4 * HEAD_DIM,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
        rope_theta=theta,
        rope_scaling=rope_scaling,
    )


def hf_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float) -> torch.Tensor:
    """HF eager causal attention for q at the last q.shape[0] positions of contiguous k, v (float64)."""
    n_queries, n_heads, _ = q.shape
    n_keys, n_kv_heads, _ = k.shape
    visible = torch.ones(n_queries, n_keys, dtype=torch.bool).tril(diagonal=n_keys - n_queries)
    mask = torch.zeros(n_queries, n_keys, dtype=torch.float64).masked_fill(~visible, float("-inf"))
    module = types.SimpleNamespace(num_key_value_groups=n_heads // n_kv_heads, training=False)
    out, _ = eager_attention_forward(
        module,
        q.double().transpose(0, 1)[None],
        k.double().transpose(0, 1)[None],
        v.double().transpose(0, 1)[None],
        mask[None, None],
        scaling=scale,
    )
    return out[0]


@pytest.mark.parametrize("rope_scaling", ROPE_SCALINGS[2:])
def test_inv_freq_matches_hf_rope_init_functions(rope_scaling: dict) -> None:
    config = _llama_config(rope_scaling)
    hf_type = rope_scaling.get("rope_type", rope_scaling.get("type"))
    hf_inv_freq, _ = ROPE_INIT_FUNCTIONS[hf_type](config, torch.device("cpu"))
    assert torch.equal(rope_inv_freq(HEAD_DIM, 500000.0, rope_scaling), hf_inv_freq)


@pytest.mark.parametrize("rope_scaling", ROPE_SCALINGS)
def test_rope_cache_matches_hf_rotary_embedding(rope_scaling: dict | None) -> None:
    max_position = 300
    cache = build_rope_cache(HEAD_DIM, max_position, 500000.0, rope_scaling, "cpu")
    cos, sin = LlamaRotaryEmbedding(_llama_config(rope_scaling))(
        torch.zeros(1), torch.arange(max_position)[None]
    )
    half = HEAD_DIM // 2
    assert cache.shape == (max_position, HEAD_DIM)
    torch.testing.assert_close(cache[:, :half], cos[0, :, :half], rtol=0, atol=1e-6)
    torch.testing.assert_close(cache[:, half:], sin[0, :, :half], rtol=0, atol=1e-6)


def test_llama3_scaling_changes_low_frequencies_only() -> None:
    plain = rope_inv_freq(HEAD_DIM, 500000.0, None)
    scaled = rope_inv_freq(HEAD_DIM, 500000.0, LLAMA3)
    assert torch.equal(scaled[0], plain[0])
    torch.testing.assert_close(scaled[-1], plain[-1] / LLAMA3["factor"])


def test_unknown_rope_type_is_rejected() -> None:
    with pytest.raises(InvalidArgument, match="yarn"):
        build_rope_cache(HEAD_DIM, 8, 10000.0, {"rope_type": "yarn", "factor": 2.0}, "cpu")


def test_rope_cache_dtype_and_device() -> None:
    cache = build_rope_cache(HEAD_DIM, 8, 10000.0, None, torch.device("cpu"), dtype=torch.bfloat16)
    assert cache.dtype == torch.bfloat16
    assert cache.device.type == "cpu"


def test_apply_rotary_matches_hf() -> None:
    gen = torch.Generator().manual_seed(1)
    n_tokens, max_position = 11, 200
    q = torch.randn(n_tokens, 4, HEAD_DIM, generator=gen)
    k = torch.randn(n_tokens, 2, HEAD_DIM, generator=gen)
    positions = torch.randint(0, max_position, (n_tokens,), generator=gen)
    cache = build_rope_cache(HEAD_DIM, max_position, 500000.0, LLAMA3, "cpu")
    cos, sin = LlamaRotaryEmbedding(_llama_config(LLAMA3))(q, positions[None])
    hf_q, hf_k = apply_rotary_pos_emb(q.transpose(0, 1)[None], k.transpose(0, 1)[None], cos, sin)
    out_q, out_k = reference.apply_rotary(q, k, positions, cache)
    torch.testing.assert_close(out_q, hf_q[0].transpose(0, 1), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(out_k, hf_k[0].transpose(0, 1), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_rms_norm_matches_hf_llama_rms_norm(dtype: torch.dtype) -> None:
    gen = torch.Generator().manual_seed(2)
    hidden = 48
    norm = LlamaRMSNorm(hidden, eps=1e-5).to(dtype)
    with torch.no_grad():
        norm.weight.copy_(torch.randn(hidden, generator=gen))
    x = torch.randn(3, 5, hidden, generator=gen).to(dtype)
    residual = torch.randn(3, 5, hidden, generator=gen).to(dtype)
    with torch.no_grad():
        assert torch.equal(reference.rms_norm(x, norm.weight, 1e-5), norm(x))
        out, summed = reference.rms_norm(x, norm.weight, 1e-5, residual)
        assert torch.equal(summed, x + residual)
        assert torch.equal(out, norm(x + residual))


def test_silu_and_mul_matches_gated_mlp() -> None:
    x = torch.randn(2, 3, 2 * 20)
    torch.testing.assert_close(reference.silu_and_mul(x), F.silu(x[..., :20]) * x[..., 20:], rtol=0, atol=0)
    assert reference.silu_and_mul(x).shape == (2, 3, 20)


def test_write_kv_cache_places_slots_and_skips_padding() -> None:
    n_blocks, block_size, n_kv_heads = 4, 3, 2
    k_cache = torch.zeros(n_blocks, block_size, n_kv_heads, HEAD_DIM)
    v_cache = torch.zeros_like(k_cache)
    k = torch.randn(4, n_kv_heads, HEAD_DIM)
    v = torch.randn(4, n_kv_heads, HEAD_DIM)
    reference.write_kv_cache(k, v, k_cache, v_cache, torch.tensor([7, -1, 0, 11]))
    assert torch.equal(k_cache[2, 1], k[0])
    assert torch.equal(v_cache[0, 0], v[2])
    assert torch.equal(k_cache[3, 2], k[3])
    # Slot -1 (padding) wrote nothing: exactly three slots are non-zero.
    assert int((k_cache.abs().sum(dim=(2, 3)) > 0).sum()) == 3


def test_rotary_and_cache_is_biased_projection_rotated_and_stored() -> None:
    gen = torch.Generator().manual_seed(3)
    n_tokens, n_heads, n_kv_heads, block_size = 4, 4, 2, 3
    widths = (n_heads * HEAD_DIM, n_kv_heads * HEAD_DIM, n_kv_heads * HEAD_DIM)
    qkv = torch.randn(n_tokens, sum(widths), generator=gen)
    bias = torch.randn(sum(widths), generator=gen)
    positions = torch.tensor([5, 0, 17, 3], dtype=torch.int32)
    slots = torch.tensor([7, -1, 0, 11], dtype=torch.int32)
    cache = build_rope_cache(HEAD_DIM, 32, 10000.0, None, "cpu")
    k_cache = torch.zeros(4, block_size, n_kv_heads, HEAD_DIM)
    v_cache = torch.zeros_like(k_cache)
    q = reference.rotary_and_cache(qkv, positions, cache, k_cache, v_cache, slots, bias)
    q_part, k_part, v_part = (qkv + bias).split(widths, dim=1)
    q_heads, k_heads = q_part.view(n_tokens, n_heads, HEAD_DIM), k_part.view(n_tokens, n_kv_heads, HEAD_DIM)
    expected_q, expected_k = reference.apply_rotary(q_heads, k_heads, positions, cache)
    assert torch.equal(q, expected_q)
    # Token t lands in slot slots[t] = block * block_size + offset; token 1 (slot -1) nowhere.
    for token, (block, offset) in ((0, (2, 1)), (2, (0, 0)), (3, (3, 2))):
        assert torch.equal(k_cache[block, offset], expected_k[token])
        assert torch.equal(v_cache[block, offset], v_part[token].view(n_kv_heads, HEAD_DIM))
    assert int((k_cache.abs().sum(dim=(2, 3)) > 0).sum()) == 3


@pytest.mark.parametrize(("n_heads", "n_kv_heads"), [(4, 2), (4, 1), (6, 2)])
@pytest.mark.parametrize("block_size", [5, 16])
def test_decode_reference_matches_hf_attention(paged_context, n_heads: int, n_kv_heads: int, block_size: int):
    context_lens = [37, 1, 0, 48, 16]
    ctx = paged_context(context_lens, n_kv_heads, HEAD_DIM, block_size, torch.float32, "cpu", seed=3)
    q = torch.randn(len(context_lens), n_heads, HEAD_DIM, generator=torch.Generator().manual_seed(4))
    out = reference.paged_decode_attention(q, ctx.k_cache, ctx.v_cache, ctx.block_tables, ctx.seq_lens, 0.3)
    assert out.shape == q.shape
    for seq, length in enumerate(context_lens):
        if length == 0:
            assert torch.equal(out[seq], torch.zeros_like(out[seq]))
            continue
        expected = hf_attention(q[seq : seq + 1], ctx.keys[seq], ctx.values[seq], 0.3)[0]
        torch.testing.assert_close(out[seq], expected.float(), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(("n_heads", "n_kv_heads"), [(4, 2), (4, 1)])
def test_prefill_reference_matches_hf_causal_attention(paged_context, n_heads: int, n_kv_heads: int) -> None:
    # (cached prefix, new queries) per sequence.
    chunks = [(0, 23), (30, 9), (12, 1), (7, 0)]
    context_lens = [prefix + n for prefix, n in chunks]
    ctx = paged_context(context_lens, n_kv_heads, HEAD_DIM, 5, torch.float32, "cpu", seed=5)
    gen = torch.Generator().manual_seed(6)
    # Queries for every context position: HF attends the whole sequence causally,
    # the kernel gets only the chunk's queries and must match HF's last rows.
    full_q = [torch.randn(length, n_heads, HEAD_DIM, generator=gen) for length in context_lens]
    q = torch.cat([fq[fq.shape[0] - n :] for fq, (_, n) in zip(full_q, chunks, strict=True)])
    query_start_loc = torch.tensor([0] + [n for _, n in chunks], dtype=torch.int32).cumsum(0).int()
    out = reference.prefill_attention(
        q, ctx.k_cache, ctx.v_cache, ctx.block_tables, query_start_loc, ctx.seq_lens, 0.25
    )
    for seq, (_, n) in enumerate(chunks):
        if n == 0:
            continue
        full = hf_attention(full_q[seq], ctx.keys[seq], ctx.values[seq], 0.25)
        start = int(query_start_loc[seq])
        torch.testing.assert_close(out[start : start + n], full[-n:].float(), rtol=1e-5, atol=1e-5)
