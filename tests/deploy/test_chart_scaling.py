"""Scaling one deployment's workers is one value: it changes the replicas of that deployment's worker
group and nothing else in the rendered manifests, so no pod template changes and nothing restarts."""

from __future__ import annotations

import copy
import difflib
import re
from typing import Any

from deploy_chart import GPU_WORKERS, PASSWORD, REPO, chart_defaults, merge, render

OPERATIONS = REPO / "docs" / "operations.md"


def with_model(values: dict[str, Any], index: int, workers: dict[str, Any]) -> dict[str, Any]:
    """`--set models[index].workers.<key>=...` on top of `values`: Helm edits that list element in place."""
    models = copy.deepcopy(values.get("models", chart_defaults()["models"]))
    models[index] = merge(models[index], {"workers": workers})
    return merge(values, {"models": models})


def differences(before: Any, after: Any, path: str = "") -> list[str]:
    """JSON paths where two rendered objects differ."""
    if isinstance(before, dict) and isinstance(after, dict):
        return [
            p
            for key in before.keys() | after.keys()
            for p in differences(before.get(key), after.get(key), f"{path}.{key}")
        ]
    if isinstance(before, list) and isinstance(after, list) and len(before) == len(after):
        return [
            p
            for i, (b, a) in enumerate(zip(before, after, strict=True))
            for p in differences(b, a, f"{path}[{i}]")
        ]
    return [] if before == after else [path]


def changed(before_values: dict[str, Any], after_values: dict[str, Any]) -> dict[str, list[str]]:
    before, after = render(before_values).objects, render(after_values).objects
    assert len(before) == len(after)
    found = {}
    for b, a in zip(before, after, strict=True):
        paths = differences(b, a)
        if paths:
            found[f"{b['kind']}/{b['metadata']['name']}"] = paths
    return found


def test_one_value_scales_one_deployment_and_nothing_else() -> None:
    assert changed(PASSWORD, with_model(PASSWORD, 0, {"replicas": 3})) == {
        "RayCluster/cairn-llama": [".spec.workerGroupSpecs[0].replicas"]
    }


def test_other_deployments_are_untouched() -> None:
    base = merge(PASSWORD, GPU_WORKERS)
    assert changed(base, with_model(base, 1, {"replicas": 5})) == {
        "RayCluster/cairn-qwen-small": [".spec.workerGroupSpecs[0].replicas"]
    }


def test_autoscaling_bounds_are_one_value_each() -> None:
    base = merge(PASSWORD, {"modelDefaults": {"workers": {"autoscaling": {"enabled": True}}}})
    assert changed(base, with_model(base, 0, {"autoscaling": {"maxReplicas": 16}})) == {
        "RayCluster/cairn-llama": [".spec.workerGroupSpecs[0].maxReplicas"]
    }


def rendered_diff(context: int) -> list[str]:
    before = render(PASSWORD).text.splitlines()
    after = render(with_model(PASSWORD, 0, {"replicas": 3})).text.splitlines()
    return list(difflib.unified_diff(before, after, "before", "after", n=context, lineterm=""))


def test_the_text_diff_is_one_line() -> None:
    changes = [line for line in rendered_diff(0) if line[:1] in "+-" and line[:3] not in ("---", "+++")]
    assert changes == ["-      replicas: 1", "+      replicas: 3"]


def test_the_operations_guide_shows_the_rendered_diff() -> None:
    (block,) = re.findall(r"```diff\n(.*?)```", OPERATIONS.read_text(), flags=re.S)
    shown = [line for line in block.splitlines() if not line.startswith("@@")]
    assert shown == [line for line in rendered_diff(2) if not line.startswith("@@")]
