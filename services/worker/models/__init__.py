"""Model implementations the worker serves, keyed by HF architecture name."""

from cairn.services.worker.models.attention import AttentionMetadata
from cairn.services.worker.models.config import SUPPORTED_ARCHITECTURES, ModelConfig
from cairn.services.worker.models.llama import KVCaches, LlamaForCausalLM

MODEL_CLASSES: dict[str, type[LlamaForCausalLM]] = dict.fromkeys(SUPPORTED_ARCHITECTURES, LlamaForCausalLM)

__all__ = ["MODEL_CLASSES", "AttentionMetadata", "KVCaches", "LlamaForCausalLM", "ModelConfig"]
