"""The rendered objects fit together: addresses name Services that reach the serving port, probes ask
the gRPC health service on that port, workers ask for their accelerators, secrets stay in Secrets and
every pod runs locked down."""

from __future__ import annotations

import base64
import importlib
import json
import pkgutil
import re
from typing import Any

import pytest
from deploy_chart import (
    PASSWORD,
    VARIANTS,
    Rendered,
    cairn_containers,
    container_env,
    container_port,
    env_values,
    labels_match,
    ray_containers,
    reach,
    render_variant,
    serving_port,
)

import cairn.v1

# Service (command `cairn <service> serve`) -> the gRPC service its readiness probe asks for.
HEALTH_SERVICES = {
    "router": "cairn.v1.Inference",
    "tokenizer": "cairn.v1.Tokenizer",
    "scheduler": "cairn.v1.Scheduler",
    "registry": "cairn.v1.Registry",
    "trainer": "cairn.v1.Trainer",
    "quantizer": "cairn.v1.Quantizer",
}
# Env variables holding host:port addresses -> the component they must reach.
ADDRESS_ENVS = {
    "CAIRN_REGISTRY": "registry",
    "CAIRN_TOKENIZER_REGISTRY_ADDRESS": "registry",
    "CAIRN_ROUTER_TOKENIZER_ADDRESS": "tokenizer",
}
CREDENTIALS_IN_URL = re.compile(r"://[^/@\s]+:[^/@\s]+@")


@pytest.mark.parametrize("variant", VARIANTS)
def test_addresses_in_env_reach_the_serving_port_of_the_right_tier(variant: str) -> None:
    rendered = render_variant(variant)
    checked = 0
    for where, _, container, _ in cairn_containers(rendered) + ray_containers(rendered):
        for name, value in env_values(container).items():
            component = ADDRESS_ENVS.get(name)
            if component is None:
                continue
            landing = reach(rendered, value)
            assert landing.template["metadata"]["labels"]["app.kubernetes.io/component"] == component, where
            assert landing.port == serving_port(landing.container, component), f"{where} {name}"
            checked += 1
    assert checked >= 2


def schedulers(rendered: Rendered) -> list[tuple[dict[str, Any], dict[str, str]]]:
    """(Deployment, env values) of every model deployment's scheduler."""
    return [
        (d, env_values(d["spec"]["template"]["spec"]["containers"][0]))
        for d in rendered.of_kind("Deployment")
        if d["metadata"]["labels"]["app.kubernetes.io/component"] == "scheduler"
    ]


@pytest.mark.parametrize("variant", VARIANTS)
def test_router_routes_each_served_model_to_its_own_scheduler(variant: str) -> None:
    rendered = render_variant(variant)
    router = rendered.get("Deployment", "cairn-router")["spec"]["template"]["spec"]["containers"][0]
    routes = json.loads(env_values(router)["CAIRN_ROUTER_DEPLOYMENTS"])
    assert sum(len(addresses) for addresses in routes.values()) == len(schedulers(rendered))
    for served, addresses in routes.items():
        for address in addresses:
            landing = reach(rendered, address)
            # The scheduler reports (and labels its metrics with) the name the router routes on.
            assert env_values(landing.container)["CAIRN_SCHEDULER_DEPLOYMENT"] == served
            assert landing.port == serving_port(landing.container, "scheduler")
    if variant == "gpu-workers":
        assert routes == {
            "meta-llama/Llama-3.1-8B-Instruct": ["cairn-scheduler-llama-8b:50053"],
            "qwen-small": ["cairn-scheduler-qwen-small:50053"],
        }


@pytest.mark.parametrize("variant", VARIANTS)
def test_each_scheduler_drives_its_own_raycluster(variant: str) -> None:
    rendered = render_variant(variant)
    devices = {"nvidia.com/gpu": "cuda", "gpu.intel.com/i915": "xpu"}
    for deployment, env in schedulers(rendered):
        cluster = rendered.get("RayCluster", env["CAIRN_SCHEDULER_RAYCLUSTER_NAME"])
        own = deployment["metadata"]["labels"]["cairn.dev/deployment"]
        assert cluster["metadata"]["labels"]["cairn.dev/deployment"] == own
        # KubeRay's head Service and the Ray client port the head declares.
        assert env["CAIRN_SCHEDULER_RAY_ADDRESS"] == f"ray://{cluster['metadata']['name']}-head-svc:10001"
        head = cluster["spec"]["headGroupSpec"]["template"]["spec"]["containers"][0]
        assert container_port(head, "client") == 10001
        (group,) = [
            g
            for g in cluster["spec"]["workerGroupSpecs"]
            if g["groupName"] == env["CAIRN_SCHEDULER_RAYCLUSTER_WORKER_GROUP"]
        ]
        limits = group["template"]["spec"]["containers"][0]["resources"]["limits"]
        device = next((devices[r] for r in limits if r in devices), "cpu")
        assert env["CAIRN_SCHEDULER_DEVICE"] == device
        # The worker group is the only place the worker count lives (scaling never restarts the scheduler).
        assert "CAIRN_SCHEDULER_NUM_WORKERS" not in env
        assert deployment["spec"]["strategy"]["type"] == "Recreate"


