"""Render the cairn chart through Helm's own Go implementation and validate what comes out.

helm-python-sdk bundles Helm's Go library (no helm binary, no network, no cluster: `lookup` returns
nothing, as in `helm template`); kubernetes-validate ships the Kubernetes JSON schemas. RayCluster and
ServiceMonitor are not Kubernetes kinds, so they are checked against the reduced CRD schemas in
`schemas/` (their descriptions say what they cover), whose pod templates point into the Kubernetes
definitions.
"""

from __future__ import annotations

import functools
import json
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import helm_python
import jsonschema
import kubernetes_validate.utils
import yaml
from referencing import Registry, Resource

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "deploy" / "helm" / "cairn"
SCHEMAS = Path(__file__).parent / "schemas"
RELEASE = "cairn"
NAMESPACE = "llm"
# The oldest Kubernetes the chart supports (Chart.yaml kubeVersion) and the newest schemas installed.
KUBE_VERSIONS = ("1.27.0", kubernetes_validate.utils.latest_version())
CUSTOM_KINDS = {
    ("ray.io/v1", "RayCluster"): "raycluster-ray-v1.json",
    ("monitoring.coreos.com/v1", "ServiceMonitor"): "servicemonitor-monitoring-v1.json",
}

# A fixed password keeps renders comparable: offline, `lookup` finds no Secret to reuse, so every render
# would otherwise generate a new one.
PASSWORD = {"postgresql": {"auth": {"password": "render-test-password"}}}

GPU_WORKERS = {
    "models": [
        {
            "name": "llama-8b",
            "model": "llama-3.1-8b@production",
            "servedName": "meta-llama/Llama-3.1-8B-Instruct",
            "workers": {
                "replicas": 4,
                "acceleratorsPerPod": 2,
                "nodeSelector": {"nvidia.com/gpu.product": "NVIDIA-H200"},
                "autoscaling": {"maxReplicas": 8},
            },
        },
        {
            "name": "qwen-small",
            "model": "qwen2.5-0.5b@3",
            "accelerator": "nvidia",
            "workers": {"replicas": 2},
            "scheduler": {
                "resources": {"requests": {"cpu": "4", "memory": "8Gi"}, "limits": {"memory": "16Gi"}}
            },
        },
    ]
}
XPU_WORKERS = {
    "models": [
        {
            "name": "llama-xpu",
            "model": "llama@production",
            "accelerator": "intel-xpu",
            "workers": {
                "replicas": 2,
                "acceleratorsPerPod": 4,
                "supplementalGroups": [110],
                "nodeSelector": {"intel.feature.node.kubernetes.io/gpu": "true"},
            },
            "scheduler": {
                "config": {
                    "tensor_parallel_size": 2,
                    "max_loras": 4,
                    "lora_modules": ["support=acme/support-lora@production"],
                }
            },
        }
    ],
    "trainer": {"jobs": {"accelerator": "intel-xpu"}},
    "quantizer": {"jobs": {"accelerator": "intel-xpu"}},
}
CPU_WORKERS = {
    "models": [
        {
            "name": "tiny",
            "model": "tiny-llama@production",
            "accelerator": "cpu",
            "workers": {
                "resources": {"requests": {"cpu": "2", "memory": "4Gi"}, "limits": {"memory": "8Gi"}}
            },
        }
    ],
    "trainer": {"jobs": {"accelerator": "cpu"}},
    "quantizer": {"jobs": {"accelerator": "cpu", "runner": "local", "runners": ["local", "kubernetes"]}},
}
EXTERNAL_DB_S3 = {
    "postgresql": {"enabled": False},
    "externalDatabase": {"existingSecret": "cairn-db", "urlKey": "sqlalchemy-url"},
    "registry": {
        "replicas": 3,
        "blobs": {
            "type": "s3",
            "s3": {
                "bucket": "models",
                "prefix": "cairn/registry",
                "endpointUrl": "http://minio.storage:9000",
                "region": "us-east-1",
                "existingSecret": "cairn-s3",
            },
        },
    },
}
AUTOSCALING_ON = {
    "router": {"autoscaling": {"enabled": True, "minReplicas": 3, "maxReplicas": 20}},
    "tokenizer": {"autoscaling": {"enabled": True, "minReplicas": 2, "maxReplicas": 12}},
    "modelDefaults": {
        "workers": {"replicas": 2, "autoscaling": {"enabled": True, "minReplicas": 1, "maxReplicas": 6}}
    },
}
AUTOSCALING_OFF = {
    "router": {"replicas": 3, "autoscaling": {"enabled": False}},
    "tokenizer": {"replicas": 4, "autoscaling": {"enabled": False}},
}
INGRESS_ON = {
    "ingress": {
        "enabled": True,
        "className": "nginx",
        "hosts": [{"host": "llm.example.com", "paths": [{"path": "/", "pathType": "Prefix"}]}],
        "tls": [{"secretName": "cairn-tls", "hosts": ["llm.example.com"]}],
        "grpc": {
            "enabled": True,
            "host": "grpc.llm.example.com",
            "annotations": {"nginx.ingress.kubernetes.io/backend-protocol": "GRPC"},
        },
    },
    "serviceMonitor": {"enabled": True, "labels": {"release": "prometheus"}},
    "router": {"apiKeys": {"existingSecret": "cairn-api-keys"}},
    "tokenizer": {"config": {"preload": ["llama@production"], "threads": 4}},
    "imagePullSecrets": ["registry-credentials"],
}
MINIMAL = {
    "models": [],
    "trainer": {"enabled": False},
    "quantizer": {"enabled": False},
    "networkPolicy": {"enabled": False},
    "podDisruptionBudget": {"enabled": False},
    "tokenizer": {"replicas": 1, "autoscaling": {"enabled": False}},
}

