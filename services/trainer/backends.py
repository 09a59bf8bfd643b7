"""How gradients become updates: plain PyTorch (DDP across ranks) or a DeepSpeed ZeRO engine.

Both expose the same calls to the loop: `micro_batch(last)` around each
micro-batch's forward and backward, `backward(loss)`, `step(lr)` at the
optimizer boundary, checkpoint save/load (collective), and the weights to
publish. The loss arrives already normalized for the whole step, so neither
backend rescales it for accumulation.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Protocol

import torch

from .distributed import Dist
from .plan import TrainPlan

_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}
_STATE_FILE = "trainer_state.pt"
_DS_TAG = "zero"


class Backend(Protocol):
    module: Any

    def forward(self, **inputs: torch.Tensor) -> Any: ...

    def micro_batch(self, last: bool) -> contextlib.AbstractContextManager[None]: ...

    def backward(self, loss: torch.Tensor) -> None: ...

    def step(self, lr: float) -> float | None: ...

    def train(self, mode: bool) -> None: ...

    def save(self, directory: Path, extra: dict[str, Any]) -> None: ...

    def load(self, directory: Path) -> dict[str, Any]: ...

    def state_for_publishing(self) -> dict[str, torch.Tensor] | None: ...


def _param_groups(module: Any, weight_decay: float) -> list[dict[str, Any]]:
    """Decay matrices only: biases and norm weights (1-D) keep their scale."""
    decay, keep = [], []
    for param in module.parameters():
        if param.requires_grad:
            (decay if param.ndim >= 2 else keep).append(param)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": keep, "weight_decay": 0.0}]


class PlainBackend:
    def __init__(self, module: Any, plan: TrainPlan, dist: Dist, precision: str) -> None:
        self.module = module
        self.dist = dist
        self.max_grad_norm = plan.max_grad_norm
        self._autocast = _DTYPES.get(precision)
        self.model = module
        if dist.world_size > 1:
            from torch.nn.parallel import DistributedDataParallel

            device_ids = [dist.device.index] if dist.device.type == "cuda" else None
            self.model = DistributedDataParallel(module, device_ids=device_ids)
        self.params = [p for p in module.parameters() if p.requires_grad]
        fused = dist.device.type == "cuda" and all(p.dtype == torch.float32 for p in self.params)
        self.optimizer = torch.optim.AdamW(
            _param_groups(module, plan.weight_decay), lr=plan.learning_rate, fused=fused or None
        )
        self.scaler = torch.amp.GradScaler(dist.device.type, enabled=precision == "fp16")

    def forward(self, **inputs: torch.Tensor) -> Any:
        with torch.autocast(self.dist.device.type, dtype=self._autocast, enabled=self._autocast is not None):
            return self.model(**inputs, use_cache=False)

    @contextlib.contextmanager
    def micro_batch(self, last: bool) -> Iterator[None]:
        # DDP syncs gradients in the backward of forwards run outside no_sync: only the last one.
        if last or self.model is self.module:
            yield
        else:
            with self.model.no_sync():
                yield

    def backward(self, loss: torch.Tensor) -> None:
        self.scaler.scale(loss).backward()

    def step(self, lr: float) -> float | None:
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        self.scaler.unscale_(self.optimizer)
        norm = None
        if self.max_grad_norm > 0:
            norm = float(torch.nn.utils.clip_grad_norm_(self.params, self.max_grad_norm))
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.optimizer.zero_grad(set_to_none=True)
        return norm

    def train(self, mode: bool) -> None:
        self.module.train(mode)

    def save(self, directory: Path, extra: dict[str, Any]) -> None:
        if not self.dist.is_main:
            return
        trainable = {n: p.detach().cpu() for n, p in self.module.named_parameters() if p.requires_grad}
        state = {
            "trainable": trainable,
            "optimizer": self.optimizer.state_dict(),
            "scaler": self.scaler.state_dict(),
            "extra": extra,
        }
        torch.save(state, directory / _STATE_FILE)

    def load(self, directory: Path) -> dict[str, Any]:
        state = torch.load(directory / _STATE_FILE, map_location="cpu", weights_only=False)
        params = dict(self.module.named_parameters())
        missing = [n for n, p in params.items() if p.requires_grad and n not in state["trainable"]]
        if missing:
            raise ValueError(f"checkpoint {directory} lacks trainable weights, e.g. {missing[0]}")
        with torch.no_grad():
            for name, value in state["trainable"].items():
                params[name].copy_(value)
        self.optimizer.load_state_dict(state["optimizer"])
        self.scaler.load_state_dict(state["scaler"])
        return state["extra"]

    def state_for_publishing(self) -> dict[str, torch.Tensor] | None:
        return None


class DeepSpeedBackend:
    def __init__(self, module: Any, plan: TrainPlan, dist: Dist, precision: str) -> None:
        import deepspeed

        self.dist = dist
        self.stage = plan.zero_stage
        self._adapter = plan.adapter is not None
        zero: dict[str, Any] = {"stage": plan.zero_stage, "stage3_gather_16bit_weights_on_model_save": True}
        pin = dist.device.type == "cuda"
        if plan.zero_offload:
            zero["offload_optimizer"] = {"device": "cpu", "pin_memory": pin}
            if plan.zero_stage == 3:
                zero["offload_param"] = {"device": "cpu", "pin_memory": pin}
        config: dict[str, Any] = {
            "train_micro_batch_size_per_gpu": plan.micro_batch_size,
            "gradient_accumulation_steps": plan.gradient_accumulation_steps,
            "train_batch_size": plan.micro_batch_size * plan.gradient_accumulation_steps * dist.world_size,
            "zero_optimization": zero,
            "bf16": {"enabled": precision == "bf16"},
            "fp16": {"enabled": precision == "fp16"},
            "gradient_clipping": plan.max_grad_norm,
            "zero_allow_untested_optimizer": True,
            # Our torch AdamW with an offloaded optimizer instead of DeepSpeed's JIT-compiled CPU Adam.
            "zero_force_ds_cpu_optimizer": False,
            "steps_per_print": 2**31 - 1,
        }
        groups = _param_groups(module, plan.weight_decay)
        if plan.zero_offload and dist.device.type == "cuda":
            from deepspeed.ops.adam import DeepSpeedCPUAdam

            optimizer: Any = DeepSpeedCPUAdam(groups, lr=plan.learning_rate, adamw_mode=True)
        else:
            optimizer = torch.optim.AdamW(groups, lr=plan.learning_rate)
        self.engine, self.optimizer, _, _ = deepspeed.initialize(
            model=module, optimizer=optimizer, config=config, dist_init_required=False
        )
        self.module = self.engine.module
        self._last = True

    def forward(self, **inputs: torch.Tensor) -> Any:
        return self.engine(**inputs, use_cache=False)

    @contextlib.contextmanager
    def micro_batch(self, last: bool) -> Iterator[None]:
        self._last = last
        yield

    def backward(self, loss: torch.Tensor) -> None:
        self.engine.backward(loss, scale_wrt_gas=False)
        if not self._last:
            # DeepSpeed counts micro-steps itself; it only updates at the accumulation boundary.
            self.engine.step()

    def step(self, lr: float) -> float | None:
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        self.engine.step()
        norm = self.engine.get_global_grad_norm()
        return float(norm) if norm is not None else None

    def train(self, mode: bool) -> None:
        self.engine.train(mode)

    def save(self, directory: Path, extra: dict[str, Any]) -> None:
        self.engine.save_checkpoint(
            str(directory),
            tag=_DS_TAG,
            client_state={"extra": extra},
            exclude_frozen_parameters=self._adapter,
        )

    def load(self, directory: Path) -> dict[str, Any]:
        path, client = self.engine.load_checkpoint(str(directory), tag=_DS_TAG, load_module_strict=False)
        if path is None:
            raise ValueError(f"checkpoint {directory} holds no DeepSpeed state")
        return client["extra"]

    def state_for_publishing(self) -> dict[str, torch.Tensor] | None:
        """ZeRO-3 shards parameters: gather them (collective) into a full state on rank 0."""
        if self.stage != 3:
            return None
        return self.engine._zero3_consolidated_16bit_state_dict()


def make_backend(module: Any, plan: TrainPlan, dist: Dist, precision: str) -> Backend:
    if plan.zero_stage:
        return DeepSpeedBackend(module, plan, dist, precision)
    return PlainBackend(module, plan, dist, precision)
