"""In-cluster worker scaling: the KubeRay worker group a model deployment's workers run in.

In Kubernetes (the Helm chart sets CAIRN_SCHEDULER_RAYCLUSTER_NAME and _WORKER_GROUP) the scheduler's
ScaleWorkers RPC turns its worker count into worker pods (one worker per accelerator, so workers divided
by the pods' accelerators, rounded up) and calls `RayClusterWorkers.scale`; KubeRay then creates or
deletes the pods, and `wait_ready` tells when they are up. The worker group is the one place the count
lives: `helm upgrade --set models[i].workers.replicas=N`, `kubectl patch` and this class all write the
same field.

Writes are read-modify-write with the object's resourceVersion, so a concurrent change (the Ray
autoscaler, an operator's kubectl) makes the API server refuse the write with 409 and the change is
re-applied to the fresh object instead of overwriting it.

The `kubernetes` client (extra `kubernetes`) is imported only when no API objects are handed in; tests
hand in objects shaped like `CustomObjectsApi` and `CoreV1Api`, since no cluster exists there.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cairn.common.errors import (
    DeadlineExceeded,
    InvalidArgument,
    NotFound,
    PermissionDenied,
    Unavailable,
)

GROUP = "ray.io"
VERSION = "v1"
PLURAL = "rayclusters"
# Where a pod finds its own namespace.
NAMESPACE_FILE = Path("/var/run/secrets/kubernetes.io/serviceaccount/namespace")
# KubeRay's defaults when a group omits its bounds.
DEFAULT_MIN_REPLICAS = 0
DEFAULT_MAX_REPLICAS = 2**31 - 1
CONFLICT_RETRIES = 5


@dataclass(frozen=True)
class WorkerGroupState:
    """One worker group as the API server has it, plus how many of its pods are ready."""

    replicas: int
    min_replicas: int
    max_replicas: int
    # Worker pods Running, Ready and not being deleted.
    ready: int
    # The Ray autoscaler owns `replicas` (between min and max) while this is on.
    autoscaling: bool


class RayClusterWorkers:
    """Reads, scales and waits for the worker group `group` of the RayCluster `cluster`."""

    def __init__(
        self,
        cluster: str,
        group: str,
        *,
        namespace: str | None = None,
        custom_api: Any = None,
        core_api: Any = None,
        poll_interval_s: float = 2.0,
        sleep: Callable[[float], None] = time.sleep,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        """`namespace`: default the pod's own (in a cluster), else "default"."""
        self.cluster = cluster
        self.group = group
        self.namespace = namespace or _own_namespace()
        self.poll_interval_s = poll_interval_s
        self._custom = custom_api
        self._core = core_api
        self._sleep = sleep
        self._clock = clock

    # ---- reads

    def state(self) -> WorkerGroupState:
        obj = self._read()
        spec = _group(obj, self.group, self._where)
        return WorkerGroupState(
            replicas=int(spec.get("replicas", 0)),
            min_replicas=int(spec.get("minReplicas", DEFAULT_MIN_REPLICAS)),
            max_replicas=int(spec.get("maxReplicas", DEFAULT_MAX_REPLICAS)),
            ready=self._ready_pods(),
            autoscaling=bool(obj.get("spec", {}).get("enableInTreeAutoscaling", False)),
        )

    # ---- writes

    def scale(self, replicas: int) -> WorkerGroupState:
        """Sets the group's replicas, widening min/max when they would hold it back (KubeRay clamps to them).

        With the Ray autoscaler on, the autoscaler moves replicas again within the bounds; pin a floor or
        ceiling with `set_bounds`.
        """
        if replicas < 0:
            raise InvalidArgument(f"worker replicas must be >= 0, got {replicas}")

        def change(spec: dict[str, Any]) -> None:
            spec["replicas"] = replicas
            if replicas < int(spec.get("minReplicas", DEFAULT_MIN_REPLICAS)):
                spec["minReplicas"] = replicas
            if replicas > int(spec.get("maxReplicas", DEFAULT_MAX_REPLICAS)):
                spec["maxReplicas"] = replicas

        self._update(change)
        return self.state()

    def set_bounds(self, min_replicas: int, max_replicas: int) -> WorkerGroupState:
        """Sets the autoscaling range, moving replicas into it."""
        if min_replicas < 0 or max_replicas < min_replicas:
            raise InvalidArgument(
                f"worker bounds need 0 <= min <= max, got min {min_replicas}, max {max_replicas}"
            )

        def change(spec: dict[str, Any]) -> None:
            spec["minReplicas"] = min_replicas
            spec["maxReplicas"] = max_replicas
            spec["replicas"] = min(max(int(spec.get("replicas", 0)), min_replicas), max_replicas)

        self._update(change)
        return self.state()

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

    def _update(self, change: Callable[[dict[str, Any]], None]) -> None:
        custom, _ = self._apis()
        for _attempt in range(CONFLICT_RETRIES):
            obj = self._read()
            groups = copy.deepcopy(obj.get("spec", {}).get("workerGroupSpecs") or [])
            change(_group({"spec": {"workerGroupSpecs": groups}}, self.group, self._where))
            # A merge patch replaces the whole list; the resourceVersion makes it apply only to the
            # object it was computed from.
            body = {
                "metadata": {"resourceVersion": obj["metadata"]["resourceVersion"]},
                "spec": {"workerGroupSpecs": groups},
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
                return
            except _Conflict:
                continue
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


def _is_ready(pod: Any) -> bool:
    if pod.metadata.deletion_timestamp is not None or pod.status is None or pod.status.phase != "Running":
        return False
    return any(c.type == "Ready" and c.status == "True" for c in pod.status.conditions or ())


def _own_namespace() -> str:
    try:
        return NAMESPACE_FILE.read_text().strip() or "default"
    except OSError:
        return "default"
