"""What the chart hands each service is what that service reads.

- Services that exist load their real config schema from the pod's env (and config file): every
  CAIRN_<SERVICE>_* variable must be a field, and the values must validate.
- Every service the chart runs has its `cairn <service> serve` command and config schema.
- The trainer's and quantizer's job settings build the real Kubernetes job runner (cairn/jobs), and the
  Jobs it creates use the chart's Secret, claim, image and service account.
- The Roles grant exactly what the job runner and the worker scaler call, found by running both against
  recording fakes (no cluster exists here).
"""

from __future__ import annotations

import argparse
import contextlib
import io
import re
from pathlib import Path
from typing import Any

import pytest
from deploy_chart import VARIANTS, Rendered, cairn_containers, env_values, render_variant
from kube_fakes import RBAC_OF_CALL, FakeBatch, FakeCore, FakeRayClusters, pod

from cairn import cli
from cairn.common.config import ServiceConfig, add_config_arguments, env_prefix_for, load_config
from cairn.jobs.config import build_runners
from cairn.jobs.records import RunnerKind
from cairn.jobs.runners.base import Launch
from cairn.jobs.runners.k8s import KubernetesRunner
from cairn.services.scheduler.kuberay import RayClusterScaler

DATABASE_URL = "postgresql+psycopg://cairn:secret@cairn-postgresql:5432/cairn"


def serve_commands() -> set[str]:
    """Services whose `cairn <service> serve` exists."""
    parser = cli.build_parser()
    found = set()
    for service in ("router", "tokenizer", "scheduler", "registry", "trainer", "quantizer", "worker"):
        try:
            with contextlib.redirect_stderr(io.StringIO()):
                parser.parse_args([service, "serve"])
        except SystemExit:
            continue
        found.add(service)
    return found


def service_configs() -> dict[str, type[ServiceConfig]]:
    """The config schema of every service whose command exists, by service name."""
    cli.build_parser()  # imports every command module, and with them the services' schemas
    found: dict[str, type[ServiceConfig]] = {}
    stack = list(ServiceConfig.__subclasses__())
    while stack:
        schema = stack.pop()
        stack.extend(schema.__subclasses__())
        if schema.__module__.startswith("cairn.services."):
            found[schema.service_name] = schema
    return {name: schema for name, schema in found.items() if name in serve_commands()}


def known_env(schema: type[ServiceConfig]) -> set[str]:
    """The variables the schema reads, as its own CLI lists them (help lines unwrapped)."""
    parser = argparse.ArgumentParser(formatter_class=lambda prog: argparse.HelpFormatter(prog, width=100_000))
    add_config_arguments(parser, schema)
    return set(re.findall(r"[\[(]env (CAIRN_\w+)[\])]", parser.format_help()))


def pod_env(
    rendered: Rendered, template: dict[str, Any], container: dict[str, Any], tmp_path: Path
) -> dict[str, str]:
    """The container's env as the process sees it: Secret values filled in, the config file written."""
    env = {}
    for name, value in env_values(container).items():
        if value.startswith("secret:"):
            value = DATABASE_URL if name.endswith("DATABASE_URL") else "from-a-secret"
        env[name] = value
    for mount in container.get("volumeMounts", []):
        volume = next(v for v in template["spec"]["volumes"] if v["name"] == mount["name"])
        if "configMap" in volume:
            data = rendered.get("ConfigMap", volume["configMap"]["name"])["data"]
            for key, text in data.items():
                path = tmp_path / mount["name"] / key
                path.parent.mkdir(exist_ok=True)
                path.write_text(text)
                env = {k: str(path) if v == f"{mount['mountPath']}/{key}" else v for k, v in env.items()}
    return env


