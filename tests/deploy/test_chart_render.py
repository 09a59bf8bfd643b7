"""The chart renders and lints through Helm's Go implementation, and every object it renders is valid.

Variants (deploy_chart.VARIANTS): default values, NVIDIA, Intel XPU and CPU workers, external database +
S3, autoscaling on and off, ingress + ServiceMonitor on, and everything optional off.
"""

from __future__ import annotations

import copy
import re

import jsonschema
import pytest
from deploy_chart import KUBE_VERSIONS, PASSWORD, VARIANTS, lint, merge, render_variant, validate

DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
# Kinds each variant must render, with counts: a template that silently renders nothing fails here.
EXPECTED_KINDS = {
    "default": {"Deployment": 6, "StatefulSet": 1, "RayCluster": 1, "HorizontalPodAutoscaler": 2},
    "gpu-workers": {"Deployment": 7, "RayCluster": 2, "PodDisruptionBudget": 4},
    "xpu-workers": {"Deployment": 6, "RayCluster": 1},
    "cpu-workers": {"Deployment": 6, "RayCluster": 1},
    "external-db-s3": {"Deployment": 6, "StatefulSet": 0, "Secret": 0, "PersistentVolumeClaim": 2},
    "autoscaling-on": {"HorizontalPodAutoscaler": 2, "RayCluster": 1},
    "autoscaling-off": {"HorizontalPodAutoscaler": 0},
    "ingress-on": {"Ingress": 2, "ServiceMonitor": 1, "ConfigMap": 1},
    "minimal": {"Deployment": 3, "RayCluster": 0, "NetworkPolicy": 0, "PodDisruptionBudget": 0, "Role": 0},
}


@pytest.mark.parametrize("variant", VARIANTS)
def test_lints_clean_in_strict_mode(variant: str) -> None:
    report = lint(merge(PASSWORD, VARIANTS[variant]))
    problems = [m for m in report["messages"] if m["severity"] >= 2]
    assert report["errors"] == [] and problems == []


@pytest.mark.parametrize("kube", KUBE_VERSIONS)
@pytest.mark.parametrize("variant", VARIANTS)
def test_every_object_validates_against_its_schema(variant: str, kube: str) -> None:
    for obj in render_variant(variant).objects:
        try:
            validate(obj, kube)
        except jsonschema.ValidationError as e:
            pytest.fail(
                f"{obj['kind']}/{obj['metadata']['name']} on Kubernetes {kube}: {e.message} at {e.json_path}"
            )


@pytest.mark.parametrize("variant", VARIANTS)
def test_renders_the_expected_objects(variant: str) -> None:
    rendered = render_variant(variant)
    counts = {kind: len(rendered.of_kind(kind)) for kind in EXPECTED_KINDS[variant]}
    assert counts == EXPECTED_KINDS[variant]


@pytest.mark.parametrize("variant", VARIANTS)
def test_names_are_unique_dns_labels(variant: str) -> None:
    rendered = render_variant(variant)
    keys = [(o["kind"], o["metadata"]["name"]) for o in rendered.objects]
    assert len(keys) == len(set(keys))
    for kind, name in keys:
        assert DNS_LABEL.match(name) and len(name) <= 63, f"{kind}/{name}"
    # KubeRay names the head Service after the RayCluster.
    for cluster in rendered.of_kind("RayCluster"):
        assert len(cluster["metadata"]["name"] + "-head-svc") <= 63


@pytest.mark.parametrize("variant", VARIANTS)
def test_every_object_lives_in_the_release_namespace(variant: str) -> None:
    assert {o["metadata"]["namespace"] for o in render_variant(variant).objects} == {"llm"}


def test_the_validators_catch_mistakes() -> None:
    """The schemas are strict: a misspelt field fails, in Kubernetes kinds and in the vendored CRDs."""
    rendered = render_variant("ingress-on")
    deployment = copy.deepcopy(rendered.get("Deployment", "cairn-router"))
    deployment["spec"]["template"]["spec"]["containers"][0]["imagePullPolcy"] = "Always"
    raycluster = copy.deepcopy(rendered.get("RayCluster", "cairn-llama"))
    raycluster["spec"]["workerGroupSpecs"][0]["replica"] = 2
    worker_pod = copy.deepcopy(rendered.get("RayCluster", "cairn-llama"))
    worker_pod["spec"]["workerGroupSpecs"][0]["template"]["spec"]["containers"][0]["ports"] = [{"port": 1}]
    monitor = copy.deepcopy(rendered.get("ServiceMonitor", "cairn"))
    monitor["spec"]["endpoints"][0]["interval"] = "30 seconds"
    for broken in (deployment, raycluster, worker_pod, monitor):
        with pytest.raises(jsonschema.ValidationError):
            validate(broken, KUBE_VERSIONS[-1])
