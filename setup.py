"""Package discovery only; everything else lives in pyproject.toml.

The user-fixed layout keeps `services/` and `kernels/` at the top of the repo;
they install as `cairn.services` and `cairn.kernels`, so their subpackages are
found here and mapped under `cairn`.
"""

from setuptools import find_packages, setup


def _mapped(root: str) -> list[str]:
    return [f"cairn.{root}"] + [f"cairn.{root}.{p}" for p in find_packages(root)]


setup(packages=find_packages(".", include=["cairn", "cairn.*"]) + _mapped("services") + _mapped("kernels"))
