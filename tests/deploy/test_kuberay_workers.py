"""services/scheduler/kuberay.py against a CustomObjectsApi-shaped fake holding the RayCluster the chart
renders (no cluster exists here: these tests check the objects written and the calls made)."""

from __future__ import annotations

import asyncio
import copy
from typing import Any

import pytest
from deploy_chart import render_variant
from kube_fakes import FakeCore, FakeRayClusters, pod

from cairn.common.errors import (
    DeadlineExceeded,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    PermissionDenied,
    Unavailable,
)
from cairn.services.scheduler import kuberay
from cairn.services.scheduler.kuberay import CONFLICT_RETRIES, RayClusterScaler

CLUSTER = "cairn-llama-8b"


def worker_labels(cluster: str = CLUSTER, group: str = "workers") -> dict[str, str]:
    return {"ray.io/cluster": cluster, "ray.io/group": group, "ray.io/node-type": "worker"}


@pytest.fixture
def clusters() -> FakeRayClusters:
    fake = FakeRayClusters()
    fake.add(render_variant("gpu-workers").get("RayCluster", CLUSTER))
    return fake


def stored(fake: FakeRayClusters, name: str = CLUSTER) -> dict[str, Any]:
    return fake.objects["llm", name]


def group_of(obj: dict[str, Any], name: str = "workers") -> dict[str, Any]:
    return next(g for g in obj["spec"]["workerGroupSpecs"] if g["groupName"] == name)


def scaler(fake: FakeRayClusters, core: FakeCore | None = None, **kwargs: Any) -> RayClusterScaler:
    return RayClusterScaler(CLUSTER, "workers", "llm", custom_api=fake, core_api=core or FakeCore(), **kwargs)


def test_state_reads_the_group_and_counts_only_its_ready_pods(clusters: FakeRayClusters) -> None:
    core = FakeCore(
        pods=[
            pod("w1", worker_labels()),
            pod("w2", worker_labels()),
            pod("starting", worker_labels(), ready=False),
            pod("pending", worker_labels(), phase="Pending", ready=False),
            pod("leaving", worker_labels(), deleting=True),
            pod("other-cluster", worker_labels("cairn-qwen-small")),
            pod("head", {"ray.io/cluster": CLUSTER, "ray.io/group": "headgroup", "ray.io/node-type": "head"}),
        ]
    )
    state = scaler(clusters, core).state()
    assert (state.replicas, state.min_replicas, state.max_replicas, state.ready) == (4, 1, 8, 2)
    assert state.autoscaling is False
    assert core.calls == [
        (
            "list_namespaced_pod",
            {
                "namespace": "llm",
                "label_selector": f"ray.io/cluster={CLUSTER},ray.io/group=workers,ray.io/node-type=worker",
            },
        )
    ]


def test_scale_patches_only_the_replicas_of_its_group_guarded_by_resource_version(
    clusters: FakeRayClusters,
) -> None:
    obj = stored(clusters)
    obj["spec"]["workerGroupSpecs"].append(
        {**copy.deepcopy(group_of(obj)), "groupName": "spare", "replicas": 1}
    )
    before = copy.deepcopy(obj)

    state = scaler(clusters).scale_pods(6)

    assert state.replicas == 6
    patches = [kw for name, kw in clusters.calls if name == "patch_namespaced_custom_object"]
    assert len(patches) == 1
    assert patches[0]["name"] == CLUSTER and patches[0]["namespace"] == "llm"
    body = patches[0]["body"]
    assert body["metadata"] == {"resourceVersion": before["metadata"]["resourceVersion"]}
    assert set(body) == {"metadata", "spec"} and set(body["spec"]) == {"workerGroupSpecs"}
    after = stored(clusters)
    expected = copy.deepcopy(before)
    group_of(expected)["replicas"] = 6
    expected["metadata"]["resourceVersion"] = after["metadata"]["resourceVersion"]
    assert after == expected


@pytest.mark.parametrize(
    ("replicas", "bounds"),
    [(12, (1, 12)), (0, (0, 8)), (5, (1, 8))],
)
def test_scale_widens_bounds_that_would_clamp_it(
    clusters: FakeRayClusters, replicas: int, bounds: tuple[int, int]
) -> None:
    state = scaler(clusters).scale_pods(replicas)
    group = group_of(stored(clusters))
    assert (group["replicas"], group["minReplicas"], group["maxReplicas"]) == (replicas, *bounds)
    assert (state.min_replicas, state.max_replicas) == bounds


def test_set_bounds_moves_replicas_into_the_range(clusters: FakeRayClusters) -> None:
    state = scaler(clusters).set_bounds(6, 10)
    assert (state.replicas, state.min_replicas, state.max_replicas) == (6, 6, 10)
    state = scaler(clusters).set_bounds(0, 2)
    assert (state.replicas, state.min_replicas, state.max_replicas) == (2, 0, 2)