VARIANTS: dict[str, dict[str, Any]] = {
    "default": {},
    "gpu-workers": GPU_WORKERS,
    "xpu-workers": XPU_WORKERS,
    "cpu-workers": CPU_WORKERS,
    "external-db-s3": EXTERNAL_DB_S3,
    "autoscaling-on": AUTOSCALING_ON,
    "autoscaling-off": AUTOSCALING_OFF,
    "ingress-on": INGRESS_ON,
    "minimal": MINIMAL,
}


@dataclass(frozen=True)
class Rendered:
    """One render: the manifests as objects (in template order) and NOTES.txt."""

    objects: list[dict[str, Any]]
    notes: str
    text: str

    def of_kind(self, kind: str) -> list[dict[str, Any]]:
        return [o for o in self.objects if o["kind"] == kind]

    def get(self, kind: str, name: str) -> dict[str, Any]:
        found = [o for o in self.of_kind(kind) if o["metadata"]["name"] == name]
        assert len(found) == 1, f"{kind}/{name}: {len(found)} rendered"
        return found[0]

    def find(self, kind: str, name: str) -> dict[str, Any] | None:
        return next((o for o in self.of_kind(kind) if o["metadata"]["name"] == name), None)

    def pod_templates(self) -> Iterator[tuple[str, dict[str, Any]]]:
        """(where, pod template) of every workload, RayCluster heads and worker groups included."""
        for obj in self.objects:
            where = f"{obj['kind']}/{obj['metadata']['name']}"
            if obj["kind"] in ("Deployment", "StatefulSet"):
                yield where, obj["spec"]["template"]
            elif obj["kind"] == "RayCluster":
                yield f"{where} head", obj["spec"]["headGroupSpec"]["template"]
                for group in obj["spec"].get("workerGroupSpecs", []):
                    yield f"{where} group {group['groupName']}", group["template"]

    def workloads_selected_by(self, selector: dict[str, str]) -> list[tuple[str, dict[str, Any]]]:
        return [(w, t) for w, t in self.pod_templates() if labels_match(selector, t["metadata"]["labels"])]


