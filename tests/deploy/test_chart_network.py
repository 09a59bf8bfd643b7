"""The NetworkPolicies admit every call the tiers make to each other (found from the rendered wiring) and
refuse everyone else. A small evaluator applies Kubernetes' rules: a pod no policy selects accepts all;
a selected pod accepts what one of its policies' rules admits by port and peer."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import pytest
from deploy_chart import (
    Rendered,
    cairn_containers,
    env_values,
    merge,
    reach,
    render,
    render_variant,
    selector_matches,
    variant_values,
)

from cairn.jobs.runners.base import Launch
from cairn.jobs.runners.k8s import KubernetesRunner

NAMESPACE = "llm"
EPHEMERAL_PORT = 43117  # a worker actor's gRPC server: Ray gives it any free port


@dataclass(frozen=True)
class Pod:
    labels: dict[str, str]
    namespace: str = NAMESPACE


def admits(rendered: Rendered, callee: Pod, port: int, caller: Pod) -> bool:
    policies = [
        p
        for p in rendered.of_kind("NetworkPolicy")
        if callee.namespace == NAMESPACE and selector_matches(p["spec"]["podSelector"], callee.labels)
    ]
    if not policies:
        return True
    return any(rule_admits(rule, port, caller) for p in policies for rule in p["spec"].get("ingress", []))


def rule_admits(rule: dict[str, Any], port: int, caller: Pod) -> bool:
    if rule.get("ports") and not any(p["port"] == port for p in rule["ports"]):
        return False
    return not rule.get("from") or any(peer_admits(peer, caller) for peer in rule["from"])


def peer_admits(peer: dict[str, Any], caller: Pod) -> bool:
    if "namespaceSelector" in peer:
        namespace_labels = {"kubernetes.io/metadata.name": caller.namespace}
        if not selector_matches(peer["namespaceSelector"], namespace_labels):
            return False
    elif caller.namespace != NAMESPACE:
        return False
    return "podSelector" not in peer or selector_matches(peer["podSelector"], caller.labels)


def labels_of(rendered: Rendered, component: str, deployment: str | None = None) -> list[Pod]:
    return [
        Pod(t["metadata"]["labels"])
        for _, t in rendered.pod_templates()
        if t["metadata"]["labels"]["app.kubernetes.io/component"] == component
        and (deployment is None or t["metadata"]["labels"].get("cairn.dev/deployment") == deployment)
    ]


def job_pods() -> list[Pod]:
    """The labels the Kubernetes job runner puts on its Jobs' pods."""
    runner = KubernetesRunner(image="cairn-gpu:1", namespace=NAMESPACE)
    return [
        Pod(runner.owner_labels(Launch(job_id="j1", kind=kind, attempt=1, entry="x:y", db_url="")))
        for kind in ("trainer", "quantizer")
    ]


def calls(rendered: Rendered) -> list[tuple[str, Pod, Pod, int]]:
    """(what, caller, callee, port) for every call the rendered wiring makes."""
    found = []
    for where, template, container, _ in cairn_containers(rendered):
        caller = Pod(template["metadata"]["labels"])
        for name, value in env_values(container).items():
            addresses = []
            if name in (
                "CAIRN_REGISTRY",
                "CAIRN_TOKENIZER_REGISTRY_ADDRESS",
                "CAIRN_ROUTER_TOKENIZER_ADDRESS",
            ):
                addresses = [value]
            elif name == "CAIRN_ROUTER_DEPLOYMENTS":
                addresses = [a for group in json.loads(value).values() for a in group]
            for address in addresses:
                landing = reach(rendered, address)
                found.append(
                    (f"{where} {name}", caller, Pod(landing.template["metadata"]["labels"]), landing.port)
                )
    for cluster in rendered.of_kind("RayCluster"):
        model = cluster["metadata"]["labels"]["cairn.dev/deployment"]
        heads, workers = labels_of(rendered, "ray-head", model), labels_of(rendered, "ray-worker", model)
        (scheduler,) = labels_of(rendered, "scheduler", model)
        for ray_pod in heads + workers:
            found.append(
                (f"{model}: ray pod -> registry", ray_pod, labels_of(rendered, "registry")[0], 50055)
            )
        found.append((f"{model}: scheduler -> Ray client", scheduler, heads[0], 10001))
        found.append((f"{model}: scheduler -> worker actor", scheduler, workers[0], EPHEMERAL_PORT))
        found.append((f"{model}: worker -> GCS", workers[0], heads[0], 6379))
        found.append((f"{model}: head -> worker", heads[0], workers[0], EPHEMERAL_PORT))
    if labels_of(rendered, "trainer") or labels_of(rendered, "quantizer"):
        (registry,) = labels_of(rendered, "registry")
        for pod in job_pods():
            found.append(("job pod -> registry", pod, registry, 50055))
    for postgres in labels_of(rendered, "postgresql"):
        for component in ("registry", "trainer", "quantizer"):
            for caller in labels_of(rendered, component):
                found.append((f"{component} -> postgresql", caller, postgres, 5432))
        for pod in job_pods():
            found.append(("job pod -> postgresql", pod, postgres, 5432))
    return found