def proto_services() -> set[str]:
    names = set()
    for module in pkgutil.iter_modules(cairn.v1.__path__):
        if module.name.endswith("_pb2"):
            descriptor = importlib.import_module(f"cairn.v1.{module.name}").DESCRIPTOR
            names |= {s.full_name for s in descriptor.services_by_name.values()}
    return names


@pytest.mark.parametrize("variant", VARIANTS)
def test_probes_ask_grpc_health_on_the_serving_port(variant: str) -> None:
    services = proto_services()
    containers = cairn_containers(render_variant(variant))
    assert containers
    for where, _, container, service in containers:
        env = env_values(container)
        prefix = f"CAIRN_{service.upper()}_"
        port = serving_port(container, service)
        assert container_port(container, "grpc") == port, where
        assert container_port(container, "metrics") == int(env[prefix + "METRICS_PORT"]), where
        assert env[prefix + "HOST"] == "0.0.0.0" and env[prefix + "LOG_FORMAT"] == "json", where
        for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
            assert container[probe]["grpc"]["port"] == port, f"{where} {probe}"
        # Ready once its own service is SERVING; alive while the server answers at all.
        assert container["readinessProbe"]["grpc"]["service"] == HEALTH_SERVICES[service] in services
        assert "service" not in container["livenessProbe"]["grpc"]


WORKER_EXPECTATIONS = {
    # variant, cluster: (extended resource, per pod, image, Ray start params)
    ("gpu-workers", "cairn-llama-8b"): ("nvidia.com/gpu", 2, "cairn-gpu", {"num-gpus": "2"}),
    ("gpu-workers", "cairn-qwen-small"): ("nvidia.com/gpu", 1, "cairn-gpu", {"num-gpus": "1"}),
    ("default", "cairn-llama"): ("nvidia.com/gpu", 1, "cairn-gpu", {"num-gpus": "1"}),
    ("xpu-workers", "cairn-llama-xpu"): (
        "gpu.intel.com/i915",
        4,
        "cairn-xpu",
        {"resources": '"{\\"XPU\\": 4}"', "num-gpus": "0"},
    ),
    ("cpu-workers", "cairn-tiny"): (None, 0, "cairn", {"num-gpus": "0"}),
}


@pytest.mark.parametrize(("variant", "cluster"), WORKER_EXPECTATIONS)
def test_workers_request_their_accelerators(variant: str, cluster: str) -> None:
    resource, count, image, params = WORKER_EXPECTATIONS[variant, cluster]
    raycluster = render_variant(variant).get("RayCluster", cluster)
    (group,) = raycluster["spec"]["workerGroupSpecs"]
    pod = group["template"]["spec"]
    (container,) = pod["containers"]
    limits = container["resources"]["limits"]
    extended = {k: v for k, v in limits.items() if "/" in k}
    assert extended == ({resource: count} if resource else {})
    assert group["rayStartParams"] == params
    if resource == "gpu.intel.com/i915":
        # cairn's XPU workers claim the custom Ray resource "XPU" (services/worker/actor.py).
        assert json.loads(json.loads(params["resources"])) == {"XPU": count}
        assert pod["securityContext"]["supplementalGroups"] == [110]
        assert pod["nodeSelector"] == {"intel.feature.node.kubernetes.io/gpu": "true"}
    if resource == "nvidia.com/gpu":
        assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in pod["tolerations"]
    if cluster == "cairn-llama-8b":
        assert pod["nodeSelector"] == {"nvidia.com/gpu.product": "NVIDIA-H200"}
    assert container["image"].split(":")[0].rsplit("/", 1)[1] == image
    # The head only schedules: no accelerators and no Ray resources for workers.
    head = raycluster["spec"]["headGroupSpec"]
    assert head["rayStartParams"]["num-gpus"] == "0" and head["rayStartParams"]["num-cpus"] == "0"
    assert not any("/" in k for k in head["template"]["spec"]["containers"][0]["resources"]["limits"])