def labels_match(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return all(labels.get(k) == v for k, v in selector.items())


def selector_matches(selector: dict[str, Any], labels: dict[str, str]) -> bool:
    """A Kubernetes LabelSelector (matchLabels, and matchExpressions with In/NotIn/Exists) against labels."""
    if not labels_match(selector.get("matchLabels") or {}, labels):
        return False
    for expression in selector.get("matchExpressions") or []:
        key, operator, values = expression["key"], expression["operator"], expression.get("values", [])
        if operator == "In" and labels.get(key) not in values:
            return False
        if operator == "NotIn" and labels.get(key) in values:
            return False
        if operator == "Exists" and key not in labels:
            return False
    return True


@functools.lru_cache(maxsize=1)
def _chart() -> helm_python.Chart:
    return helm_python.Chart.load(CHART)


@functools.lru_cache(maxsize=64)
def _render(values_json: str) -> Rendered:
    manifests = _chart().render(json.loads(values_json), name=RELEASE, namespace=NAMESPACE)
    notes = manifests.pop(f"{CHART.name}/templates/NOTES.txt", "")
    objects: list[dict[str, Any]] = []
    texts = []
    for path in sorted(manifests):
        texts.append(f"# Source: {path}\n{manifests[path]}")
        objects.extend(doc for doc in yaml.safe_load_all(manifests[path]) if doc)
    return Rendered(objects=objects, notes=notes, text="\n".join(texts))


def render(values: dict[str, Any] | None = None) -> Rendered:
    """The chart rendered as `helm template cairn deploy/helm/cairn -n llm` with these values."""
    return _render(json.dumps(values or {}, sort_keys=True))


def chart_defaults() -> dict[str, Any]:
    """The chart's values.yaml."""
    return _chart().values


def variant_values(name: str) -> dict[str, Any]:
    return merge(PASSWORD, VARIANTS[name])


def render_variant(name: str) -> Rendered:
    return render(variant_values(name))


def render_error(values: dict[str, Any]) -> str:
    """The message Helm refuses these values with (schema or template check); fails if it renders."""
    try:
        _chart().render(values, name=RELEASE, namespace=NAMESPACE)
    except helm_python.HelmError as e:
        return str(e)
    raise AssertionError(f"rendered although it should not: {values}")


def schema_error(values: dict[str, Any]) -> str:
    """What values.schema.json says about these values (Helm's validator); fails if they pass."""
    try:
        _chart().validate_schema(values)
    except helm_python.HelmError as e:
        return str(e)
    raise AssertionError(f"values.schema.json accepted {values}")


def lint(values: dict[str, Any] | None = None) -> dict[str, Any]:
    return helm_python.lint(CHART, values or {}, strict=True, namespace=NAMESPACE)


def merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    """Values overlays as Helm merges -f files: maps key by key, the rest replaced."""
    out = dict(base)
    for key, value in over.items():
        out[key] = (
            merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
        )
    return out


@functools.cache
def _validator(api_version: str, kind: str, kube: str) -> jsonschema.protocols.Validator:
    version_dir = f"kubernetes-json-schema/v{kube}-local-strict"
    definitions = kubernetes_validate.utils.schema_contents(f"{version_dir}/_definitions.json", kube)
    custom = CUSTOM_KINDS.get((api_version, kind))
    if custom is not None:
        schema = json.loads((SCHEMAS / custom).read_text())
    else:
        # kubernetes-validate's file naming: apps/v1 -> apps-v1, rbac.authorization.k8s.io/v1 -> rbac-v1.
        file_api = re.sub(r"^([^./]*)(?:\.[^/]*)?/", r"\1-", api_version)
        schema = kubernetes_validate.utils.schema_contents(
            f"{version_dir}/{kind.lower()}-{file_api}.json", kube
        )
    registry = Registry().with_resources(
        [
            (definitions["$id"], Resource.from_contents(definitions)),
            (schema["$id"], Resource.from_contents(schema)),
        ]
    )
    return jsonschema.Draft202012Validator(schema, registry=registry)


def validate(obj: dict[str, Any], kube: str) -> None:
    """Raises jsonschema.ValidationError unless the object is valid for that Kubernetes version."""
    _validator(obj["apiVersion"], obj["kind"], kube).validate(obj)


def container_env(container: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {e["name"]: e for e in container.get("env", [])}


def env_values(container: dict[str, Any]) -> dict[str, str]:
    """Plain env values; Secret references become a placeholder that names them."""
    values = {}
    for name, entry in container_env(container).items():
        if "value" in entry:
            values[name] = entry["value"]
        else:
            ref = entry["valueFrom"]["secretKeyRef"]
            values[name] = f"secret:{ref['name']}/{ref['key']}"
    return values


def cairn_containers(rendered: Rendered) -> list[tuple[str, dict[str, Any], dict[str, Any], str]]:
    """(where, pod template, container, service) for every `cairn <service> serve` container."""
    found = []
    for where, template in rendered.pod_templates():
        for container in template["spec"]["containers"]:
            command = container.get("command", [])
            if command[:1] == ["cairn"] and command[2:] == ["serve"]:
                found.append((where, template, container, command[1]))
    return found


def serving_port(container: dict[str, Any], service: str) -> int:
    return int(container_env(container)[f"CAIRN_{service.upper()}_PORT"]["value"])


@dataclass(frozen=True)
class Landing:
    """Where a host:port address lands, through its Service: the pod template, container and port."""

    template: dict[str, Any]
    container: dict[str, Any]
    port: int


def reach(rendered: Rendered, address: str) -> Landing:
    host, port = address.rsplit(":", 1)
    service = rendered.find("Service", host)
    assert service is not None, f"{address}: no Service {host}"
    ports = {p["port"]: p for p in service["spec"]["ports"]}
    assert int(port) in ports, f"{address}: Service {host} has ports {sorted(ports)}"
    workloads = rendered.workloads_selected_by(service["spec"]["selector"])
    assert len(workloads) == 1, f"{address}: Service {host} selects {[w for w, _ in workloads]}"
    template = workloads[0][1]
    target = ports[int(port)]["targetPort"]
    for container in template["spec"]["containers"]:
        for declared in container.get("ports", []):
            if declared.get("name") == target:
                return Landing(template, container, declared["containerPort"])
    raise AssertionError(f"{address}: no container of {workloads[0][0]} exposes {target}")


def container_port(container: dict[str, Any], name: str) -> int:
    return next(p["containerPort"] for p in container["ports"] if p["name"] == name)


def ray_containers(rendered: Rendered) -> list[tuple[str, dict[str, Any], dict[str, Any], str]]:
    return [
        (where, template, container, "ray")
        for where, template in rendered.pod_templates()
        if where.startswith("RayCluster")
        for container in template["spec"]["containers"]
    ]
