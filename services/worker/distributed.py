"""The ranks of one tensor-parallel worker replica and the collectives its model needs.

A replica spread over `size` devices runs one process per rank, joined by two
process groups:

- the device group carries the model's collectives: one all-reduce after each
  attention and each MLP block, the vocabulary-parallel embedding's
  all-reduce, the logits' all-gather, and rank 0's sampled tokens. NCCL on
  CUDA, XCCL on XPU, gloo on the CPU;
- the control group (gloo, host memory) carries what rank 0 tells the other
  ranks: the calls it received from the scheduler (see `group.py`).

At size 1 every collective hands back its input untouched and no process group
exists, so a single-device worker pays nothing for any of this.
"""

from __future__ import annotations

import datetime
import socket
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist

from cairn.common.errors import InvalidArgument

_DEVICE_BACKENDS = {"cpu": "gloo", "cuda": "nccl", "xpu": "xccl"}
# Every rank must have joined by then (a rank that died on its way fails the others).
RENDEZVOUS_TIMEOUT = datetime.timedelta(minutes=5)
# Followers wait on the control group for rank 0's next call however long the
# replica sits idle; a dead peer still fails them at once (its socket closes).
CONTROL_TIMEOUT = datetime.timedelta(days=365)
# A device collective that has not completed by then has a dead or hung peer.
DEVICE_TIMEOUT = datetime.timedelta(minutes=10)


@dataclass(frozen=True, eq=False)
class TensorParallel:
    """This process's rank among `size`; the default is a replica of one device."""

    rank: int = 0
    size: int = 1
    device_group: Any = None
    control_group: Any = None

    @property
    def is_leader(self) -> bool:
        return self.rank == 0

    def all_reduce(self, x: torch.Tensor) -> torch.Tensor:
        """The sum of `x` over the ranks, in place."""
        if self.size > 1:
            dist.all_reduce(x, group=self.device_group)
        return x

    def all_gather(self, x: torch.Tensor) -> torch.Tensor:
        """Every rank's `x` side by side along the last dimension, in rank order."""
        if self.size == 1:
            return x
        gathered = x.new_empty((self.size * x.shape[0], *x.shape[1:]))
        dist.all_gather_into_tensor(gathered, x.contiguous(), group=self.device_group)
        return gathered.view(self.size, *x.shape).movedim(0, -2).reshape(*x.shape[:-1], -1)

    def broadcast(self, x: torch.Tensor) -> torch.Tensor:
        """Rank 0's `x` on every rank, in place (the others pass a tensor of its shape and dtype)."""
        if self.size > 1:
            dist.broadcast(x, src=0, group=self.device_group)
        return x

    def broadcast_object(self, obj: Any = None) -> Any:
        """Rank 0's picklable `obj` on every rank, through host memory."""
        box = [obj]
        dist.broadcast_object_list(box, src=0, group=self.control_group)
        return box[0]

    def min(self, value: int) -> int:
        """The smallest `value` over the ranks (e.g. KV blocks every rank has room for)."""
        if self.size == 1:
            return value
        tensor = torch.tensor([value], dtype=torch.int64)
        dist.all_reduce(tensor, op=dist.ReduceOp.MIN, group=self.control_group)
        return int(tensor.item())


def init_tensor_parallel(rank: int, size: int, init_method: str, device: torch.device) -> TensorParallel:
    """Joins rank `rank` of `size` at `init_method` ("tcp://host:port" of rank 0), every rank
    calling at once; `device` is this rank's. Size 1 needs no process group."""
    if not 0 <= rank < size:
        raise InvalidArgument(f"rank must be in [0, {size}), got {rank}")
    if size == 1:
        return TensorParallel()
    backend = _DEVICE_BACKENDS.get(device.type)
    if backend is None:
        raise InvalidArgument(f"tensor parallelism runs on {sorted(_DEVICE_BACKENDS)}, not {device.type}")
    if device.type != "cpu":
        torch.get_device_module(device).set_device(device)
    dist.init_process_group(
        "gloo", init_method=init_method, rank=rank, world_size=size, timeout=RENDEZVOUS_TIMEOUT
    )
    control = dist.new_group(backend="gloo", timeout=CONTROL_TIMEOUT)
    device_group = dist.new_group(backend=backend, timeout=DEVICE_TIMEOUT)
    tp = TensorParallel(rank, size, device_group, control)
    # NCCL sets up its communicator on the first collective, which must not be inside a graph capture.
    tp.all_reduce(torch.zeros(1, device=device))
    return tp


def close_tensor_parallel(tp: TensorParallel) -> None:
    if tp.size > 1 and dist.is_initialized():
        dist.destroy_process_group()


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port on `host` that nothing listens on now (for rank 0's rendezvous)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]
