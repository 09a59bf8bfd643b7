"""Run attempts on a Ray cluster: one detached actor per data-parallel rank.

The ranks' actors sit in one placement group (one bundle of CPUs and GPUs
each), so an attempt starts only once all its GPUs are free, and each actor
runs the entry command as its own child process with the torch.distributed
rendezvous in its environment (rank 0's node address and a free port there).
Actors are detached and named after the attempt, so a restarted service finds
them by name. A rank process dies with its actor (PR_SET_PDEATHSIG), so a lost
node never leaves a stray trainer behind.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from ..records import RunnerKind
from .base import Launch, RunnerStatus, tail

_PR_SET_PDEATHSIG = 1


class RankProcess:
    """The body of one rank's actor: it owns that rank's process."""

    def __init__(self, launch: Launch, rank: int) -> None:
        self.launch = launch
        self.rank = rank
        self._process: subprocess.Popen[bytes] | None = None
        self._log = Path(tempfile.mkdtemp(prefix=f"{launch.name}-")) / f"rank-{rank}.log"

    def address(self) -> tuple[str, int]:
        """Where rank 0 listens for the rendezvous: this node's address and a port free on it."""
        import socket

        import ray

        with socket.socket() as sock:
            sock.bind(("", 0))
            return ray.util.get_node_ip_address(), sock.getsockname()[1]

    def start(self, master: tuple[str, int]) -> int:
        env = {
            **os.environ,
            **self.launch.env(),
            "RANK": str(self.rank),
            "WORLD_SIZE": str(self.launch.num_workers),
            # Ray narrows CUDA_VISIBLE_DEVICES to this actor's GPUs: its first one is ours.
            "LOCAL_RANK": "0",
            "MASTER_ADDR": master[0],
            "MASTER_PORT": str(master[1]),
        }
        with open(self._log, "ab") as out:
            self._process = subprocess.Popen(
                self.launch.command(sys.executable, nproc=1),
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                preexec_fn=_die_with_parent,
            )
        return self._process.pid

    def poll(self) -> int | None:
        """The exit status, None while running (or before `start` ran)."""
        return None if self._process is None else self._process.poll()

    def output(self) -> str:
        try:
            return tail(self._log.read_text(errors="replace"))
        except OSError:
            return ""

    def stop(self, grace_s: float) -> None:
        if self._process is None or self._process.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self._process.pid, signal.SIGTERM)
        try:
            self._process.wait(timeout=grace_s)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self._process.pid, signal.SIGKILL)
            self._process.wait()


def _die_with_parent() -> None:
    if sys.platform.startswith("linux"):
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)


