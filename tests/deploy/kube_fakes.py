"""Objects shaped like the `kubernetes` client's APIs that record the calls made to them (no cluster exists
here). Responses are real `kubernetes.client` models or the dicts the API server returns for custom
objects; errors are real `ApiException`s."""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

from kubernetes import client
from kubernetes.client.exceptions import ApiException

Call = tuple[str, dict[str, Any]]


def merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7386 JSON merge patch: maps merge, null deletes, everything else (lists too) replaces."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    out = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            out.pop(key, None)
        else:
            out[key] = merge_patch(out.get(key), value)
    return out


@dataclass
class FakeRayClusters:
    """`CustomObjectsApi` over a store of RayClusters, enforcing resourceVersion preconditions like the
    API server. `before_patch` runs first on every patch (to change the object behind a caller's back)."""

    objects: dict[tuple[str, str], dict[str, Any]] = field(default_factory=dict)
    calls: list[Call] = field(default_factory=list)
    before_patch: Callable[[dict[str, Any]], None] | None = None
    fail_with: int | None = None

    def add(self, obj: dict[str, Any]) -> None:
        stored = copy.deepcopy(obj)
        stored.setdefault("metadata", {})["resourceVersion"] = "1"
        self.objects[stored["metadata"].get("namespace", "default"), stored["metadata"]["name"]] = stored

    def _lookup(self, group: str, version: str, plural: str, namespace: str, name: str) -> dict[str, Any]:
        if self.fail_with is not None:
            raise ApiException(status=self.fail_with, reason="injected")
        assert (group, version, plural) == ("ray.io", "v1", "rayclusters")
        if (namespace, name) not in self.objects:
            raise ApiException(status=404, reason="Not Found")
        return self.objects[namespace, name]

    def get_namespaced_custom_object(
        self, group: str, version: str, namespace: str, plural: str, name: str
    ) -> dict[str, Any]:
        self.calls.append(("get_namespaced_custom_object", {"namespace": namespace, "name": name}))
        return copy.deepcopy(self._lookup(group, version, plural, namespace, name))

    def patch_namespaced_custom_object(
        self, group: str, version: str, namespace: str, plural: str, name: str, body: Any
    ) -> dict[str, Any]:
        self.calls.append(
            (
                "patch_namespaced_custom_object",
                {"namespace": namespace, "name": name, "body": copy.deepcopy(body)},
            )
        )
        current = self._lookup(group, version, plural, namespace, name)
        if self.before_patch is not None:
            self.before_patch(current)
        if not isinstance(body, dict):
            raise ApiException(status=415, reason="Unsupported Media Type: merge patches are objects")
        wanted = body.get("metadata", {}).get("resourceVersion")
        if wanted is not None and wanted != current["metadata"]["resourceVersion"]:
            raise ApiException(status=409, reason="Conflict")
        patched = merge_patch(current, body)
        patched["metadata"]["resourceVersion"] = str(int(current["metadata"]["resourceVersion"]) + 1)
        self.objects[namespace, name] = patched
        return copy.deepcopy(patched)

    def bump(self, namespace: str, name: str, change: Callable[[dict[str, Any]], None]) -> None:
        """Someone else's write: change the stored object and its resourceVersion."""
        obj = self.objects[namespace, name]
        change(obj)
        obj["metadata"]["resourceVersion"] = str(int(obj["metadata"]["resourceVersion"]) + 1)


def pod(
    name: str, labels: dict[str, str], *, phase: str = "Running", ready: bool = True, deleting: bool = False
):
    return client.V1Pod(
        metadata=client.V1ObjectMeta(
            name=name,
            labels=labels,
            creation_timestamp=datetime(2025, 1, 1, tzinfo=timezone.utc),
            deletion_timestamp=datetime(2025, 1, 2, tzinfo=timezone.utc) if deleting else None,
        ),
        status=client.V1PodStatus(
            phase=phase, conditions=[client.V1PodCondition(type="Ready", status="True" if ready else "False")]
        ),
    )


class FakeLogStream:
    def __init__(self, data: bytes) -> None:
        self.data = data
        self.released = False

    def stream(self) -> Any:
        yield self.data

    def release_conn(self) -> None:
        self.released = True


@dataclass
class FakeCore:
    """`CoreV1Api`: pods filtered by an equality label selector, and their logs."""

    pods: list[client.V1Pod] = field(default_factory=list)
    calls: list[Call] = field(default_factory=list)
    log: bytes = b""

    def list_namespaced_pod(self, namespace: str, label_selector: str) -> client.V1PodList:
        self.calls.append(("list_namespaced_pod", {"namespace": namespace, "label_selector": label_selector}))
        wanted = dict(term.split("=", 1) for term in label_selector.split(","))
        items = [p for p in self.pods if all(p.metadata.labels.get(k) == v for k, v in wanted.items())]
        return client.V1PodList(items=items)

    def read_namespaced_pod_log(self, name: str, namespace: str, **kwargs: Any) -> FakeLogStream:
        self.calls.append(("read_namespaced_pod_log", {"namespace": namespace, "name": name}))
        return FakeLogStream(self.log)


@dataclass
class FakeBatch:
    """`BatchV1Api` over a store of Jobs."""

    jobs: dict[str, client.V1Job] = field(default_factory=dict)
    calls: list[Call] = field(default_factory=list)

    def create_namespaced_job(self, namespace: str, body: client.V1Job) -> client.V1Job:
        self.calls.append(("create_namespaced_job", {"namespace": namespace, "name": body.metadata.name}))
        body.status = client.V1JobStatus(active=1)
        self.jobs[body.metadata.name] = body
        return body

    def read_namespaced_job_status(self, name: str, namespace: str) -> client.V1Job:
        self.calls.append(("read_namespaced_job_status", {"namespace": namespace, "name": name}))
        return self.jobs[name]

    def delete_namespaced_job(self, name: str, namespace: str, body: client.V1DeleteOptions) -> None:
        self.calls.append(("delete_namespaced_job", {"namespace": namespace, "name": name}))
        del self.jobs[name]


# What each client method asks of RBAC: (API group, resource, verb).
RBAC_OF_CALL = {
    "create_namespaced_job": ("batch", "jobs", "create"),
    "read_namespaced_job_status": ("batch", "jobs/status", "get"),
    "delete_namespaced_job": ("batch", "jobs", "delete"),
    "list_namespaced_pod": ("", "pods", "list"),
    "read_namespaced_pod_log": ("", "pods/log", "get"),
    "get_namespaced_custom_object": ("ray.io", "rayclusters", "get"),
    "patch_namespaced_custom_object": ("ray.io", "rayclusters", "patch"),
}
