"""Runtime dependencies are bounded, and what is installed here is inside the bounds.

A new major release of a fast-moving library (transformers above all) can
break a fresh install; an upper bound keeps pip from taking it until the
tests have run against it. pytest fails on deprecation warnings
(``filterwarnings`` in pyproject.toml), which is how an API on its way out
shows up before a bound is raised.
"""

from __future__ import annotations

import importlib.metadata
from pathlib import Path

import pytest
from packaging.requirements import Requirement

tomllib = pytest.importorskip("tomllib", reason="Python >= 3.11 reads pyproject.toml")
REPO = Path(__file__).resolve().parent.parent
PROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
RUNTIME = [Requirement(r) for r in PROJECT["dependencies"] + PROJECT["optional-dependencies"]["model"]]


@pytest.mark.parametrize("req", RUNTIME, ids=lambda r: r.name)
def test_every_runtime_dependency_has_an_upper_bound(req: Requirement) -> None:
    assert any(spec.operator in ("<", "<=", "~=", "==") for spec in req.specifier), f"{req}: no upper bound"


@pytest.mark.parametrize("req", RUNTIME, ids=lambda r: r.name)
def test_installed_version_is_inside_the_bounds(req: Requirement) -> None:
    try:
        version = importlib.metadata.version(req.name)
    except importlib.metadata.PackageNotFoundError:
        pytest.skip(f"{req.name} is not installed here")
    assert req.specifier.contains(version, prereleases=True), (
        f"{req.name} {version} is outside {req.specifier}"
    )


def test_the_base_install_holds_no_model_package() -> None:
    base = {Requirement(r).name for r in PROJECT["dependencies"]}
    assert not base & {"torch", "transformers", "numpy", "scikit-learn", "safetensors", "gguf", "accelerate"}
