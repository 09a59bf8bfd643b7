"""Counts the GPU kernel launches a forward would issue, on the CPU.

Every aten op reaching the dispatcher is one launch, except view and
allocation ops (no device work); `addmm` with a single-row input is two, since
CUDA's addmm takes its bias-epilogue (cublasLt) path only for more than one
row and otherwise copies the bias into the output before the GEMM. Every
Triton launch is one; the aten ops the Triton interpreter runs to emulate the
kernel on the CPU are not counted.
"""

from __future__ import annotations

import contextlib
from collections import Counter
from collections.abc import Iterator
from typing import Any

from torch.utils._python_dispatch import TorchDispatchMode
from triton.runtime.jit import KernelInterface

_FREE = {
    "alias",
    "as_strided",
    "detach",
    "empty",
    "empty_like",
    "empty_strided",
    "expand",
    "lift_fresh",
    "new_empty",
    "permute",
    "select",
    "slice",
    "split",
    "split_with_sizes",
    "squeeze",
    "t",
    "transpose",
    "unbind",
    "unsqueeze",
    "view",
    "_reshape_alias",
    "_unsafe_view",
}


class LaunchCounter(TorchDispatchMode):
    def __init__(self) -> None:
        super().__init__()
        self.launches: Counter[str] = Counter()
        self._in_triton = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if not self._in_triton:
            # Composite ops (linear, reshape, ...) count as the ops they are made of.
            with self:
                decomposed = func.decompose(*args, **kwargs)
            if decomposed is not NotImplemented:
                return decomposed
        name = func.overloadpacket.__name__
        if not self._in_triton and name not in _FREE:
            launches = 2 if name == "addmm" and args[1].shape[0] == 1 else 1
            self.launches[f"aten.{name}"] += launches
        return func(*args, **kwargs)

    @property
    def total(self) -> int:
        return sum(self.launches.values())


@contextlib.contextmanager
def count_launches() -> Iterator[LaunchCounter]:
    """`with count_launches() as counter:` counts the block's launches into `counter.launches`."""
    counter = LaunchCounter()
    original = KernelInterface.__getitem__

    def launcher(kernel: Any, grid: Any) -> Any:
        run = original(kernel, grid)

        def launch(*args: Any, **kwargs: Any) -> Any:
            counter.launches[f"triton.{kernel.__name__}"] += 1
            counter._in_triton += 1
            try:
                return run(*args, **kwargs)
            finally:
                counter._in_triton -= 1

        return launch

    KernelInterface.__getitem__ = launcher
    try:
        with counter:
            yield counter
    finally:
        KernelInterface.__getitem__ = original
