"""One worker replica over the ranks of a tensor-parallel group: rank 0 takes the calls, the others follow.

Rank 0's `GroupRunner` is what the worker's gRPC servicer (or an in-process
client) drives, in place of a ModelRunner. Every call that changes a runner's
state (open, load, allocate, capture graphs, step, free) is first broadcast
to the other ranks over the control group, one small pickled message, and
then run on rank 0 itself; the other ranks (`follow`) run the same call on
their own runner. Given the same state a call does the same thing on every
rank, so no rank replies and a step costs no round trip beyond that message;
the collectives inside the forward meet rank 0's. Rank 0 also draws the
sampled tokens and hands them over inside the step (`ModelRunner._draw`).

A call that fails with a CairnError (a step the runner refuses, a model that
does not load) fails alike on every rank before any collective, and the group
carries on. Any other failure (a rank died, a device error) leaves the ranks
out of step: the group is broken, each later call raises Unavailable, and the
owner replaces the replica, as the scheduler does for a dead worker.

The ranks start as a Ray placement group under the scheduler (`actor.py`), or
as child processes of this one (`spawn_local_group`: offline use, benchmarks).
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
from collections.abc import Callable
from typing import Any

import torch

from cairn.common.errors import CairnError, InvalidArgument, Unavailable
from cairn.services.worker.distributed import (
    TensorParallel,
    close_tensor_parallel,
    free_port,
    init_tensor_parallel,
)
from cairn.services.worker.engine_config import EngineConfig
from cairn.services.worker.model_runner import ModelRunner
from cairn.services.worker.step import StepInput, StepOutput

log = logging.getLogger(__name__)

_OPEN = "open"
_STOP = "stop"
# The runner methods every rank runs; the rest (facts, reads) are rank 0's alone.
_MIRRORED = frozenset({"load", "profile_and_allocate_kv_cache", "capture_graphs", "step", "free"})


class GroupRunner:
    """Rank 0 of a tensor-parallel replica: a ModelRunner whose calls run on every rank.

    `device_index` is this rank's device when it differs from the config's (Ray
    workers see their group's devices renumbered); `on_close` runs after the
    other ranks were told to stop."""

    def __init__(
        self,
        config: EngineConfig,
        tp: TensorParallel,
        device_index: int | None = None,
        compile_mode: str | None = None,
        on_close: Callable[[], None] | None = None,
    ) -> None:
        if device_index is not None:
            config = dataclasses.replace(config, device_index=device_index)
        self.tp = tp
        self.broken: str | None = None
        self._on_close = on_close
        # Built first: a config the group cannot run is refused before the followers hear of it.
        self.runner = ModelRunner(config, compile_mode, tp)
        self._broadcast(_OPEN, config, compile_mode)

    def load(self) -> None:
        self._on_all_ranks("load")

    def profile_and_allocate_kv_cache(self) -> int:
        return self._on_all_ranks("profile_and_allocate_kv_cache")

    def capture_graphs(self) -> None:
        self._on_all_ranks("capture_graphs")

    def step(self, step: StepInput) -> StepOutput:
        return self._on_all_ranks("step", step)

    def free(self, seq_ids: list[int]) -> int:
        return self._on_all_ranks("free", seq_ids)

    def close(self) -> None:
        """Stops the other ranks and leaves the group."""
        if self.broken is None:
            self._broadcast(_STOP)
        # Captured graphs hold the communicators' collectives: they go before the group does.
        self.runner.graphs = None
        close_tensor_parallel(self.tp)
        self.broken = "closed"
        if self._on_close is not None:
            self._on_close()

    def __getattr__(self, name: str) -> Any:
        # Facts and reads (config, num_blocks, model, ...) are rank 0's runner's.
        if name == "runner":
            raise AttributeError(name)
        return getattr(self.runner, name)

    def _on_all_ranks(self, name: str, *args: Any) -> Any:
        self._broadcast(name, *args)
        try:
            return getattr(self.runner, name)(*args)
        except CairnError:
            raise
        except Exception as err:
            raise self._break(name, err) from err

    def _broadcast(self, name: str, *args: Any) -> None:
        if self.broken is not None:
            raise Unavailable(
                f"the tensor-parallel group is out of service ({self.broken}); replace the replica"
            )
        try:
            self.tp.broadcast_object((name, args))
        except Exception as err:
            raise self._break(name, err) from err

    def _break(self, name: str, err: Exception) -> Unavailable:
        self.broken = f"{name} failed: {err}"
        log.error("tensor-parallel group broken: %s", self.broken)
        return Unavailable(f"a rank of the tensor-parallel group failed during {name}: {err}")


def follow(tp: TensorParallel, device_index: int) -> None:
    """The loop of ranks 1..: runs each call rank 0 broadcasts on this rank's runner (on
    device `device_index`) until rank 0 closes the group. Raises when this rank fails."""
    runner: ModelRunner | None = None
    while True:
        name, args = tp.broadcast_object()
        if name == _STOP:
            return
        if name == _OPEN:
            config, compile_mode = args
            runner = ModelRunner(dataclasses.replace(config, device_index=device_index), compile_mode, tp)
            continue
        if name not in _MIRRORED or runner is None:
            raise RuntimeError(f"rank {tp.rank} got call {name!r} it cannot run")
        try:
            getattr(runner, name)(*args)
        except CairnError as err:
            # Rank 0 refused the same call for the same reason and told its caller.
            log.debug("rank %d: %s refused: %s", tp.rank, name, err)


def open_runner(config: EngineConfig, compile_mode: str | None = None) -> ModelRunner | GroupRunner:
    """The runner for `config` in this process: a ModelRunner, or with tensor_parallel_size > 1
    rank 0 of a group whose other ranks are child processes (`spawn_local_group`)."""
    if config.tensor_parallel_size == 1:
        return ModelRunner(config, compile_mode)
    return spawn_local_group(config, compile_mode)


def spawn_local_group(config: EngineConfig, compile_mode: str | None = None) -> GroupRunner:
    """Rank 0 here, ranks 1.. as child processes (on devices device_index + rank). Close the
    runner to stop them."""
    size = config.tensor_parallel_size
    device = config.torch_device()
    if device.type == "xpu":
        raise InvalidArgument("tensor parallelism runs on CUDA or CPU workers")
    init_method = f"tcp://127.0.0.1:{free_port()}"
    context = torch.multiprocessing.get_context("spawn")
    processes = [
        context.Process(
            target=_run_follower,
            args=(rank, size, init_method, _rank_device(device, rank)),
            name=f"cairn-tp-rank{rank}",
            daemon=True,
        )
        for rank in range(1, size)
    ]
    for process in processes:
        process.start()

    def stop() -> None:
        for process in processes:
            process.join(timeout=30)
            if process.is_alive():
                process.kill()

    try:
        tp = init_tensor_parallel(0, size, init_method, device)
    except BaseException:
        for process in processes:
            process.kill()
        raise
    try:
        return GroupRunner(config, tp, compile_mode=compile_mode, on_close=stop)
    except BaseException:
        with contextlib.suppress(Exception):
            tp.broadcast_object((_STOP, ()))
        close_tensor_parallel(tp)
        stop()
        raise


def _rank_device(device: torch.device, rank: int) -> torch.device:
    return device if device.type == "cpu" else torch.device(device.type, (device.index or 0) + rank)


def _run_follower(rank: int, size: int, init_method: str, device: torch.device) -> None:
    tp = init_tensor_parallel(rank, size, init_method, device)
    try:
        follow(tp, device.index or 0)
    finally:
        close_tensor_parallel(tp)
