"""deploy/docker/Dockerfile agrees with the project and the chart. No container engine runs here, so the
file is read, not built: its targets, the extras they install (which must exist in pyproject.toml, and
together cover every runtime extra), CUDA kept out of the CPU image, the Ray and Python versions the
chart and the images must share, and the user the chart runs pods as."""

from __future__ import annotations

import importlib.metadata
import re

import pytest
from deploy_chart import REPO, chart_defaults

DOCKERFILE = REPO / "deploy" / "docker" / "Dockerfile"
DOCKERIGNORE = REPO / "deploy" / "docker" / "Dockerfile.dockerignore"
# Extras no image needs.
NOT_IN_IMAGES = {"test"}


def stages() -> dict[str, str]:
    """Build stage name -> its instructions."""
    text = DOCKERFILE.read_text().replace("\\\n", " ")
    parts = re.split(r"^FROM\s+\S+\s+AS\s+(\S+)\s*$", text, flags=re.M)
    return dict(zip(parts[1::2], parts[2::2], strict=True))


def extras(stage: str) -> set[str]:
    (found,) = re.findall(r"cairn-\*\.whl\)\[([a-z0-9_,-]+)\]", stages()[stage])
    return set(found.split(","))


def build_arg(name: str) -> str:
    (value,) = re.findall(rf"^ARG {name}=(\S+)$", DOCKERFILE.read_text(), flags=re.M)
    return value


def project_extras() -> set[str]:
    """The extras pyproject.toml declares, as the installed project reports them."""
    return set(importlib.metadata.metadata("cairn").get_all("Provides-Extra"))


def test_one_target_per_image_the_chart_runs() -> None:
    assert set(stages()) == {"wheel", "cpu", "gpu", "xpu"}
    defaults = chart_defaults()
    images = {
        defaults["image"]["repository"].rsplit("/", 1)[1],
        *(
            a["image"]["repository"].rsplit("/", 1)[1]
            for a in defaults["accelerators"].values()
            if a["image"]["repository"]
        ),
    }
    assert images == {"cairn", "cairn-gpu", "cairn-xpu"}


@pytest.mark.parametrize("stage", ["cpu", "gpu", "xpu"])
def test_images_install_extras_that_exist(stage: str) -> None:
    assert extras(stage) <= project_extras()


def test_every_runtime_extra_is_in_some_image() -> None:
    installed = extras("cpu") | extras("gpu") | extras("xpu")
    assert project_extras() - NOT_IN_IMAGES <= installed


def test_the_cpu_image_carries_no_cuda() -> None:
    cpu = stages()["cpu"]
    assert "gpu" not in extras("cpu") and "qlora" not in extras("cpu")
    assert "--index-url https://download.pytorch.org/whl/cpu" in cpu
    # The build itself fails on a CUDA torch or any nvidia-* wheel.
    assert "torch.version.cuda is not None" in cpu and "grep -i '^nvidia-'" in cpu


def test_the_xpu_image_keeps_cuda_triton_out() -> None:
    assert "gpu" not in extras("xpu")
    assert "XPU_TORCH_INDEX" in stages()["xpu"]


def test_the_gpu_image_builds_on_a_cuda_pytorch_base_with_the_shared_python() -> None:
    assert build_arg("GPU_BASE_IMAGE").startswith("pytorch/pytorch:") and "cuda" in build_arg(
        "GPU_BASE_IMAGE"
    )
    gpu = stages()["gpu"]
    assert "sys.version_info" in gpu and "${PYTHON_VERSION}" in gpu
    assert "constraints/cuda.txt" in gpu and "torch.version.cuda is None" in gpu


def test_every_image_pins_the_ray_version_the_chart_declares() -> None:
    assert build_arg("RAY_VERSION") == chart_defaults()["ray"]["version"]
    for stage in ("cpu", "gpu", "xpu"):
        assert "ray==${RAY_VERSION}" in stages()[stage], stage
        # KubeRay's Ray pod probes call wget.
        assert re.search(r"apt-get install [^&]*\bwget\b", stages()[stage]), stage


def test_images_run_as_the_user_the_chart_expects() -> None:
    security = chart_defaults()["podSecurityContext"]
    user = f"{security['runAsUser']}:{security['runAsGroup']}"
    for stage in ("cpu", "gpu", "xpu"):
        assert f"USER {user}" in stages()[stage], stage
        assert f"--uid {security['runAsUser']}" in stages()[stage], stage


def test_the_build_copies_what_exists_and_the_ignore_file_keeps_it() -> None:
    text = DOCKERFILE.read_text()
    sources = [s for line in re.findall(r"^COPY (?!--)(.+) \S+$", text, flags=re.M) for s in line.split()]
    assert sources
    ignored = {
        line.strip() for line in DOCKERIGNORE.read_text().splitlines() if line and not line.startswith("#")
    }
    for source in sources:
        assert (REPO / source).exists(), source
        assert source.split("/")[0] not in ignored, source