@pytest.mark.parametrize(
    "call",
    [
        lambda w: w.scale_pods(-1),
        lambda w: w.scale_workers(-1),
        lambda w: w.set_bounds(3, 2),
        lambda w: w.set_bounds(-1, 2),
    ],
)
def test_bad_counts_are_refused_before_any_call(clusters: FakeRayClusters, call: Any) -> None:
    with pytest.raises(InvalidArgument):
        call(scaler(clusters))
    assert clusters.calls == []


def test_a_concurrent_change_is_kept_and_the_scale_reapplied(clusters: FakeRayClusters) -> None:
    """The Ray autoscaler (or kubectl) writes between our read and our patch: 409, re-read, re-apply."""
    writes = []

    def autoscaler(obj: dict[str, Any]) -> None:
        if not writes:
            writes.append(1)
            clusters.bump("llm", CLUSTER, lambda o: group_of(o).update(maxReplicas=20))

    clusters.before_patch = autoscaler
    state = scaler(clusters).scale_pods(3)
    group = group_of(stored(clusters))
    assert (group["replicas"], group["maxReplicas"]) == (3, 20)
    assert (state.replicas, state.max_replicas) == (3, 20)
    assert [name for name, _ in clusters.calls].count("patch_namespaced_custom_object") == 2


def test_endless_conflicts_give_up_as_unavailable(clusters: FakeRayClusters) -> None:
    clusters.before_patch = lambda obj: clusters.bump("llm", CLUSTER, lambda o: None)
    with pytest.raises(Unavailable, match="kept changing"):
        scaler(clusters).scale_pods(3)
    assert [name for name, _ in clusters.calls].count("patch_namespaced_custom_object") == CONFLICT_RETRIES
    assert group_of(stored(clusters))["replicas"] == 4


def test_missing_cluster_or_group_is_not_found(clusters: FakeRayClusters) -> None:
    with pytest.raises(NotFound, match="RayCluster llm/nope not found"):
        RayClusterScaler("nope", "workers", "llm", custom_api=clusters, core_api=FakeCore()).scale_pods(1)
    with pytest.raises(NotFound, match="no worker group 'gpus' \\(groups: 'workers'\\)"):
        RayClusterScaler(CLUSTER, "gpus", "llm", custom_api=clusters, core_api=FakeCore()).state()


@pytest.mark.parametrize(("workers", "pods"), [(8, 4), (7, 4), (1, 1), (0, 0), (10, 5)])
def test_workers_become_pods_by_the_accelerators_each_pod_has(
    clusters: FakeRayClusters, workers: int, pods: int
) -> None:
    """llama-8b's pods have 2 GPUs each: one worker per GPU."""
    state = scaler(clusters).scale_workers(workers)
    assert (state.replicas, state.workers_per_pod) == (pods, 2)
    assert group_of(stored(clusters))["replicas"] == pods


@pytest.mark.parametrize(
    ("variant", "cluster", "per_pod"),
    [("xpu-workers", "cairn-llama-xpu", 4), ("cpu-workers", "cairn-tiny", 1), ("default", "cairn-llama", 1)],
)
def test_workers_per_pod_follow_the_accelerator(variant: str, cluster: str, per_pod: int) -> None:
    fake = FakeRayClusters()
    fake.add(render_variant(variant).get("RayCluster", cluster))
    state = RayClusterScaler(cluster, "workers", "llm", custom_api=fake, core_api=FakeCore()).state()
    assert (state.workers_per_pod, state.workers) == (per_pod, state.replicas * per_pod)


@pytest.mark.parametrize(("tp", "per_pod", "pods"), [(2, 1, 5), (1, 2, 3)])
def test_a_tensor_parallel_worker_takes_its_accelerators_of_a_pod(
    clusters: FakeRayClusters, tp: int, per_pod: int, pods: int
) -> None:
    """llama-8b's pods have 2 GPUs: one TP=2 group fits a pod, so 5 workers need 5 pods (3 at TP=1)."""
    state = scaler(clusters, accelerators_per_worker=tp).scale_workers(5)
    assert (state.workers_per_pod, state.replicas) == (per_pod, pods)
    assert group_of(stored(clusters))["replicas"] == pods


def test_the_rendered_xpu_pods_host_two_tensor_parallel_pairs() -> None:
    """The xpu-workers variant: 4 GPUs per pod and tensor_parallel_size 2 in its scheduler config."""
    fake = FakeRayClusters()
    fake.add(render_variant("xpu-workers").get("RayCluster", "cairn-llama-xpu"))
    nodes = RayClusterScaler(
        "cairn-llama-xpu", "workers", "llm", custom_api=fake, core_api=FakeCore(), accelerators_per_worker=2
    )
    assert nodes.state().workers_per_pod == 2


def test_a_pod_too_small_for_one_tensor_parallel_group_is_refused(clusters: FakeRayClusters) -> None:
    with pytest.raises(FailedPrecondition, match="each pod 2 accelerators, but a worker needs 4"):
        scaler(clusters, accelerators_per_worker=4).state()
    with pytest.raises(InvalidArgument, match="accelerators_per_worker must be >= 1"):
        scaler(clusters, accelerators_per_worker=0)


