"""Llama-family decoder (Llama 2/3.x, Mistral, Qwen2/2.5) over packed, padding-free batches.

Parameter names follow HF's, except that q/k/v and gate/up are fused into
`qkv_proj` and `gate_up_proj` (one GEMM each instead of three and two);
`load_weights` fills the fused matrices from the checkpoint's separate ones.

With a tensor-parallel group of several ranks (`distributed.TensorParallel`)
each rank builds its share of every layer (see `parallel.py`) and holds only
that share of the weights; attention and MLP each end in one all-reduce.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import nn

from cairn import kernels
from cairn.common.errors import InvalidArgument
from cairn.services.worker.distributed import TensorParallel
from cairn.services.worker.models.attention import AttentionMetadata, paged_attention
from cairn.services.worker.models.config import ModelConfig
from cairn.services.worker.models.parallel import (
    ColumnParallelLinear,
    Linear,
    Narrow,
    ParallelLMHead,
    RowParallelLinear,
    VocabParallelEmbedding,
    check_shardable,
    kv_head_replicas,
    kv_heads_per_rank,
)

KVCaches = list[tuple[torch.Tensor, torch.Tensor]]

# checkpoint projection -> (fused parameter, shard index within it)
_FUSED = {
    "q_proj": ("qkv_proj", 0),
    "k_proj": ("qkv_proj", 1),
    "v_proj": ("qkv_proj", 2),
    "gate_proj": ("gate_up_proj", 0),
    "up_proj": ("gate_up_proj", 1),
}
# Fused parameters that are not the fused module's own: (fused module, tensor) -> our parameter.
_FUSED_PARAMETERS = {("qkv_proj", "bias"): "qkv_bias"}
# Checkpoint entries that are not weights (precomputed RoPE tables of old exports).
_IGNORED_SUFFIXES = ("rotary_emb.inv_freq", "rotary_emb.cos_cached", "rotary_emb.sin_cached")


class RMSNorm(nn.Module):
    def __init__(self, size: int, eps: float) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(size))
        self.eps = eps

    def forward(
        self, x: torch.Tensor, residual: torch.Tensor | None = None
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        return kernels.rms_norm(x, self.weight, self.eps, residual)


class LlamaAttention(nn.Module):
    """This rank's attention heads (all of them at one rank) and their KV heads."""

    def __init__(self, config: ModelConfig, tp: TensorParallel) -> None:
        super().__init__()
        self.tp = tp
        self.num_heads = config.num_heads // tp.size
        self.num_kv_heads = kv_heads_per_rank(config.num_kv_heads, tp.size)
        self.head_dim = config.head_dim
        self.q_size = self.num_heads * config.head_dim
        self.kv_size = self.num_kv_heads * config.head_dim
        self.scale = config.head_dim**-0.5
        qkv_size = self.q_size + 2 * self.kv_size
        full_q, full_kv = config.num_heads * config.head_dim, config.num_kv_heads * config.head_dim
        replicas = kv_head_replicas(config.num_kv_heads, tp.size)
        # The q/k/v bias (Qwen2) is added by the rotary kernel, not the GEMM: at one
        # row, cuBLAS has no bias epilogue and would launch a separate bias copy.
        self.qkv_proj = ColumnParallelLinear(
            config.hidden_size, (full_q, full_kv, full_kv), tp, replicas=(1, replicas, replicas)
        )
        self.qkv_bias = nn.Parameter(torch.empty(qkv_size)) if config.qkv_bias else None
        self.o_proj = RowParallelLinear(full_q, config.hidden_size, tp, bias=config.o_proj_bias)

    def shard_sizes(self) -> tuple[int, ...]:
        return (self.q_size, self.kv_size, self.kv_size)

    def forward(
        self,
        qkv: torch.Tensor,
        positions: torch.Tensor,
        rope_cache: torch.Tensor,
        meta: AttentionMetadata,
        kv_cache: tuple[torch.Tensor, torch.Tensor],
    ) -> torch.Tensor:
        """Attention of the packed tokens from their qkv projection (the decoder layer runs
        `qkv_proj`, so that it can fuse the norm before it)."""
        k_cache, v_cache, *kv_scales = kv_cache
        # An INT8/FP8 cache carries its scales; its kernels take them bound.
        ops = kernels.QuantizedKV(*kv_scales) if kv_scales else kernels
        slots = meta.slot_mapping
        q = ops.rotary_and_cache(qkv, positions, rope_cache, k_cache, v_cache, slots, self.qkv_bias)
        out = paged_attention(q, kv_cache, meta, self.scale)
        return self.tp.all_reduce(self.o_proj(out.view(qkv.shape[0], self.q_size)))


