"""The Kubernetes runner against fakes shaped like BatchV1Api and CoreV1Api (no cluster exists here).

The Job objects are real `kubernetes.client` models; the fakes record the calls.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client
from kubernetes.client.exceptions import ApiException

from cairn.jobs.config import JobsConfig, KubernetesRunnerConfig, build_runners
from cairn.jobs.records import RunnerKind
from cairn.jobs.runners.base import DB_URL_ENV, SETTINGS_ENV, Launch
from cairn.jobs.runners.k8s import KubernetesRunner

LAUNCH = Launch(
    job_id="train-0123456789ab",
    kind="trainer",
    attempt=2,
    entry="cairn.services.trainer.work:run",
    db_url="postgresql://cairn:secret@db/cairn",
    settings={"work_dir": "/work", "registry": "cairn-registry:50055"},
    num_workers=4,
)


@dataclass
class FakeBatch:
    jobs: dict[str, client.V1Job] = field(default_factory=dict)
    calls: list[tuple[str, dict[str, Any]]] = field(default_factory=list)

    def create_namespaced_job(self, namespace: str, body: client.V1Job) -> client.V1Job:
        self.calls.append(("create", {"namespace": namespace, "name": body.metadata.name}))
        body.status = client.V1JobStatus(active=1)
        self.jobs[body.metadata.name] = body
        return body

    def read_namespaced_job_status(self, name: str, namespace: str) -> client.V1Job:
        self.calls.append(("read", {"namespace": namespace, "name": name}))
        if name not in self.jobs:
            raise ApiException(status=404, reason="Not Found")
        return self.jobs[name]

    def delete_namespaced_job(self, name: str, namespace: str, body: client.V1DeleteOptions) -> None:
        self.calls.append(
            ("delete", {"namespace": namespace, "name": name, "policy": body.propagation_policy})
        )
        if self.jobs.pop(name, None) is None:
            raise ApiException(status=404, reason="Not Found")


class FakeLogResponse:
    def __init__(self, data: bytes) -> None:
        self.data = data
        self.released = False

    def stream(self) -> Any:
        # Chunks that split lines in the middle, as HTTP does.
        yield from (self.data[i : i + 7] for i in range(0, len(self.data), 7))

    def release_conn(self) -> None:
        self.released = True


@dataclass
class FakeCore:
    logs: dict[str, bytes] = field(default_factory=dict)
    calls: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    responses: list[FakeLogResponse] = field(default_factory=list)

    def list_namespaced_pod(self, namespace: str, label_selector: str) -> client.V1PodList:
        self.calls.append(("pods", {"namespace": namespace, "selector": label_selector}))
        job_name = label_selector.removeprefix("job-name=")
        pods = [
            client.V1Pod(
                metadata=client.V1ObjectMeta(
                    name=name, creation_timestamp=datetime(2026, 1, 1, i, tzinfo=timezone.utc)
                )
            )
            for i, name in enumerate(sorted(self.logs))
            if name.startswith(job_name)
        ]
        return client.V1PodList(items=pods)

    def read_namespaced_pod_log(self, **kwargs: Any) -> FakeLogResponse:
        self.calls.append(("log", kwargs))
        response = FakeLogResponse(self.logs[kwargs["name"]])
        self.responses.append(response)
        return response


@pytest.fixture
def fakes() -> tuple[FakeBatch, FakeCore]:
    return FakeBatch(), FakeCore()


def _runner(fakes: tuple[FakeBatch, FakeCore], **options: Any) -> KubernetesRunner:
    batch, core = fakes
    defaults: dict[str, Any] = {"image": "ghcr.io/acme/cairn:1.0", "namespace": "ml"}
    return KubernetesRunner(**{**defaults, **options}, batch_api=batch, core_api=core)


def test_job_object_requests_gpus_with_owner_labels_and_the_entry_command(
    fakes: tuple[FakeBatch, FakeCore],
) -> None:
    runner = _runner(
        fakes,
        gpus_per_worker=1,
        cpu_request="8",
        memory_request="64Gi",
        memory_limit="128Gi",
        service_account="cairn-jobs",
        node_selector={"gpu": "h200"},
        tolerations=[{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}],
        image_pull_secrets=["regcred"],
        db_url_secret="cairn-db",
        work_volume_claim="cairn-work",
        labels={"team": "ml"},
    )
    job = runner.build_job(LAUNCH)
    assert isinstance(job, client.V1Job)
    assert (job.api_version, job.kind) == ("batch/v1", "Job")
    assert job.metadata.name == "cairn-trainer-train-0123456789ab-a2" and job.metadata.namespace == "ml"
    labels = {
        "team": "ml",
        "app.kubernetes.io/name": "cairn",
        "app.kubernetes.io/component": "trainer-job",
        "app.kubernetes.io/managed-by": "cairn-trainer",
        "cairn.dev/job-id": "train-0123456789ab",
        "cairn.dev/attempt": "2",
    }
    assert job.metadata.labels == labels and job.spec.template.metadata.labels == labels
    assert job.spec.backoff_limit == 0 and job.spec.ttl_seconds_after_finished == 86400
    pod = job.spec.template.spec
    assert (pod.restart_policy, pod.enable_service_links, pod.service_account_name) == (
        "Never",
        False,
        "cairn-jobs",
    )
    assert pod.node_selector == {"gpu": "h200"}
    assert pod.tolerations == [
        client.V1Toleration(key="nvidia.com/gpu", operator="Exists", effect="NoSchedule")
    ]
    assert [s.name for s in pod.image_pull_secrets] == ["regcred"]
    (container,) = pod.containers
    assert container.image == "ghcr.io/acme/cairn:1.0"
    assert container.command == [
        "python", "-m", "cairn.jobs.run", "--job-id", "train-0123456789ab", "--attempt", "2",
        "--entry", "cairn.services.trainer.work:run", "--nproc", "4",
    ]  # fmt: skip
    assert container.resources.limits == {"nvidia.com/gpu": "4", "memory": "128Gi"}
    assert container.resources.requests == {"cpu": "8", "memory": "64Gi"}
    env = {e.name: e for e in container.env}
    assert env[DB_URL_ENV].value is None
    assert env[DB_URL_ENV].value_from.secret_key_ref.to_dict() == {
        "name": "cairn-db",
        "key": "url",
        "optional": None,
    }
    assert env[SETTINGS_ENV].value == '{"registry": "cairn-registry:50055", "work_dir": "/work"}'
    mounts = {m.name: m.mount_path for m in container.volume_mounts}
    assert mounts == {"dshm": "/dev/shm", "work": "/work"}
    volumes = {v.name: v for v in pod.volumes}
    assert volumes["work"].persistent_volume_claim.claim_name == "cairn-work"
    assert volumes["dshm"].empty_dir.medium == "Memory"
    # The object serializes to what the API server receives.
    body = client.ApiClient().sanitize_for_serialization(job)
    assert body["spec"]["template"]["spec"]["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] == "4"


def test_cpu_jobs_request_no_gpus_and_carry_the_url_plainly(fakes: tuple[FakeBatch, FakeCore]) -> None:
    job = _runner(fakes, gpus_per_worker=0).build_job(LAUNCH)
    (container,) = job.spec.template.spec.containers
    assert container.resources.limits is None and container.resources.requests is None
    assert {e.name: e.value for e in container.env}[DB_URL_ENV] == LAUNCH.db_url


def test_start_status_logs_and_cancel_call_the_api(fakes: tuple[FakeBatch, FakeCore]) -> None:
    batch, core = fakes
    runner = _runner(fakes)
    handle = runner.start(LAUNCH)
    assert handle == {"namespace": "ml", "name": "cairn-trainer-train-0123456789ab-a2"}
    assert batch.calls == [("create", handle)]
    assert runner.status(handle).alive

    core.logs["cairn-trainer-train-0123456789ab-a2-xk2p"] = b"loading\nstep 1\nTraceback: boom\n"
    batch.jobs[handle["name"]].status = client.V1JobStatus(
        failed=1,
        conditions=[client.V1JobCondition(type="Failed", status="True", reason="BackoffLimitExceeded")],
    )
    status = runner.status(handle)
    assert (status.alive, status.exit_code) == (False, 1)
    assert status.detail == (
        "Kubernetes Job cairn-trainer-train-0123456789ab-a2 failed: BackoffLimitExceeded; last output:\n"
        "loading\nstep 1\nTraceback: boom"
    )
    assert ("pods", {"namespace": "ml", "selector": f"job-name={handle['name']}"}) in core.calls
    log_call = next(kwargs for name, kwargs in core.calls if name == "log")
    assert log_call["container"] == "job" and log_call["_preload_content"] is False
    assert all(r.released for r in core.responses)
    assert list(runner.logs(handle, follow=True)) == ["loading", "step 1", "Traceback: boom"]
    assert core.calls[-1][1]["follow"] is True

    batch.jobs[handle["name"]].status = client.V1JobStatus(succeeded=1)
    assert runner.status(handle).exit_code == 0

    runner.cancel(handle)
    assert batch.calls[-1] == ("delete", {**handle, "policy": "Background"})
    status = runner.status(handle)
    assert not status.alive and "no longer exists" in status.detail
    runner.cancel(handle)  # already gone: not an error


def test_config_builds_the_runner_and_requires_an_image(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"needs jobs\.kubernetes\.image"):
        build_runners(JobsConfig(runner=RunnerKind.KUBERNETES), tmp_path)
    config = JobsConfig(
        runner=RunnerKind.KUBERNETES,
        kubernetes=KubernetesRunnerConfig(image="img:1", namespace="ml", gpus_per_worker=2),
    )
    runners = build_runners(config, tmp_path / "logs", work_dir=tmp_path / "work")
    assert set(runners) == {RunnerKind.KUBERNETES, RunnerKind.LOCAL}
    k8s = runners[RunnerKind.KUBERNETES]
    assert isinstance(k8s, KubernetesRunner)
    assert (k8s.image, k8s.namespace, k8s.gpus_per_worker) == ("img:1", "ml", 2)
    assert k8s.work_mount_path == str(tmp_path / "work")
