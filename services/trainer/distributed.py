"""This rank's place in the run: device, process group, and the few collectives the loop needs."""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

from cairn.jobs.launcher import free_port


@dataclass(frozen=True)
class Dist:
    rank: int
    world_size: int
    local_rank: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def initialized(self) -> bool:
        return dist.is_available() and dist.is_initialized()

    def sum(self, values: list[float]) -> list[float]:
        """Element-wise sum over ranks."""
        if not self.initialized or self.world_size == 1:
            return list(values)
        tensor = torch.tensor(values, dtype=torch.float64, device=self.device)
        dist.all_reduce(tensor)
        return tensor.tolist()

    def barrier(self) -> None:
        if self.initialized and self.world_size > 1:
            dist.barrier()

    def close(self) -> None:
        if self.initialized:
            dist.destroy_process_group()


def setup(rank: int, world_size: int, local_rank: int, *, deepspeed: bool) -> Dist:
    """Pick the device and join the process group (DeepSpeed needs one even for a single rank)."""
    if torch.cuda.is_available():
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    else:
        device = torch.device("cpu")
    if world_size > 1 or deepspeed:
        os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
        os.environ.setdefault("MASTER_PORT", str(free_port()))
        for name, value in (("RANK", rank), ("WORLD_SIZE", world_size), ("LOCAL_RANK", local_rank)):
            os.environ.setdefault(name, str(value))
        backend = "nccl" if device.type == "cuda" else "gloo"
        if deepspeed:
            import deepspeed as ds

            if device.type == "cpu":
                _skip_cpu_shm_kernel()
            ds.init_distributed(
                dist_backend=backend,
                auto_mpi_discovery=False,
                rank=rank,
                world_size=world_size,
                verbose=False,
            )
        else:
            dist.init_process_group(backend, rank=rank, world_size=world_size)
    return Dist(rank, world_size, local_rank, device)


def _skip_cpu_shm_kernel() -> None:
    """DeepSpeed's CPU accelerator JIT-compiles a shared-memory all-reduce kernel (about 100 s on two
    cores, once per machine) when its process group starts. Only inference all-reduce uses it;
    training collectives go through gloo, so the build is skipped."""
    import deepspeed.ops

    deepspeed.ops.__compatible_ops__["deepspeed_shm_comm"] = False