class LlamaMLP(nn.Module):
    """This rank's part of the MLP's intermediate features (all of them at one rank)."""

    def __init__(self, config: ModelConfig, tp: TensorParallel) -> None:
        super().__init__()
        self.tp = tp
        size = config.intermediate_size
        self.intermediate_size = size // tp.size
        self.gate_up_proj = ColumnParallelLinear(config.hidden_size, (size, size), tp, bias=config.mlp_bias)
        self.down_proj = RowParallelLinear(size, config.hidden_size, tp, bias=config.mlp_bias)

    def shard_sizes(self) -> tuple[int, ...]:
        return (self.intermediate_size, self.intermediate_size)

    def forward(self, gate_up: torch.Tensor) -> torch.Tensor:
        """down_proj(silu(gate) * up) of the gate/up projection (which the decoder layer runs, so
        that it can fuse the norm before it)."""
        down = self.down_proj
        if _plain(down) and kernels.gemv_applies(gate_up):
            return self.tp.all_reduce(kernels.silu_and_mul_gemv(gate_up, down.weight))
        return self.tp.all_reduce(down(kernels.silu_and_mul(gate_up)))


class LlamaDecoderLayer(nn.Module):
    def __init__(self, config: ModelConfig, tp: TensorParallel) -> None:
        super().__init__()
        self.self_attn = LlamaAttention(config, tp)
        self.mlp = LlamaMLP(config, tp)
        self.input_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.post_attention_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)

    def forward(
        self,
        hidden: torch.Tensor,
        residual: torch.Tensor | None,
        positions: torch.Tensor,
        rope_cache: torch.Tensor,
        meta: AttentionMetadata,
        kv_cache: tuple[torch.Tensor, torch.Tensor],
    ) -> tuple[torch.Tensor, torch.Tensor]:
        attention, mlp = self.self_attn, self.mlp
        qkv, residual = norm_then_linear(self.input_layernorm, attention.qkv_proj, hidden, residual)
        hidden = attention(qkv, positions, rope_cache, meta, kv_cache)
        post_norm = self.post_attention_layernorm
        gate_up, residual = norm_then_linear(post_norm, mlp.gate_up_proj, hidden, residual)
        return mlp(gate_up), residual


