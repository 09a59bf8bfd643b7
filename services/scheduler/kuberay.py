"""In-cluster worker scaling: the KubeRay worker group a model deployment's workers run in.

In Kubernetes the Helm chart gives each model deployment its own RayCluster and sets
CAIRN_SCHEDULER_RAYCLUSTER_NAME and _WORKER_GROUP; the worker pool then uses `RayClusterScaler` as its
NodeScaler (services/scheduler/pool.py): before it grows and after it shrinks, the group is resized to
the pods its workers need (one worker per `accelerators_per_worker` accelerators of a pod — the
tensor-parallel size, 1 without it — so workers / workers per pod, rounded up), and KubeRay creates or
deletes the pods. A tensor-parallel group is packed on one node, so a pod must hold a whole group.

The worker group is the one place the count lives: `helm upgrade --set models[i].workers.replicas=N`,
`kubectl patch`, the Ray autoscaler and ScaleWorkers all write the same field. A scheduler that starts
with `desired_workers()` and runs `follow(pool.scale, workers)` therefore serves what the group says
without being restarted when it changes.

Writes are read-modify-write guarded by the object's resourceVersion: when something else writes in
between (the autoscaler, an operator's kubectl), the API server refuses ours with 409 and the change is
re-applied to the fresh object instead of overwriting theirs.

The `kubernetes` client (extra `kubernetes`) is imported only when no API objects are handed in; tests
hand in objects shaped like `CustomObjectsApi` and `CoreV1Api`, since no cluster exists there.
"""

from __future__ import annotations

import asyncio
import copy
import logging
import math
import time
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cairn.common.errors import (
    CairnError,
    DeadlineExceeded,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    PermissionDenied,
    Unavailable,
)

logger = logging.getLogger("cairn.scheduler.kuberay")

GROUP = "ray.io"
VERSION = "v1"
PLURAL = "rayclusters"
# Where a pod finds its own namespace.
NAMESPACE_FILE = Path("/var/run/secrets/kubernetes.io/serviceaccount/namespace")
# KubeRay's defaults when a group omits its bounds.
DEFAULT_MIN_REPLICAS = 0
DEFAULT_MAX_REPLICAS = 2**31 - 1
# Device plugin resources a worker pod's accelerators are counted in.
ACCELERATOR_RESOURCES = ("nvidia.com/gpu", "gpu.intel.com/i915")
CONFLICT_RETRIES = 5


@dataclass(frozen=True)
class WorkerGroupState:
    """One worker group as the API server has it, plus how many of its pods are ready."""

    replicas: int
    min_replicas: int
    max_replicas: int
    # Workers one pod hosts: its accelerators over the accelerators one worker uses (1 on CPU pods).
    workers_per_pod: int
    # Worker pods Running, Ready and not being deleted.
    ready: int
    # The Ray autoscaler owns `replicas` (between min and max) while this is on.
    autoscaling: bool

    @property
    def workers(self) -> int:
        return self.replicas * self.workers_per_pod


