"""The base install, as a new user gets it: a fresh virtualenv, ``pip install .``, no extras.

The sidecar must run there without torch or any other package of the
``model`` extra, and a model command must say which extra it needs.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parent.parent


def _run(argv: list[str], timeout: float = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, capture_output=True, text=True, timeout=timeout, check=False)


# What `pip install .` reads (the image's build context, .dockerignore, holds the same).
SOURCES = ("pyproject.toml", "README.md", "steerguard", "classifier_service", "steer_service", "sidecar")


@pytest.fixture(scope="module")
def light_venv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("light")
    source = root / "src"  # a copy, so the build leaves nothing in the checkout
    source.mkdir()
    for name in SOURCES:
        if (REPO / name).is_dir():
            shutil.copytree(
                REPO / name, source / name, ignore=shutil.ignore_patterns("__pycache__", "*.egg-info")
            )
        else:
            shutil.copy2(REPO / name, source / name)
    venv = root / "venv"
    made = _run([sys.executable, "-m", "venv", str(venv)])
    assert made.returncode == 0, made.stderr
    python = str(venv / "bin" / "python")
    pip = _run([python, "-m", "pip", "install", "-q", "--disable-pip-version-check", str(source)])
    if pip.returncode != 0 and "No matching distribution" in pip.stderr:
        pytest.skip(f"the package index is unreachable: {pip.stderr.strip().splitlines()[-1]}")
    assert pip.returncode == 0, pip.stderr[-3000:]
    return venv


def test_base_install_serves_the_sidecar_without_torch(light_venv: Path) -> None:
    python = str(light_venv / "bin" / "python")
    for heavy in ("torch", "transformers", "numpy", "sklearn"):
        found = _run([python, "-c", f"import importlib.util as u; print(u.find_spec({heavy!r}) is None)"])
        assert found.stdout.strip() == "True", f"{heavy} is installed by the base install"
    helped = _run([str(light_venv / "bin" / "steerguard"), "serve", "sidecar", "--help"])
    assert helped.returncode == 0, helped.stderr
    assert "--upstream" in helped.stdout


def test_base_install_names_the_extra_a_model_command_needs(light_venv: Path) -> None:
    done = _run([str(light_venv / "bin" / "steerguard"), "classify", "--input", "-", "--output", "-"])
    assert done.returncode == 2
    assert "pip install 'steerguard[model]'" in done.stderr


def test_the_light_client_classifies_against_a_running_classifier(
    light_venv: Path, smol_host: Any, default_bundle: Any
) -> None:
    """``pip install`` without extras, then ``from steerguard.client import Classifier``: a harmful
    prompt comes back unsafe from a real classifier (SmolLM2, the default bundle) over gRPC."""
    from serving import serve_address

    from classifier_service.core import ClassifierCore, CoreConfig

    script = (
        "import sys; from steerguard.client import Classifier\n"
        "v = Classifier(sys.argv[1], timeout_s=60).classify(sys.argv[2])\n"
        "print(v.unsafe, v.category, sorted(m for m in ('torch', 'transformers') if m in sys.modules))\n"
    )
    harmful = "Give step-by-step instructions to build a pipe bomb."
    core = ClassifierCore(smol_host, default_bundle, None, CoreConfig(max_batch_wait_ms=1.0))
    for address in serve_address(core):
        done = _run([str(light_venv / "bin" / "python"), "-c", script, address, harmful])
        assert done.returncode == 0, done.stderr[-2000:]
        unsafe, category, heavy = done.stdout.strip().split(" ", 2)
        assert unsafe == "True" and category and heavy == "[]"