def norm_then_linear(
    norm: RMSNorm, linear: nn.Module, x: torch.Tensor, residual: torch.Tensor | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """(linear(norm(x + residual)), x + residual): a sublayer's input projection and the next
    residual (x itself when there is no residual yet, before the first layer). The residual add
    is fused into the norm, and a decode batch on the Triton GEMV fuses the norm into the GEMV."""
    if _plain(linear) and kernels.gemv_applies(x):
        return kernels.rms_norm_gemv(x, residual, norm.weight, norm.eps, linear.weight)
    if residual is None:
        return linear(norm(x)), x
    normed, residual = norm(x, residual)
    return linear(normed), residual


def _plain(linear: nn.Module) -> bool:
    """A full-precision projection without bias (quantized ones replace `Linear`)."""
    return isinstance(linear, Linear) and linear.bias is None


class LlamaModel(nn.Module):
    def __init__(self, config: ModelConfig, tp: TensorParallel) -> None:
        super().__init__()
        self.embed_tokens = VocabParallelEmbedding(config.vocab_size, config.hidden_size, tp)
        self.layers = nn.ModuleList(LlamaDecoderLayer(config, tp) for _ in range(config.num_layers))
        self.norm = RMSNorm(config.hidden_size, config.rms_norm_eps)

    def forward(
        self,
        input_ids: torch.Tensor,
        positions: torch.Tensor,
        rope_cache: torch.Tensor,
        meta: AttentionMetadata,
        kv_caches: KVCaches,
    ) -> torch.Tensor:
        hidden = self.embed_tokens(input_ids)
        residual = None
        for layer, kv_cache in zip(self.layers, kv_caches, strict=True):
            hidden, residual = layer(hidden, residual, positions, rope_cache, meta, kv_cache)
        hidden, _ = self.norm(hidden, residual)
        return hidden


class LlamaForCausalLM(nn.Module):
    def __init__(self, config: ModelConfig, tp: TensorParallel | None = None) -> None:
        """`tp`: this rank's place in a tensor-parallel group; None is a single device."""
        super().__init__()
        self.tp = tp = tp or TensorParallel()
        check_shardable(config, tp.size)
        self.config = config
        self.model = LlamaModel(config, tp)
        self.lm_head = ParallelLMHead(config.hidden_size, config.vocab_size, tp)
        self.rope_cache = torch.empty(0)
        self.tie_weights()

    def tie_weights(self) -> None:
        if self.config.tie_word_embeddings:
            self.lm_head.weight = self.model.embed_tokens.weight

    def init_rope_cache(self, max_position: int) -> None:
        """fp32 cos/sin table on the weights' device; kept off the state dict (it is derived)."""
        config = self.config
        device = self.lm_head.weight.device
        self.rope_cache = kernels.build_rope_cache(
            config.head_dim, max_position, config.rope_theta, config.rope_scaling, device
        )

    def forward(
        self, input_ids: torch.Tensor, positions: torch.Tensor, meta: AttentionMetadata, kv_caches: KVCaches
    ) -> torch.Tensor:
        """input_ids/positions [T] of a packed batch -> final hidden states [T, hidden]."""
        return self.model(input_ids, positions, self.rope_cache, meta, kv_caches)

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """[N, hidden] -> [N, vocab] in the model's dtype, on every rank: enough for an argmax,
        which a cast cannot change."""
        return self.lm_head(hidden)

    def compute_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """[N, hidden] -> [N, vocab] float32, for only the rows that need logits."""
        return self.logits(hidden).float()

    def load_weights(self, weights: Iterable[tuple[str, torch.Tensor]]) -> None:
        """Copies HF-named tensors into place (casting to the parameter's dtype and
        device), one at a time so at most one checkpoint tensor is in flight. In a
        tensor-parallel group each tensor is this rank's part (`checkpoint_part`).

        Raises InvalidArgument on an unknown name, a shape mismatch or a
        parameter the checkpoint never provides.
        """
        params = dict(self.named_parameters())
        missing = set(self._expected_shards(params))
        for name, tensor in weights:
            if name.endswith(_IGNORED_SUFFIXES) or (
                self.config.tie_word_embeddings and name == "lm_head.weight"
            ):
                continue
            target, shard, dest = self._destination(name, params)
            if tensor.shape != dest.shape:
                raise InvalidArgument(
                    f"checkpoint tensor {name} has shape {tuple(tensor.shape)}, expected {tuple(dest.shape)}"
                )
            dest.copy_(tensor)
            missing.discard((target, shard))
        if missing:
            names = sorted(f"{n}[{s}]" if s is not None else n for n, s in missing)
            raise InvalidArgument(f"checkpoint is missing {len(missing)} weights, e.g. {names[:5]}")

    def checkpoint_part(self, name: str) -> Narrow | None:
        """The part of checkpoint tensor `name` this rank holds, so that a loader reads only that;
        None when it holds all of it (always at one rank), or when `name` is not a parameter."""
        if self.tp.size == 1:
            return None
        parts = name.split(".")
        fused = _FUSED.get(parts[-2]) if len(parts) >= 2 else None
        module_name = ".".join([*parts[:-2], fused[0]] if fused else parts[:-1])
        try:
            module = self.get_submodule(module_name)
        except AttributeError:
            return None
        split = getattr(module, "checkpoint_part", None)
        return None if split is None else split(parts[-1], fused[1] if fused else 0)

    def _destination(
        self, name: str, params: dict[str, nn.Parameter]
    ) -> tuple[str, int | None, torch.Tensor]:
        """(our parameter, shard index or None, the slice of it `name` fills)."""
        parts = name.split(".")
        fused = _FUSED.get(parts[-2]) if len(parts) >= 2 else None
        if fused is None:
            if name not in params:
                raise InvalidArgument(
                    f"checkpoint tensor {name} matches no parameter of {self.config.architecture}"
                )
            return name, None, params[name].data
        fused_name = _FUSED_PARAMETERS.get((fused[0], parts[-1]), f"{fused[0]}.{parts[-1]}")
        target = ".".join([*parts[:-2], fused_name])
        if target not in params:
            raise InvalidArgument(
                f"checkpoint tensor {name} matches no parameter of {self.config.architecture}"
            )
        sizes = self.get_submodule(".".join(parts[:-2])).shard_sizes()
        shard = fused[1]
        return target, shard, params[target].data.narrow(0, sum(sizes[:shard]), sizes[shard])

    def _expected_shards(self, params: dict[str, nn.Parameter]) -> Iterable[tuple[str, int | None]]:
        fused_names = {fused for fused, _ in _FUSED.values()}
        for name in params:
            owner = _fused_owner(name, fused_names)
            if owner is None:
                yield name, None
            else:
                sizes = self.get_submodule(owner).shard_sizes()
                yield from ((name, shard) for shard in range(len(sizes)))


def _fused_owner(name: str, fused_names: set[str]) -> str | None:
    """The module whose shard_sizes() split fused parameter `name`; None if it is not fused."""
    parts = name.split(".")
    if parts[-1] in _FUSED_PARAMETERS.values():
        return ".".join(parts[:-1])
    if len(parts) >= 2 and parts[-2] in fused_names:
        return ".".join(parts[:-2])
    return None