class RayRunner:
    kind = RunnerKind.RAY

    def __init__(
        self,
        address: str | None = None,
        *,
        namespace: str = "cairn",
        cpus_per_worker: float = 1.0,
        gpus_per_worker: float = 1.0,
        strategy: str = "PACK",
        runtime_env: dict[str, Any] | None = None,
        cancel_grace_s: float = 10.0,
        call_timeout_s: float = 10.0,
    ) -> None:
        """`address` None starts (or joins) a Ray instance on this machine."""
        self.address = address
        self.namespace = namespace
        self.cpus_per_worker = cpus_per_worker
        self.gpus_per_worker = gpus_per_worker
        self.strategy = strategy
        self.runtime_env = runtime_env
        self.cancel_grace_s = cancel_grace_s
        self.call_timeout_s = call_timeout_s

    def _ray(self) -> Any:
        import ray

        if not ray.is_initialized():
            ray.init(
                address=self.address,
                namespace=self.namespace,
                runtime_env=self.runtime_env,
                log_to_driver=False,
                ignore_reinit_error=True,
            )
        return ray

    def start(self, launch: Launch) -> dict[str, Any]:
        ray = self._ray()
        from ray.util.placement_group import placement_group
        from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

        bundle = {"CPU": self.cpus_per_worker}
        if self.gpus_per_worker:
            bundle["GPU"] = self.gpus_per_worker
        group = placement_group(
            [dict(bundle) for _ in range(launch.num_workers)],
            strategy=self.strategy,
            name=launch.name,
            lifetime="detached",
        )
        names = [f"{launch.name}-rank{rank}" for rank in range(launch.num_workers)]
        actors = [
            ray.remote(RankProcess)
            .options(
                name=name,
                namespace=self.namespace,
                lifetime="detached",
                num_cpus=self.cpus_per_worker,
                num_gpus=self.gpus_per_worker,
                max_restarts=0,
                scheduling_strategy=PlacementGroupSchedulingStrategy(
                    group, placement_group_bundle_index=rank
                ),
            )
            .remote(launch, rank)
            for rank, name in enumerate(names)
        ]
        # Passing rank 0's address as an ObjectRef lets every actor wait for it on the
        # cluster: nothing here blocks while the placement group waits for free GPUs.
        master = actors[0].address.remote()
        for actor in actors:
            actor.start.remote(master)
        return {"namespace": self.namespace, "placement_group": launch.name, "actors": names}

    def status(self, handle: dict[str, Any]) -> RunnerStatus:
        ray = self._ray()
        codes: list[tuple[str, int | None]] = []
        for name in handle["actors"]:
            actor = self._actor(handle, name)
            if actor is None:
                return RunnerStatus(alive=False, detail=f"Ray actor {name} is gone (its node was lost?)")
            try:
                codes.append((name, ray.get(actor.poll.remote(), timeout=self.call_timeout_s)))
            except ray.exceptions.GetTimeoutError:
                # Still waiting for resources (placement group pending) or busy starting.
                return RunnerStatus(alive=True, detail="waiting for Ray resources")
            except ray.exceptions.RayActorError as e:
                return RunnerStatus(alive=False, detail=f"Ray actor {name} died: {e}")
        failed = [(name, code) for name, code in codes if code not in (None, 0)]
        if failed:
            name, code = failed[0]
            output = self._output(handle, name)
            detail = f"rank {name} exited with status {code}" + (
                f"; last output:\n{output}" if output else ""
            )
            return RunnerStatus(alive=False, exit_code=code, detail=detail)
        if any(code is None for _, code in codes):
            return RunnerStatus(alive=True)
        return RunnerStatus(alive=False, exit_code=0)

    def cancel(self, handle: dict[str, Any]) -> None:
        ray = self._ray()
        pending = []
        for name in handle["actors"]:
            actor = self._actor(handle, name)
            if actor is not None:
                pending.append(actor.stop.remote(self.cancel_grace_s))
        if pending:
            with contextlib.suppress(ray.exceptions.GetTimeoutError, ray.exceptions.RayActorError):
                ray.get(pending, timeout=self.cancel_grace_s + self.call_timeout_s)
        self.release(handle)

    def release(self, handle: dict[str, Any]) -> None:
        ray = self._ray()
        from ray.util.placement_group import get_placement_group, remove_placement_group

        for name in handle["actors"]:
            actor = self._actor(handle, name)
            if actor is not None:
                ray.kill(actor, no_restart=True)
        with contextlib.suppress(ValueError):
            remove_placement_group(get_placement_group(handle["placement_group"]))

    def close(self) -> None:
        """Attempts keep running on the cluster: the next service start reattaches to them by name."""

    def _actor(self, handle: dict[str, Any], name: str) -> Any:
        ray = self._ray()
        try:
            return ray.get_actor(name, namespace=handle["namespace"])
        except ValueError:
            return None

    def _output(self, handle: dict[str, Any], name: str) -> str:
        ray = self._ray()
        actor = self._actor(handle, name)
        if actor is None:
            return ""
        try:
            return ray.get(actor.output.remote(), timeout=self.call_timeout_s)
        except (ray.exceptions.GetTimeoutError, ray.exceptions.RayActorError):
            return ""