def test_an_unchanged_size_writes_nothing(clusters: FakeRayClusters) -> None:
    scaler(clusters).scale_workers(8)
    assert "patch_namespaced_custom_object" not in [name for name, _ in clusters.calls]


def test_the_pools_node_scaler_interface(clusters: FakeRayClusters) -> None:
    """What the worker pool calls (`await scale(workers)`) and the count a scheduler starts with."""
    nodes = scaler(clusters)
    assert asyncio.run(nodes.desired_workers()) == 8
    asyncio.run(nodes.scale(3))
    assert group_of(stored(clusters))["replicas"] == 2
    assert asyncio.run(nodes.desired_workers()) == 4


def test_follow_reports_outside_changes_and_survives_api_errors(clusters: FakeRayClusters) -> None:
    """helm upgrade, then an API outage, then kubectl: the scheduler hears of each size once."""
    changes = [
        lambda: clusters.bump("llm", CLUSTER, lambda o: group_of(o).update(replicas=6)),
        lambda: setattr(clusters, "fail_with", 503),
        lambda: setattr(clusters, "fail_with", None),
        lambda: clusters.bump("llm", CLUSTER, lambda o: group_of(o).update(replicas=1)),
    ]
    seen: list[int] = []

    async def pool_scale(workers: int) -> None:
        seen.append(workers)

    def reads() -> int:
        return [name for name, _ in clusters.calls].count("get_namespaced_custom_object")

    async def run() -> None:
        follower = asyncio.create_task(scaler(clusters).follow(pool_scale, 8, interval_s=0))
        for change in changes:
            change()
            # Two reads after the change: at least one whole poll saw it.
            settled = reads() + 2
            while reads() < settled:
                await asyncio.sleep(0)
        follower.cancel()
        with pytest.raises(asyncio.CancelledError):
            await follower

    asyncio.run(run())
    assert seen == [12, 2]


@pytest.mark.parametrize(
    ("status", "error"), [(403, PermissionDenied), (500, Unavailable), (503, Unavailable)]
)
def test_api_failures_map_to_typed_errors(clusters: FakeRayClusters, status: int, error: type) -> None:
    clusters.fail_with = status
    with pytest.raises(error):
        scaler(clusters).scale_pods(2)


class FakeTime:
    """A clock that only moves when slept on, running `on_sleep` each time (the cluster's progress)."""

    def __init__(self, on_sleep: Any) -> None:
        self.now = 0.0
        self.sleeps = 0
        self.on_sleep = on_sleep

    def clock(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += seconds
        self.sleeps += 1
        self.on_sleep(self.sleeps)


def test_wait_ready_returns_once_the_desired_pods_are_ready(clusters: FakeRayClusters) -> None:
    core = FakeCore(pods=[pod("w0", worker_labels())])

    def kuberay_brings_up_a_pod(n: int) -> None:
        core.pods.append(pod(f"w{n}", worker_labels()))

    time = FakeTime(kuberay_brings_up_a_pod)
    state = scaler(clusters, core, sleep=time.sleep, clock=time.clock, poll_interval_s=5).wait_ready()
    assert (state.ready, state.replicas, time.sleeps) == (4, 4, 3)


def test_wait_ready_for_a_scale_down_waits_for_the_extra_pods_to_go(clusters: FakeRayClusters) -> None:
    core = FakeCore(pods=[pod(f"w{i}", worker_labels()) for i in range(4)])

    def kuberay_deletes_one(n: int) -> None:
        core.pods[n - 1] = pod(f"w{n - 1}", worker_labels(), deleting=True)

    time = FakeTime(kuberay_deletes_one)
    state = scaler(clusters, core, sleep=time.sleep, clock=time.clock).wait_ready(2)
    assert (state.ready, time.sleeps) == (2, 2)


def test_wait_ready_times_out_with_what_it_saw(clusters: FakeRayClusters) -> None:
    core = FakeCore(
        pods=[pod("w0", worker_labels()), pod("stuck", worker_labels(), phase="Pending", ready=False)]
    )
    time = FakeTime(lambda n: None)
    with pytest.raises(DeadlineExceeded, match="1 of 4 worker pods ready after 60 s"):
        scaler(clusters, core, sleep=time.sleep, clock=time.clock, poll_interval_s=10).wait_ready(
            timeout_s=60
        )
    assert time.sleeps == 6


def test_namespace_defaults_to_the_pods_own(tmp_path: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    namespace_file = tmp_path / "namespace"
    namespace_file.write_text("serving\n")
    monkeypatch.setattr(kuberay, "NAMESPACE_FILE", namespace_file)
    assert RayClusterScaler(CLUSTER, "workers").namespace == "serving"
    monkeypatch.setattr(kuberay, "NAMESPACE_FILE", tmp_path / "absent")
    assert RayClusterScaler(CLUSTER, "workers").namespace == "default"