@pytest.mark.parametrize("variant", VARIANTS)
def test_service_env_loads_into_the_services_own_config(variant: str, tmp_path: Path) -> None:
    rendered = render_variant(variant)
    schemas = service_configs()
    assert {"registry", "tokenizer", "scheduler", "trainer"} <= set(schemas)
    for where, template, container, service in cairn_containers(rendered):
        env = pod_env(rendered, template, container, tmp_path)
        schema = schemas.get(service)
        assert schema is not None, f"{where}: `cairn {service} serve` does not exist"
        prefix = env_prefix_for(schema)
        unknown = {n for n in env if n.startswith(prefix)} - known_env(schema)
        assert not unknown, f"{where}: {service} has no settings {sorted(unknown)}"
        config = load_config(schema, env=env)
        assert (config.host, config.port) == ("0.0.0.0", int(env[prefix + "PORT"]))
        if service == "registry":
            check_registry(config, variant)
        if service == "tokenizer" and variant == "ingress-on":
            assert (config.preload, config.threads) == (["llama@production"], 4)
        if service == "scheduler" and variant == "xpu-workers":
            assert (config.tensor_parallel_size, config.max_loras) == (2, 4)
            assert config.lora_modules == {"support": "acme/support-lora@production"}


def check_registry(config: Any, variant: str) -> None:
    assert config.database() == DATABASE_URL
    if variant == "external-db-s3":
        assert config.blobs() == "s3://models/cairn/registry"
        assert config.blob_storage_options == {
            "endpoint_url": "http://minio.storage:9000",
            "client_kwargs": {"region_name": "us-east-1"},
        }
    else:
        assert config.blobs() == "file:///data/blobs"


JOB_VARIANTS = [
    (v, s)
    for v in ("default", "xpu-workers", "cpu-workers", "external-db-s3")
    for s in ("trainer", "quantizer")
]


@pytest.mark.parametrize(("variant", "service"), JOB_VARIANTS)
def test_job_services_build_the_kubernetes_runner_the_chart_means(
    variant: str, service: str, tmp_path: Path
) -> None:
    rendered = render_variant(variant)
    template = rendered.get("Deployment", f"cairn-{service}")["spec"]["template"]
    container = template["spec"]["containers"][0]
    schema = service_configs()[service]
    config = load_config(schema, env=pod_env(rendered, template, container, tmp_path))
    assert RunnerKind.KUBERNETES in config.jobs.runner_kinds()
    runner = build_runners(config.jobs, tmp_path)[RunnerKind.KUBERNETES]
    assert isinstance(runner, KubernetesRunner)

    launch = Launch(job_id="job-1", kind=service, attempt=1, entry="x:y", db_url=DATABASE_URL, num_workers=2)
    job = runner.build_job(launch)
    assert job.metadata.namespace == "llm"
    pod_spec = job.spec.template.spec
    (job_container,) = pod_spec.containers
    accelerator = {"xpu-workers": "intel-xpu", "cpu-workers": "cpu"}.get(variant, "nvidia")
    image, resource = {
        "nvidia": ("cairn-gpu", "nvidia.com/gpu"),
        "intel-xpu": ("cairn-xpu", "gpu.intel.com/i915"),
        "cpu": ("cairn", None),
    }[accelerator]
    assert job_container.image.split(":")[0].rsplit("/", 1)[1] == image
    limits = job_container.resources.limits
    assert {k: v for k, v in limits.items() if "/" in k} == ({resource: "2"} if resource else {})
    # The job's own pod runs without API access under the chart's identity.
    account = rendered.get("ServiceAccount", pod_spec.service_account_name)
    assert account["automountServiceAccountToken"] is False
    # Its database URL comes from the Secret the service reads, never as a plain value.
    (db_env,) = [e for e in job_container.env if e.name == "CAIRN_JOBS_DB_URL"]
    own = next(e for e in container["env"] if e["name"] == f"CAIRN_{service.upper()}_DATABASE_URL")
    assert db_env.value is None
    assert db_env.value_from.secret_key_ref.to_dict() == {
        **own["valueFrom"]["secretKeyRef"],
        "optional": None,
    }
    # Checkpoints land on the claim the service mounts, at the same path.
    (work,) = [v for v in pod_spec.volumes if v.persistent_volume_claim is not None]
    claim = work.persistent_volume_claim.claim_name
    rendered.get("PersistentVolumeClaim", claim)
    own_mount = next(
        m
        for m in container["volumeMounts"]
        if next(v for v in template["spec"]["volumes"] if v["name"] == m["name"])
        .get("persistentVolumeClaim", {})
        .get("claimName")
        == claim
    )
    (job_mount,) = [m for m in job_container.volume_mounts if m.name == work.name]
    assert job_mount.mount_path == own_mount["mountPath"] == str(config.work_dir)


