"""Run attempts as Kubernetes Jobs created through the API server.

One Job per attempt, one pod running the entry command with all of the
attempt's ranks (`--nproc`, one GPU each), `backoffLimit: 0` because retries
are the manager's business (it resumes from the last checkpoint), labels that
name the owning service and job, and cancel by deleting the Job with its
pods. The job database must be reachable from the pods (PostgreSQL in a
cluster; its URL preferably from a Secret) and checkpoints must land on a
volume every attempt mounts.

The `kubernetes` package's API objects are injectable: tests hand in objects
shaped like `BatchV1Api` and `CoreV1Api`, since no cluster exists there.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from ..records import RunnerKind
from .base import DB_URL_ENV, Launch, RunnerStatus, tail

CONTAINER = "job"
SHM_VOLUME = "dshm"
WORK_VOLUME = "work"


class KubernetesRunner:
    kind = RunnerKind.KUBERNETES

    def __init__(
        self,
        *,
        image: str,
        namespace: str = "default",
        python: str = "python",
        gpus_per_worker: int = 1,
        gpu_resource: str = "nvidia.com/gpu",
        cpu_request: str | None = None,
        memory_request: str | None = None,
        memory_limit: str | None = None,
        service_account: str | None = None,
        node_selector: dict[str, str] | None = None,
        tolerations: list[dict[str, Any]] | None = None,
        image_pull_secrets: list[str] | None = None,
        db_url_secret: str | None = None,
        db_url_secret_key: str = "url",
        work_volume_claim: str | None = None,
        work_mount_path: str = "/work",
        labels: dict[str, str] | None = None,
        ttl_seconds_after_finished: int | None = 86400,
        cancel_grace_s: int = 30,
        batch_api: Any = None,
        core_api: Any = None,
    ) -> None:
        """`db_url_secret`: a Secret whose `db_url_secret_key` holds the job database URL (else the URL
        travels as a plain env value). `work_volume_claim`: a PersistentVolumeClaim mounted at
        `work_mount_path`, where checkpoints and outputs go (the service's work dir must be that path)."""
        self.image = image
        self.namespace = namespace
        self.python = python
        self.gpus_per_worker = gpus_per_worker
        self.gpu_resource = gpu_resource
        self.cpu_request = cpu_request
        self.memory_request = memory_request
        self.memory_limit = memory_limit
        self.service_account = service_account
        self.node_selector = dict(node_selector or {})
        self.tolerations = list(tolerations or [])
        self.image_pull_secrets = list(image_pull_secrets or [])
        self.db_url_secret = db_url_secret
        self.db_url_secret_key = db_url_secret_key
        self.work_volume_claim = work_volume_claim
        self.work_mount_path = work_mount_path
        self.labels = dict(labels or {})
        self.ttl_seconds_after_finished = ttl_seconds_after_finished
        self.cancel_grace_s = cancel_grace_s
        self._batch = batch_api
        self._core = core_api

    # ---- API clients

    def _apis(self) -> tuple[Any, Any]:
        if self._batch is None or self._core is None:
            from kubernetes import client, config

            try:
                config.load_incluster_config()
            except config.ConfigException:
                config.load_kube_config()
            self._batch = self._batch or client.BatchV1Api()
            self._core = self._core or client.CoreV1Api()
        return self._batch, self._core

    # ---- the Job object

    def owner_labels(self, launch: Launch) -> dict[str, str]:
        return {
            **self.labels,
            "app.kubernetes.io/name": "cairn",
            "app.kubernetes.io/component": f"{launch.kind}-job",
            "app.kubernetes.io/managed-by": f"cairn-{launch.kind}",
            "cairn.dev/job-id": launch.job_id,
            "cairn.dev/attempt": str(launch.attempt),
        }

    def build_job(self, launch: Launch) -> Any:
        from kubernetes import client

        labels = self.owner_labels(launch)
        gpus = self.gpus_per_worker * launch.num_workers
        limits: dict[str, str] = {self.gpu_resource: str(gpus)} if gpus else {}
        requests: dict[str, str] = {}
        if self.cpu_request:
            requests["cpu"] = self.cpu_request
        if self.memory_request:
            requests["memory"] = self.memory_request
        if self.memory_limit:
            limits["memory"] = self.memory_limit

        env = [client.V1EnvVar(name="PYTHONUNBUFFERED", value="1")]
        for name, value in sorted(launch.env().items()):
            if name == DB_URL_ENV and self.db_url_secret:
                source = client.V1EnvVarSource(
                    secret_key_ref=client.V1SecretKeySelector(
                        name=self.db_url_secret, key=self.db_url_secret_key
                    )
                )
                env.append(client.V1EnvVar(name=name, value_from=source))
            else:
                env.append(client.V1EnvVar(name=name, value=value))

        # NCCL and data loaders need more shared memory than a container's default 64 MiB.
        volumes = [client.V1Volume(name=SHM_VOLUME, empty_dir=client.V1EmptyDirVolumeSource(medium="Memory"))]
        mounts = [client.V1VolumeMount(name=SHM_VOLUME, mount_path="/dev/shm")]
        if self.work_volume_claim:
            volumes.append(
                client.V1Volume(
                    name=WORK_VOLUME,
                    persistent_volume_claim=client.V1PersistentVolumeClaimVolumeSource(
                        claim_name=self.work_volume_claim
                    ),
                )
            )
            mounts.append(client.V1VolumeMount(name=WORK_VOLUME, mount_path=self.work_mount_path))

        container = client.V1Container(
            name=CONTAINER,
            image=self.image,
            command=launch.command(self.python),
            env=env,
            resources=client.V1ResourceRequirements(limits=limits or None, requests=requests or None),
            volume_mounts=mounts,
        )
        pod = client.V1PodSpec(
            restart_policy="Never",
            containers=[container],
            volumes=volumes,
            service_account_name=self.service_account,
            node_selector=self.node_selector or None,
            tolerations=[client.V1Toleration(**t) for t in self.tolerations] or None,
            image_pull_secrets=[client.V1LocalObjectReference(name=s) for s in self.image_pull_secrets]
            or None,
            # Service links would inject CAIRN_*_PORT variables that collide with cairn's config.
            enable_service_links=False,
        )
        return client.V1Job(
            api_version="batch/v1",
            kind="Job",
            metadata=client.V1ObjectMeta(name=launch.name, namespace=self.namespace, labels=labels),
            spec=client.V1JobSpec(
                backoff_limit=0,
                ttl_seconds_after_finished=self.ttl_seconds_after_finished,
                template=client.V1PodTemplateSpec(metadata=client.V1ObjectMeta(labels=labels), spec=pod),
            ),
        )

    # ---- runner contract

    def start(self, launch: Launch) -> dict[str, Any]:
        batch, _ = self._apis()
        job = self.build_job(launch)
        batch.create_namespaced_job(namespace=self.namespace, body=job)
        return {"namespace": self.namespace, "name": job.metadata.name}

    def status(self, handle: dict[str, Any]) -> RunnerStatus:
        from kubernetes.client.exceptions import ApiException

        batch, _ = self._apis()
        try:
            job = batch.read_namespaced_job_status(name=handle["name"], namespace=handle["namespace"])
        except ApiException as e:
            if e.status == 404:
                return RunnerStatus(alive=False, detail=f"Kubernetes Job {handle['name']} no longer exists")
            raise
        status = job.status
        if status is not None and status.succeeded:
            return RunnerStatus(alive=False, exit_code=0)
        if status is not None and status.failed:
            reasons = [c.message or c.reason for c in status.conditions or () if c.type == "Failed"]
            output = tail("\n".join(self.logs(handle)))
            detail = f"Kubernetes Job {handle['name']} failed" + (f": {reasons[0]}" if reasons else "")
            return RunnerStatus(
                alive=False, exit_code=1, detail=detail + (f"; last output:\n{output}" if output else "")
            )
        return RunnerStatus(alive=True)

    def cancel(self, handle: dict[str, Any]) -> None:
        from kubernetes import client
        from kubernetes.client.exceptions import ApiException

        batch, _ = self._apis()
        try:
            batch.delete_namespaced_job(
                name=handle["name"],
                namespace=handle["namespace"],
                body=client.V1DeleteOptions(
                    propagation_policy="Background", grace_period_seconds=self.cancel_grace_s
                ),
            )
        except ApiException as e:
            if e.status != 404:
                raise

    def release(self, handle: dict[str, Any]) -> None:
        """Finished Jobs stay for their logs; `ttl_seconds_after_finished` removes them."""

    def close(self) -> None:
        """Nothing held: Jobs run on in the cluster."""

    def logs(self, handle: dict[str, Any], *, follow: bool = False) -> Iterator[str]:
        """The attempt's output, line by line (its newest pod's); with `follow`, until the pod ends."""
        _, core = self._apis()
        pods = core.list_namespaced_pod(
            namespace=handle["namespace"], label_selector=f"job-name={handle['name']}"
        ).items
        if not pods:
            return
        pod = max(pods, key=_created)
        response = core.read_namespaced_pod_log(
            name=pod.metadata.name,
            namespace=handle["namespace"],
            container=CONTAINER,
            follow=follow,
            _preload_content=False,
        )
        try:
            pending = b""
            for chunk in response.stream():
                pending += chunk
                *lines, pending = pending.split(b"\n")
                yield from (line.decode(errors="replace") for line in lines)
            if pending:
                yield pending.decode(errors="replace")
        finally:
            response.release_conn()


def _created(pod: Any) -> float:
    created = pod.metadata.creation_timestamp
    return created.timestamp() if created is not None else 0.0
