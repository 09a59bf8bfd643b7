"""Optional and per-tier features: autoscalers, disruption budgets, ingress, ServiceMonitor, NOTES, the
per-service config file, registry storage, the bundled database and how model entries merge."""

from __future__ import annotations

import base64

import pytest
import yaml
from deploy_chart import PASSWORD, Rendered, env_values, merge, render, render_variant, variant_values


def container(rendered: Rendered, deployment: str) -> dict:
    return rendered.get("Deployment", deployment)["spec"]["template"]["spec"]["containers"][0]


def test_hpas_own_the_replicas_of_router_and_tokenizer() -> None:
    rendered = render_variant("autoscaling-on")
    bounds = {}
    for hpa in rendered.of_kind("HorizontalPodAutoscaler"):
        target = hpa["spec"]["scaleTargetRef"]
        deployment = rendered.get(target["kind"], target["name"])
        assert "replicas" not in deployment["spec"]
        bounds[target["name"]] = (hpa["spec"]["minReplicas"], hpa["spec"]["maxReplicas"])
    assert bounds == {"cairn-router": (3, 20), "cairn-tokenizer": (2, 12)}


def test_without_hpas_the_replica_counts_are_set() -> None:
    rendered = render_variant("autoscaling-off")
    assert rendered.of_kind("HorizontalPodAutoscaler") == []
    replicas = {d["metadata"]["name"]: d["spec"]["replicas"] for d in rendered.of_kind("Deployment")}
    assert (replicas["cairn-router"], replicas["cairn-tokenizer"]) == (3, 4)


def test_worker_autoscaling_turns_on_kuberays_autoscaler_within_the_bounds() -> None:
    (cluster,) = render_variant("autoscaling-on").of_kind("RayCluster")
    spec = cluster["spec"]
    assert spec["enableInTreeAutoscaling"] is True
    assert spec["autoscalerOptions"]["upscalingMode"] == "Default"
    assert spec["autoscalerOptions"]["idleTimeoutSeconds"] == 60
    (group,) = spec["workerGroupSpecs"]
    assert (group["replicas"], group["minReplicas"], group["maxReplicas"]) == (2, 1, 6)
    (cluster,) = render_variant("default").of_kind("RayCluster")
    assert cluster["spec"]["enableInTreeAutoscaling"] is False
    assert "autoscalerOptions" not in cluster["spec"]


def test_a_model_entry_overrides_defaults_even_with_false_and_zero() -> None:
    values = merge(
        PASSWORD,
        {
            "modelDefaults": {"workers": {"replicas": 2, "autoscaling": {"enabled": True, "minReplicas": 1}}},
            "models": [
                {"name": "a", "model": "a@1"},
                {
                    "name": "b",
                    "model": "b@1",
                    "workers": {"replicas": 0, "autoscaling": {"enabled": False, "minReplicas": 0}},
                },
            ],
        },
    )
    rendered = render(values)
    clusters = {c["metadata"]["name"]: c["spec"] for c in rendered.of_kind("RayCluster")}
    assert clusters["cairn-a"]["enableInTreeAutoscaling"] is True
    assert clusters["cairn-a"]["workerGroupSpecs"][0]["replicas"] == 2
    assert clusters["cairn-b"]["enableInTreeAutoscaling"] is False
    b = clusters["cairn-b"]["workerGroupSpecs"][0]
    assert (b["replicas"], b["minReplicas"], b["maxReplicas"]) == (0, 0, 8)
    # Maps merge key by key: b kept the default resources and shared memory.
    assert b["template"]["spec"]["containers"][0]["resources"]["requests"]["memory"] == "64Gi"


@pytest.mark.parametrize("variant", ["default", "gpu-workers", "external-db-s3"])
def test_disruption_budgets_cover_the_replicated_tiers(variant: str) -> None:
    rendered = render_variant(variant)
    covered = set()
    for budget in rendered.of_kind("PodDisruptionBudget"):
        assert budget["spec"]["maxUnavailable"] == 1
        selected = rendered.workloads_selected_by(budget["spec"]["selector"]["matchLabels"])
        assert len(selected) == 1, budget["metadata"]["name"]
        covered.add(selected[0][0])
    expected = {"Deployment/cairn-router", "Deployment/cairn-tokenizer"}
    expected |= {f"RayCluster/{c['metadata']['name']} group workers" for c in rendered.of_kind("RayCluster")}
    if variant == "external-db-s3":
        expected.add("Deployment/cairn-registry")
    assert covered == expected


def test_ingress_routes_http_and_grpc_to_the_router() -> None:
    rendered = render_variant("ingress-on")
    service = rendered.get("Service", "cairn-router")
    ports = {p["name"] for p in service["spec"]["ports"]}
    routes = {}
    for ingress in rendered.of_kind("Ingress"):
        assert ingress["spec"]["ingressClassName"] == "nginx"
        for rule in ingress["spec"]["rules"]:
            for path in rule["http"]["paths"]:
                backend = path["backend"]["service"]
                assert backend["name"] == "cairn-router" and backend["port"]["name"] in ports
                routes[rule["host"]] = backend["port"]["name"]
    assert routes == {"llm.example.com": "http", "grpc.llm.example.com": "grpc"}
    grpc = rendered.get("Ingress", "cairn-router-grpc")
    assert grpc["metadata"]["annotations"] == {"nginx.ingress.kubernetes.io/backend-protocol": "GRPC"}
    assert rendered.get("Ingress", "cairn-router")["spec"]["tls"] == [
        {"secretName": "cairn-tls", "hosts": ["llm.example.com"]}
    ]


