"""``steerguard serve sidecar`` flags and ``python -m devstack up`` as processes."""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from sidecar.settings import SidecarSettings
from steerguard.cli import build_parser
from steerguard.errors import InvalidInput
from steerguard.settings import env_flags

REPO = Path(__file__).resolve().parent.parent


def _sidecar_parser():  # type: ignore[no-untyped-def]
    parser = build_parser()
    serve = next(a for a in parser._actions if getattr(a, "choices", None) and "serve" in a.choices).choices[
        "serve"
    ]
    return next(a for a in serve._actions if getattr(a, "choices", None) and "sidecar" in a.choices).choices[
        "sidecar"
    ]


def test_flags_and_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    token = tmp_path / "token"
    token.write_text("tok\n")
    monkeypatch.setenv("STEERGUARD_UPSTREAM", "http://bot:8000")
    monkeypatch.setenv("STEERGUARD_CLASSIFY_TIMEOUT_MS", "250")
    monkeypatch.setenv("STEERGUARD_AUTH_TOKEN_FILE", str(token))
    ns = build_parser().parse_args(["serve", "sidecar", "--classifier", "classifier:50051"])
    settings = SidecarSettings.from_args(ns)
    assert settings.upstream == "http://bot:8000"
    assert settings.classifier == "classifier:50051"
    assert settings.classify_timeout_s == 0.25
    assert settings.auth_token == "tok"
    assert (settings.host, settings.port) == ("0.0.0.0", 8080)


def test_settings_are_validated() -> None:
    ns = build_parser().parse_args(["serve", "sidecar"])
    with pytest.raises(InvalidInput, match="--upstream"):
        SidecarSettings.from_args(ns)
    with pytest.raises(InvalidInput, match="http"):
        SidecarSettings(upstream="bot:8000")


def test_k8s_sidecar_env_names_are_flags() -> None:
    env_file = REPO / "k8s" / "base" / "config" / "sidecar.env"
    if not env_file.is_file():
        pytest.skip("no k8s sidecar.env in this tree")
    names = {
        line.split("=", 1)[0] for line in env_file.read_text().splitlines() if re.match(r"^[A-Z_]+=", line)
    }
    assert names <= env_flags(_sidecar_parser())


def test_registering_imports_nothing_heavy() -> None:
    code = (
        "import sys, sidecar.cli, devstack.up; "
        "print(sorted(m for m in ('aiohttp', 'grpc', 'torch') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=REPO)
    assert out.stdout.strip() == "[]"


def test_serve_refuses_a_bad_policy(tmp_path: Path) -> None:
    policy = tmp_path / "p.yaml"
    policy.write_text("mode: loud\n")
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "steerguard",
            "serve",
            "sidecar",
            "--upstream",
            "http://x",
            "--policy",
            str(policy),
        ],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=60,
    )
    assert out.returncode == 2
    assert "policy.mode" in out.stderr


UP_FAST = ["--services", "fake", "--chatbot-backend", "echo"] + [
    f"--{name}-port=0" for name in ("sidecar", "chatbot", "classifier", "steer")
]


def test_up_smoke_with_fake_services(tmp_path: Path) -> None:
    out = subprocess.run(
        [sys.executable, "-m", "devstack", "up", *UP_FAST, "--smoke", "--run-dir", str(tmp_path)],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=120,
    )
    assert out.returncode == 0, out.stdout + out.stderr
    assert "verdict=safe action=allow" in out.stdout
    assert "verdict=unsafe action=steer" in out.stdout
    assert "stopped." in out.stdout
    assert (tmp_path / "sidecar.log").is_file()


def test_up_serves_until_ctrl_c(tmp_path: Path) -> None:
    proc = subprocess.Popen(
        [sys.executable, "-m", "devstack", "up", *UP_FAST, "--run-dir", str(tmp_path)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        cwd=REPO,
    )
    assert proc.stdout is not None
    banner = []
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            line = proc.stdout.readline()
            banner.append(line)
            if line.startswith("Ctrl-C") or not line:
                break
        text = "".join(banner)
        assert "Ctrl-C stops everything." in text, text
        url = re.search(r"sidecar \(guarded\)\s+(\S+)", text).group(1)  # type: ignore[union-attr]
        curl = re.search(r"-d '(.*)'", text).group(1)  # type: ignore[union-attr]
        request = urllib.request.Request(
            url, data=curl.encode(), headers={"Content-Type": "application/json"}
        )
        with urllib.request.urlopen(request, timeout=30) as resp:
            assert resp.headers["x-steerguard-verdict"] == "safe"
            assert json.loads(resp.read())["choices"][0]["message"]["content"].startswith("You said:")
        proc.send_signal(signal.SIGINT)
        rest = proc.communicate(timeout=60)[0]
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0
    assert "stopped." in rest
    with pytest.raises(OSError):
        urllib.request.urlopen(url.rsplit("/v1", 1)[0] + "/healthz", timeout=2)


@pytest.mark.integration
def test_steerguard_up_smoke_on_the_real_model(tmp_path: Path) -> None:
    from steerguard.bundle import DEFAULT_BUNDLE_DIR

    if not (DEFAULT_BUNDLE_DIR / "manifest.json").is_file():
        pytest.skip("no default bundle committed yet (run 'steerguard calibrate')")
    ports = [f"--{name}-port=0" for name in ("sidecar", "chatbot", "classifier", "steer")]
    out = subprocess.run(
        [sys.executable, "-m", "devstack", "up", "--smoke", *ports, "--run-dir", str(tmp_path)],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=900,
    )
    assert out.returncode == 0, out.stdout + out.stderr
    assert "verdict=safe action=allow" in out.stdout
    assert "stopped." in out.stdout