@pytest.mark.parametrize("variant", VARIANTS)
def test_ray_pods_get_shared_memory(variant: str) -> None:
    for where, template, container, _ in ray_containers(render_variant(variant)):
        volumes = {v["name"]: v for v in template["spec"]["volumes"]}
        (mount,) = [m for m in container["volumeMounts"] if m["mountPath"] == "/dev/shm"]
        assert volumes[mount["name"]]["emptyDir"]["medium"] == "Memory", where


@pytest.mark.parametrize("variant", VARIANTS)
def test_secrets_are_referenced_not_inlined(variant: str) -> None:
    rendered = render_variant(variant)
    external = variant == "external-db-s3"
    database = ("cairn-db", "sqlalchemy-url") if external else ("cairn-database", "url")
    password = PASSWORD["postgresql"]["auth"]["password"]
    seen = set()
    for where, _, container, _ in cairn_containers(rendered) + ray_containers(rendered):
        for name, entry in container_env(container).items():
            if "value" in entry:
                assert not CREDENTIALS_IN_URL.search(entry["value"]), f"{where} {name}"
                assert password not in entry["value"], f"{where} {name}"
            if name.endswith("_DATABASE_URL"):
                ref = entry["valueFrom"]["secretKeyRef"]
                assert (ref["name"], ref["key"]) == database, f"{where} {name}"
                seen.add(name)
            if name.endswith("_JOBS_KUBERNETES_DB_URL_SECRET"):
                assert entry["value"] == database[0]
            if name.startswith("AWS_"):
                assert entry["valueFrom"]["secretKeyRef"]["name"] == "cairn-s3", f"{where} {name}"
                seen.add(name)
    assert "CAIRN_REGISTRY_DATABASE_URL" in seen
    if external:
        assert rendered.of_kind("Secret") == []
        assert {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"} <= seen
    else:
        # The password exists once, base64-encoded, in the one Secret the chart makes.
        assert password not in rendered.text
        encoded = base64.b64encode(password.encode()).decode()
        holders = [o["metadata"]["name"] for o in rendered.objects if encoded in json.dumps(o)]
        assert holders == ["cairn-database"]


@pytest.mark.parametrize("variant", VARIANTS)
def test_pods_run_non_root_with_limits(variant: str) -> None:
    for where, template in render_variant(variant).pod_templates():
        pod = template["spec"]
        assert pod["enableServiceLinks"] is False, where
        assert pod["securityContext"]["runAsNonRoot"] is True, where
        for container in pod["containers"]:
            security = container["securityContext"]
            assert security["allowPrivilegeEscalation"] is False, where
            assert security["capabilities"]["drop"] == ["ALL"], where
            resources = container["resources"]
            assert {"cpu", "memory"} <= set(resources["requests"]), where
            assert "memory" in resources["limits"], where


@pytest.mark.parametrize("variant", VARIANTS)
def test_only_kubernetes_api_users_get_a_token(variant: str) -> None:
    """The schedulers (scale workers) and job services (run Jobs) talk to the API server; nobody else."""
    rendered = render_variant(variant)
    autoscaled = {
        c["metadata"]["name"] for c in rendered.of_kind("RayCluster") if c["spec"]["enableInTreeAutoscaling"]
    }
    for where, template in rendered.pod_templates():
        component = template["metadata"]["labels"]["app.kubernetes.io/component"]
        cluster = where.split()[0].removeprefix("RayCluster/")
        # KubeRay mounts its own service account into autoscaled heads for the autoscaler sidecar.
        api_user = component in ("scheduler", "trainer", "quantizer") or (
            component == "ray-head" and cluster in autoscaled
        )
        assert template["spec"].get("automountServiceAccountToken", True) is api_user, where


@pytest.mark.parametrize("variant", VARIANTS)
def test_services_select_exactly_one_workload_with_the_named_ports(variant: str) -> None:
    rendered = render_variant(variant)
    for service in rendered.of_kind("Service"):
        workloads = rendered.workloads_selected_by(service["spec"]["selector"])
        assert len(workloads) == 1, service["metadata"]["name"]
        names = {p.get("name") for c in workloads[0][1]["spec"]["containers"] for p in c["ports"]}
        assert {p["targetPort"] for p in service["spec"]["ports"]} <= names


@pytest.mark.parametrize("variant", VARIANTS)
def test_component_labels_match_the_command(variant: str) -> None:
    for where, template, _, service in cairn_containers(render_variant(variant)):
        assert labels_match({"app.kubernetes.io/component": service}, template["metadata"]["labels"]), where
