"""Fixtures every suite shares.

The tiny model (`cairn.tiny`) is the only model tests have: no hub is
reachable. It is built once per session and per set of arguments; the
directories are shared, so treat them as read-only (copy one before changing
its files).
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch

# Without CUDA the Triton kernels run under the interpreter on CPU tensors. The
# flag is read when a kernel is decorated, i.e. at the first import of
# cairn.kernels.triton_ops, which any suite may trigger: set it before all of them.
# DeepSpeed (trainer extra) would otherwise print an accelerator warning to
# stdout whenever transformers saves a model on a CPU-only host.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")
    os.environ.setdefault("DS_ACCELERATOR", "cpu")

TinyModelFactory = Callable[..., Path]


@pytest.fixture(scope="session")
def tiny_model_factory(tmp_path_factory: pytest.TempPathFactory) -> TinyModelFactory:
    """`factory(arch="llama", **overrides)` returns the directory of a tiny model.

    `overrides` are `cairn.tiny.build.build_tiny_model` keywords (vocab_size,
    hidden_size, dtype, seed, rope_scaling, max_shard_size, ...). Equal
    arguments return the same directory.
    """
    from cairn.tiny.build import build_tiny_model

    built: dict[str, Path] = {}

    def factory(arch: str = "llama", **overrides: Any) -> Path:
        key = json.dumps({"architecture": arch, **overrides}, sort_keys=True)
        if key not in built:
            out = tmp_path_factory.mktemp(f"tiny-{arch}")
            built[key] = build_tiny_model(out, architecture=arch, **overrides)
        return built[key]

    return factory


@pytest.fixture(scope="session")
def tiny_model_dir(tiny_model_factory: TinyModelFactory) -> Path:
    """The default tiny model: Llama architecture, float32, 2 layers, 2048-token vocabulary."""
    return tiny_model_factory()


@pytest.fixture(scope="session")
def ray_local() -> Any:
    """A local Ray instance for the whole session (2 CPUs, no dashboard).

    Ray takes seconds to start, so suites share one; tests must kill the
    actors they create.
    """
    import ray

    ray.init(num_cpus=4, include_dashboard=False, log_to_driver=False, configure_logging=False)
    yield ray
    ray.shutdown()


# The reference workload's interface, for bench smoke runs: the real module (../shared/bench/workload.py)
# lives outside the repository, so a fresh clone may not have it.
_REFERENCE_WORKLOAD = """
import torch


def reference_workload(n=512, seed=0, vocab=32000, output_len=256):
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(4, 40, (n,), generator=g).tolist()
    return [torch.randint(10, vocab - 10, (k,), generator=g).tolist() for k in lengths], output_len
"""


@pytest.fixture(scope="session")
def reference_workload_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("workload") / "workload.py"
    path.write_text(_REFERENCE_WORKLOAD)
    return path