class RayClusterScaler:
    """Reads, scales and waits for the worker group `group` of the RayCluster `cluster`."""

    def __init__(
        self,
        cluster: str,
        group: str,
        namespace: str | None = None,
        *,
        custom_api: Any = None,
        core_api: Any = None,
        poll_interval_s: float = 2.0,
        sleep: Callable[[float], None] = time.sleep,
        clock: Callable[[], float] = time.monotonic,
        accelerators_per_worker: int = 1,
    ) -> None:
        """`namespace`: default the pod's own (in a cluster), else "default". `accelerators_per_worker`:
        the devices one worker replica spans (its tensor-parallel size)."""
        if accelerators_per_worker < 1:
            raise InvalidArgument(f"accelerators_per_worker must be >= 1, got {accelerators_per_worker}")
        self.cluster = cluster
        self.group = group
        self.accelerators_per_worker = accelerators_per_worker
        self.namespace = namespace or _own_namespace()
        self.poll_interval_s = poll_interval_s
        self._custom = custom_api
        self._core = core_api
        self._sleep = sleep
        self._clock = clock

    # ---- the worker pool's NodeScaler (counts in workers)

    async def scale(self, replicas: int) -> None:
        """Resizes the group to the pods `replicas` workers need."""
        await asyncio.to_thread(self.scale_workers, replicas)

    async def desired_workers(self) -> int:
        """The workers the group is sized for: what a scheduler in the cluster starts with."""
        return (await asyncio.to_thread(self.state)).workers

    async def follow(
        self, on_change: Callable[[int], Awaitable[object]], workers: int, *, interval_s: float = 10.0
    ) -> None:
        """Calls `on_change(n)` whenever the group is sized for `n` workers and the caller has `workers`
        (a helm upgrade, kubectl patch or the Ray autoscaler changed it); runs until cancelled. API
        failures are logged and retried at the next poll."""
        while True:
            try:
                wanted = await self.desired_workers()
            except CairnError as e:
                logger.warning("cannot read the worker group: %s", e)
            else:
                if wanted != workers:
                    logger.info("%s asks for %d workers (had %d)", self._where, wanted, workers)
                    await on_change(wanted)
                    workers = wanted
            await asyncio.sleep(interval_s)

    # ---- blocking operations (counts in pods unless named otherwise)

    def state(self) -> WorkerGroupState:
        obj = self._read()
        spec = _group(obj, self.group, self._where)
        return WorkerGroupState(
            replicas=int(spec.get("replicas", 0)),
            min_replicas=int(spec.get("minReplicas", DEFAULT_MIN_REPLICAS)),
            max_replicas=int(spec.get("maxReplicas", DEFAULT_MAX_REPLICAS)),
            workers_per_pod=self._workers_per_pod(spec),
            ready=self._ready_pods(),
            autoscaling=bool(obj.get("spec", {}).get("enableInTreeAutoscaling", False)),
        )

    def scale_workers(self, workers: int) -> WorkerGroupState:
        if workers < 0:
            raise InvalidArgument(f"workers must be >= 0, got {workers}")
        return self._update(
            lambda spec: _set_replicas(spec, math.ceil(workers / self._workers_per_pod(spec)))
        )

    def scale_pods(self, replicas: int) -> WorkerGroupState:
        """Sets the group's replicas, widening min/max when they would hold it back (KubeRay clamps to them).

        With the Ray autoscaler on, the autoscaler moves replicas again within the bounds; pin a floor or
        ceiling with `set_bounds`.
        """
        if replicas < 0:
            raise InvalidArgument(f"worker pod replicas must be >= 0, got {replicas}")
        return self._update(lambda spec: _set_replicas(spec, replicas))

    def set_bounds(self, min_replicas: int, max_replicas: int) -> WorkerGroupState:
        """Sets the autoscaling range in pods, moving replicas into it."""
        if min_replicas < 0 or max_replicas < min_replicas:
            raise InvalidArgument(
                f"worker bounds need 0 <= min <= max, got min {min_replicas}, max {max_replicas}"
            )

        def change(spec: dict[str, Any]) -> None:
            spec["minReplicas"] = min_replicas
            spec["maxReplicas"] = max_replicas
            spec["replicas"] = min(max(int(spec.get("replicas", 0)), min_replicas), max_replicas)

        return self._update(change)

    def wait_ready(self, replicas: int | None = None, *, timeout_s: float = 900.0) -> WorkerGroupState:
        """Polls until exactly `replicas` (default: the group's desired count) worker pods are ready."""
        deadline = self._clock() + timeout_s
        while True:
            state = self.state()
            target = state.replicas if replicas is None else replicas
            if state.ready == target:
                return state
            if self._clock() >= deadline:
                raise DeadlineExceeded(
                    f"{self._where}: {state.ready} of {target} worker pods ready after {timeout_s:.0f} s; "
                    f"`kubectl -n {self.namespace} get pods -l {self._pod_selector}` shows why (pending "
                    "accelerators, image pulls, failed probes)"
                )
            self._sleep(self.poll_interval_s)

    # ---- internals

    def _workers_per_pod(self, spec: dict[str, Any]) -> int:
        """Workers a pod of the group hosts: its accelerators (the device plugin's limit on the worker
        container; one CPU worker without any) over those a worker spans. A pod with fewer than one
        worker needs is refused: the group could never be placed."""
        containers = spec.get("template", {}).get("spec", {}).get("containers") or [{}]
        limits = containers[0].get("resources", {}).get("limits") or {}
        count = next((int(limits[r]) for r in ACCELERATOR_RESOURCES if r in limits), 0)
        per_worker = self.accelerators_per_worker
        if count == 0:
            return 1
        if count < per_worker:
            raise FailedPrecondition(
                f"{self._where} gives each pod {count} accelerators, but a worker needs {per_worker} "
                "(tensor_parallel_size) on one node: set models[i].workers.acceleratorsPerPod to a "
                f"multiple of {per_worker}"
            )
        return count // per_worker

    @property
    def _where(self) -> str:
        return f"RayCluster {self.namespace}/{self.cluster}"

    @property
    def _pod_selector(self) -> str:
        return f"ray.io/cluster={self.cluster},ray.io/group={self.group},ray.io/node-type=worker"

    def _apis(self) -> tuple[Any, Any]:
        if self._custom is None or self._core is None:
            from kubernetes import client, config

            try:
                config.load_incluster_config()
            except config.ConfigException:
                config.load_kube_config()
            self._custom = self._custom or client.CustomObjectsApi()
            self._core = self._core or client.CoreV1Api()
        return self._custom, self._core

    def _read(self) -> dict[str, Any]:
        custom, _ = self._apis()
        with self._api_errors():
            return custom.get_namespaced_custom_object(
                group=GROUP, version=VERSION, namespace=self.namespace, plural=PLURAL, name=self.cluster
            )

    def _update(self, change: Callable[[dict[str, Any]], None]) -> WorkerGroupState:
        custom, _ = self._apis()
        for _attempt in range(CONFLICT_RETRIES):
            obj = self._read()
            groups = obj.get("spec", {}).get("workerGroupSpecs") or []
            changed = copy.deepcopy(groups)
            change(_group({"spec": {"workerGroupSpecs": changed}}, self.group, self._where))
            if changed == groups:
                return self.state()
            # A merge patch replaces the whole list; the resourceVersion makes it apply only to the
            # object it was computed from.
            body = {
                "metadata": {"resourceVersion": obj["metadata"]["resourceVersion"]},
                "spec": {"workerGroupSpecs": changed},
            }
            try:
                with self._api_errors(conflict_ok=True):
                    custom.patch_namespaced_custom_object(
                        group=GROUP,
                        version=VERSION,
                        namespace=self.namespace,
                        plural=PLURAL,
                        name=self.cluster,
                        body=body,
                    )
            except _Conflict:
                continue
            return self.state()
        raise Unavailable(f"{self._where} kept changing during {CONFLICT_RETRIES} attempts to scale it")

    def _ready_pods(self) -> int:
        _, core = self._apis()
        with self._api_errors():
            pods = core.list_namespaced_pod(namespace=self.namespace, label_selector=self._pod_selector).items
        return sum(1 for pod in pods if _is_ready(pod))

    @contextmanager
    def _api_errors(self, *, conflict_ok: bool = False) -> Iterator[None]:
        """Kubernetes API failures as the typed errors the gRPC shell maps to status codes."""
        from kubernetes.client.exceptions import ApiException
        from urllib3.exceptions import HTTPError

        try:
            yield
        except ApiException as e:
            if e.status == 404:
                raise NotFound(f"{self._where} not found") from None
            if e.status == 403:
                raise PermissionDenied(
                    f"{self._where}: the service account may not read or patch it or list its pods "
                    "(the Helm chart's scheduler Role grants get/patch on rayclusters and list on pods)"
                ) from None
            if e.status == 409 and conflict_ok:
                raise _Conflict from None
            raise Unavailable(f"{self._where}: Kubernetes API error {e.status} {e.reason}") from None
        except (OSError, HTTPError) as e:
            raise Unavailable(f"{self._where}: Kubernetes API unreachable: {e}") from None


class _Conflict(Exception):
    """The object changed between read and write (HTTP 409)."""


def _group(obj: dict[str, Any], name: str, where: str) -> dict[str, Any]:
    groups = obj.get("spec", {}).get("workerGroupSpecs") or []
    for spec in groups:
        if spec.get("groupName") == name:
            return spec
    known = ", ".join(repr(g.get("groupName")) for g in groups) or "none"
    raise NotFound(f"{where} has no worker group {name!r} (groups: {known})")


def _set_replicas(spec: dict[str, Any], replicas: int) -> None:
    spec["replicas"] = replicas
    if replicas < int(spec.get("minReplicas", DEFAULT_MIN_REPLICAS)):
        spec["minReplicas"] = replicas
    if replicas > int(spec.get("maxReplicas", DEFAULT_MAX_REPLICAS)):
        spec["maxReplicas"] = replicas


def _is_ready(pod: Any) -> bool:
    if pod.metadata.deletion_timestamp is not None or pod.status is None or pod.status.phase != "Running":
        return False
    return any(c.type == "Ready" and c.status == "True" for c in pod.status.conditions or ())


def _own_namespace() -> str:
    try:
        return NAMESPACE_FILE.read_text().strip() or "default"
    except OSError:
        return "default"