def role_of(rendered: Rendered, deployment: dict[str, Any]) -> dict[str, Any]:
    account = deployment["spec"]["template"]["spec"]["serviceAccountName"]
    (binding,) = [
        b
        for b in rendered.of_kind("RoleBinding")
        if {"kind": "ServiceAccount", "name": account, "namespace": "llm"} in b["subjects"]
    ]
    return rendered.get("Role", binding["roleRef"]["name"])


def allows(role: dict[str, Any], group: str, resource: str, verb: str, name: str | None) -> bool:
    return any(
        group in rule["apiGroups"]
        and resource in rule["resources"]
        and verb in rule["verbs"]
        and (not rule.get("resourceNames") or name in rule["resourceNames"])
        for rule in role["rules"]
    )


def assert_role_covers(role: dict[str, Any], calls: list[tuple[str, dict[str, Any]]]) -> None:
    assert calls
    for method, kwargs in calls:
        group, resource, verb = RBAC_OF_CALL[method]
        name = kwargs.get("name") if resource == "rayclusters" else None
        assert allows(role, group, resource, verb, name), f"{role['metadata']['name']} lacks {method}"


@pytest.mark.parametrize("service", ["trainer", "quantizer"])
def test_job_service_role_grants_what_the_runner_calls(service: str, tmp_path: Path) -> None:
    rendered = render_variant("default")
    deployment = rendered.get("Deployment", f"cairn-{service}")
    batch, core = FakeBatch(), FakeCore(log=b"step 1\nstep 2\n")
    runner = KubernetesRunner(image="cairn-gpu:1", namespace="llm", batch_api=batch, core_api=core)
    launch = Launch(job_id="job-1", kind=service, attempt=1, entry="x:y", db_url=DATABASE_URL)
    handle = runner.start(launch)
    core.pods.append(pod(f"{launch.name}-x", {"job-name": launch.name}))
    assert runner.status(handle).alive
    assert list(runner.logs(handle)) == ["step 1", "step 2"]
    runner.cancel(handle)
    assert_role_covers(role_of(rendered, deployment), batch.calls + core.calls)


@pytest.mark.parametrize("variant", ["default", "gpu-workers"])
def test_scheduler_role_grants_what_the_scaler_calls_on_its_own_cluster(variant: str) -> None:
    rendered = render_variant(variant)
    for deployment in rendered.of_kind("Deployment"):
        if deployment["metadata"]["labels"]["app.kubernetes.io/component"] != "scheduler":
            continue
        env = env_values(deployment["spec"]["template"]["spec"]["containers"][0])
        clusters, core = FakeRayClusters(), FakeCore()
        clusters.add(rendered.get("RayCluster", env["CAIRN_SCHEDULER_RAYCLUSTER_NAME"]))
        scaler = RayClusterScaler(
            env["CAIRN_SCHEDULER_RAYCLUSTER_NAME"],
            env["CAIRN_SCHEDULER_RAYCLUSTER_WORKER_GROUP"],
            "llm",  # the pod's own namespace, where the chart puts its RayCluster
            custom_api=clusters,
            core_api=core,
        )
        scaler.scale_workers(3)
        scaler.set_bounds(1, 4)
        role = role_of(rendered, deployment)
        assert_role_covers(role, clusters.calls + core.calls)
        # Only its release's clusters, not every RayCluster in the namespace.
        assert not allows(role, "ray.io", "rayclusters", "patch", "someone-elses")