PROMETHEUS = Pod({"app.kubernetes.io/name": "prometheus"}, namespace="monitoring")
STRANGER = Pod({"app": "debug-shell"})
OUTSIDE = Pod({"app": "client"}, namespace="apps")


@pytest.mark.parametrize("variant", ["default", "gpu-workers", "xpu-workers", "external-db-s3", "ingress-on"])
def test_every_call_of_the_wiring_is_admitted(variant: str) -> None:
    rendered = render_variant(variant)
    found = calls(rendered)
    assert len(found) >= 10
    for what, caller, callee, port in found:
        assert admits(rendered, callee, port, caller), what


@pytest.mark.parametrize("variant", ["default", "gpu-workers", "ingress-on"])
def test_prometheus_reaches_every_metrics_port(variant: str) -> None:
    rendered = render_variant(variant)
    for service in rendered.of_kind("Service"):
        for port in service["spec"]["ports"]:
            if port["name"] == "metrics":
                landing = reach(rendered, f"{service['metadata']['name']}:{port['port']}")
                assert admits(rendered, Pod(landing.template["metadata"]["labels"]), landing.port, PROMETHEUS)
    for head in labels_of(rendered, "ray-head"):
        assert admits(rendered, head, 8080, PROMETHEUS)


def test_anyone_reaches_the_api_and_no_one_else_gets_in() -> None:
    rendered = render_variant("default")
    (router,) = labels_of(rendered, "router")
    for caller in (STRANGER, OUTSIDE):
        assert admits(rendered, router, 8000, caller) and admits(rendered, router, 50051, caller)
    closed = [
        ("tokenizer", 50052),
        ("scheduler", 50053),
        ("registry", 50055),
        ("postgresql", 5432),
        ("ray-head", 10001),
        ("ray-worker", EPHEMERAL_PORT),
    ]
    for component, port in closed:
        for callee in labels_of(rendered, component):
            assert not admits(rendered, callee, port, STRANGER), component
            assert not admits(rendered, callee, port, OUTSIDE), component
    # The router is the only caller of tokenizer and schedulers; the registry is not one of them.
    (registry,) = labels_of(rendered, "registry")
    for component, port in [("tokenizer", 50052), ("scheduler", 50053)]:
        for callee in labels_of(rendered, component):
            assert not admits(rendered, callee, port, registry)


def test_a_scheduler_cannot_reach_another_deployments_workers() -> None:
    rendered = render_variant("gpu-workers")
    (llama,) = labels_of(rendered, "scheduler", "llama-8b")
    for worker in labels_of(rendered, "ray-worker", "qwen-small"):
        assert not admits(rendered, worker, EPHEMERAL_PORT, llama)


def test_api_callers_can_be_restricted() -> None:
    gateway = [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "gateway"}}}]
    rendered = render(merge(variant_values("default"), {"networkPolicy": {"apiFrom": gateway}}))
    (router,) = labels_of(rendered, "router")
    assert admits(rendered, router, 8000, Pod({"app": "envoy"}, namespace="gateway"))
    assert not admits(rendered, router, 8000, OUTSIDE)
    assert not admits(rendered, router, 50051, STRANGER)


def test_no_policies_admit_everything() -> None:
    rendered = render_variant("minimal")
    assert rendered.of_kind("NetworkPolicy") == []
    (registry,) = labels_of(rendered, "registry")
    assert admits(rendered, registry, 50055, STRANGER)