def test_servicemonitor_scrapes_every_metrics_port() -> None:
    rendered = render_variant("ingress-on")
    (monitor,) = rendered.of_kind("ServiceMonitor")
    assert monitor["metadata"]["labels"]["release"] == "prometheus"
    assert monitor["spec"]["namespaceSelector"] == {"matchNames": ["llm"]}
    assert [e["port"] for e in monitor["spec"]["endpoints"]] == ["metrics"]
    selector = monitor["spec"]["selector"]["matchLabels"]
    with_metrics = {
        s["metadata"]["name"]
        for s in rendered.of_kind("Service")
        if any(p["name"] == "metrics" for p in s["spec"]["ports"])
    }
    selected = {
        s["metadata"]["name"]
        for s in rendered.of_kind("Service")
        if all(s["metadata"]["labels"].get(k) == v for k, v in selector.items())
    }
    assert with_metrics and with_metrics <= selected


def test_notes_tell_how_to_reach_the_api() -> None:
    notes = render_variant("default").notes
    assert "kubectl -n llm port-forward svc/cairn-router 8000:8000 50051:50051" in notes
    assert "http://cairn-router.llm.svc:8000/v1" in notes
    assert '"model": "llama"' in notes
    assert "accepts every caller" in notes
    assert "kubectl -n llm patch raycluster cairn-llama" in notes
    notes = render_variant("ingress-on").notes
    assert "https://llm.example.com/v1" in notes and "grpc.llm.example.com:80" in notes
    assert "Authorization: Bearer" in notes and "accepts every caller" not in notes


def test_a_service_config_reaches_the_service_as_its_config_file() -> None:
    rendered = render_variant("ingress-on")
    config_map = rendered.get("ConfigMap", "cairn-tokenizer-config")
    assert yaml.safe_load(config_map["data"]["config.yaml"]) == {
        "preload": ["llama@production"],
        "threads": 4,
    }
    deployment = rendered.get("Deployment", "cairn-tokenizer")
    pod = deployment["spec"]["template"]["spec"]
    assert env_values(pod["containers"][0])["CAIRN_TOKENIZER_CONFIG"] == "/etc/cairn/config.yaml"
    (mount,) = [m for m in pod["containers"][0]["volumeMounts"] if m["mountPath"] == "/etc/cairn"]
    (volume,) = [v for v in pod["volumes"] if v["name"] == mount["name"]]
    assert volume["configMap"]["name"] == "cairn-tokenizer-config"
    # A config change rolls the pods; services without one have no config file.
    changed = render(merge(variant_values("ingress-on"), {"tokenizer": {"config": {"threads": 8}}}))
    checksum = deployment["spec"]["template"]["metadata"]["annotations"]["checksum/config"]
    assert (
        changed.get("Deployment", "cairn-tokenizer")["spec"]["template"]["metadata"]["annotations"][
            "checksum/config"
        ]
        != checksum
    )
    assert "CAIRN_ROUTER_CONFIG" not in env_values(container(rendered, "cairn-router"))


def test_registry_blobs_on_a_claim_run_one_pod_at_a_time() -> None:
    rendered = render_variant("default")
    registry = rendered.get("Deployment", "cairn-registry")
    assert registry["spec"]["strategy"]["type"] == "Recreate" and registry["spec"]["replicas"] == 1
    pod = registry["spec"]["template"]["spec"]
    (mount,) = [m for m in pod["containers"][0]["volumeMounts"] if m["mountPath"] == "/data/blobs"]
    (volume,) = [v for v in pod["volumes"] if v["name"] == mount["name"]]
    claim = rendered.get("PersistentVolumeClaim", volume["persistentVolumeClaim"]["claimName"])
    assert claim["metadata"]["annotations"]["helm.sh/resource-policy"] == "keep"
    assert env_values(pod["containers"][0])["CAIRN_REGISTRY_BLOB_URL"] == "file:///data/blobs"


def test_registry_blobs_in_s3_scale_out() -> None:
    rendered = render_variant("external-db-s3")
    registry = rendered.get("Deployment", "cairn-registry")
    assert registry["spec"]["strategy"]["type"] == "RollingUpdate" and registry["spec"]["replicas"] == 3
    assert not any(v.get("persistentVolumeClaim") for v in registry["spec"]["template"]["spec"]["volumes"])
    names = {c["metadata"]["name"] for c in rendered.of_kind("PersistentVolumeClaim")}
    assert names == {"cairn-trainer-work", "cairn-quantizer-work"}


def test_bundled_postgresql_reads_its_password_from_the_secret_it_serves_in_the_url() -> None:
    rendered = render_variant("default")
    secret = rendered.get("Secret", "cairn-database")
    data = {k: base64.b64decode(v).decode() for k, v in secret["data"].items()}
    password = PASSWORD["postgresql"]["auth"]["password"]
    assert data == {
        "password": password,
        "url": f"postgresql+psycopg://cairn:{password}@cairn-postgresql:5432/cairn",
    }
    assert secret["metadata"]["annotations"]["helm.sh/resource-policy"] == "keep"
    statefulset = rendered.get("StatefulSet", "cairn-postgresql")
    env = {e["name"]: e for e in statefulset["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert env["POSTGRES_PASSWORD"]["valueFrom"]["secretKeyRef"] == {
        "name": "cairn-database",
        "key": "password",
    }
    assert rendered.get("Service", "cairn-postgresql")["spec"]["ports"][0]["port"] == 5432


def test_a_generated_password_is_strong_and_differs_per_install() -> None:
    passwords = {
        base64.b64decode(
            render({"fullnameOverride": f"x{i}"}).get("Secret", f"x{i}-database")["data"]["password"]
        )
        for i in range(2)
    }
    assert len(passwords) == 2 and all(len(p) == 32 for p in passwords)
