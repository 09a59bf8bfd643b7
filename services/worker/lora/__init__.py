"""Multi-LoRA serving: PEFT adapters in a fixed device pool, applied per token in mixed batches."""

from cairn.services.worker.lora.adapters import LoRAAdapters
from cairn.services.worker.lora.layer import LoRALinear, LoRAMapping, LoRAState
from cairn.services.worker.lora.peft import AdapterWeights, read_adapter
from cairn.services.worker.lora.pool import AdapterPool, LoadedAdapter

__all__ = [
    "AdapterPool",
    "AdapterWeights",
    "LoRAAdapters",
    "LoRALinear",
    "LoRAMapping",
    "LoRAState",
    "LoadedAdapter",
    "read_adapter",
]
