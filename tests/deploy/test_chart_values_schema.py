"""values.schema.json refuses bad values with a message naming the value, and the chart's own checks
refuse combinations no schema can express; Helm applies both on install, upgrade and template."""

from __future__ import annotations

import pytest
from deploy_chart import VARIANTS, merge, render_error, schema_error

MODEL = {"name": "llama", "model": "llama@production"}

# name -> (values, what the message must name)
BAD_VALUES = {
    "negative router replicas": ({"router": {"replicas": -1}}, "/router/replicas"),
    "negative tokenizer replicas": ({"tokenizer": {"replicas": -3}}, "/tokenizer/replicas"),
    "negative registry replicas": ({"registry": {"replicas": -1}}, "/registry/replicas"),
    "negative worker replicas": (
        {"models": [{**MODEL, "workers": {"replicas": -1}}]},
        "/models/0/workers/replicas",
    ),
    "negative default worker replicas": (
        {"modelDefaults": {"workers": {"replicas": -2}}},
        "/modelDefaults/workers/replicas",
    ),
    "no accelerators per pod": (
        {"models": [{**MODEL, "workers": {"acceleratorsPerPod": 0}}]},
        "/models/0/workers/acceleratorsPerPod",
    ),
    "unknown accelerator of a model": (
        {"models": [{**MODEL, "accelerator": "amd-rocm"}]},
        "/models/0/accelerator",
    ),
    "unknown accelerator of trainer jobs": (
        {"trainer": {"jobs": {"accelerator": "tpu"}}},
        "/trainer/jobs/accelerator",
    ),
    "no database URL with the bundled database off": (
        {"postgresql": {"enabled": False}},
        "/externalDatabase/existingSecret",
    ),
    "empty database Secret with the bundled database off": (
        {"postgresql": {"enabled": False}, "externalDatabase": {"existingSecret": ""}},
        "/externalDatabase/existingSecret",
    ),
    "S3 blobs without a bucket": ({"registry": {"blobs": {"type": "s3"}}}, "/registry/blobs/s3/bucket"),
    "unknown blob store": ({"registry": {"blobs": {"type": "gcs"}}}, "/registry/blobs/type"),
    "model name not a DNS label": ({"models": [{**MODEL, "name": "Llama_8B"}]}, "/models/0/name"),
    "model name too long for resource names": ({"models": [{**MODEL, "name": "a" * 21}]}, "/models/0/name"),
    "model without a registry reference": ({"models": [{"name": "llama"}]}, "missing property 'model'"),
    "misspelt top-level key": ({"routr": {"replicas": 2}}, "routr"),
    "misspelt nested key": ({"router": {"autoscalling": {"enabled": False}}}, "autoscalling"),
    "quantity that is not one": (
        {"modelDefaults": {"workers": {"shmSize": "lots"}}},
        "/modelDefaults/workers/shmSize",
    ),
    "port out of range": ({"router": {"httpPort": 70000}}, "/router/httpPort"),
    "unknown log level": ({"logLevel": "verbose"}, "/logLevel"),
    "HPA below one replica": (
        {"router": {"autoscaling": {"minReplicas": 0}}},
        "/router/autoscaling/minReplicas",
    ),
    "bad scrape interval": ({"serviceMonitor": {"interval": "30 seconds"}}, "/serviceMonitor/interval"),
}


@pytest.mark.parametrize("case", BAD_VALUES)
def test_the_schema_refuses_bad_values(case: str) -> None:
    values, named = BAD_VALUES[case]
    assert named in schema_error(values)
    # `helm template` / `install` apply the same schema.
    assert named in render_error(values)


@pytest.mark.parametrize("variant", VARIANTS)
def test_the_schema_accepts_every_variant(variant: str) -> None:
    with pytest.raises(AssertionError, match="rendered although"):
        render_error(VARIANTS[variant])


TEMPLATE_CHECKS = {
    "worker replicas above the maximum": (
        {"models": [{**MODEL, "workers": {"replicas": 9, "autoscaling": {"maxReplicas": 8}}}]},
        "models[0].workers.replicas (9) must lie within autoscaling.minReplicas (1) and maxReplicas (8)",
    ),
    "worker replicas below the minimum": (
        {
            "models": [
                {**MODEL, "workers": {"replicas": 1, "autoscaling": {"enabled": True, "minReplicas": 2}}}
            ]
        },
        "models[0].workers.replicas (1) must lie within",
    ),
    "two deployments with one name": ({"models": [MODEL, MODEL]}, 'the name "llama" appears twice'),
    "registry replicas sharing a ReadWriteOnce volume": (
        {"registry": {"replicas": 2}},
        "registry.replicas > 1 needs blobs every replica can reach",
    ),
    "HPA minimum above its maximum": (
        {"tokenizer": {"autoscaling": {"minReplicas": 5, "maxReplicas": 3}}},
        "tokenizer.autoscaling.minReplicas must not exceed maxReplicas",
    ),
}


@pytest.mark.parametrize("case", TEMPLATE_CHECKS)
def test_the_chart_refuses_inconsistent_values(case: str) -> None:
    values, message = TEMPLATE_CHECKS[case]
    assert message in render_error(values)


def test_registry_replicas_may_share_a_read_write_many_claim() -> None:
    values = merge(
        VARIANTS["default"],
        {"registry": {"replicas": 2, "blobs": {"pvc": {"accessModes": ["ReadWriteMany"]}}}},
    )
    with pytest.raises(AssertionError, match="rendered although"):
        render_error(values)
