"""The sidecar's policy file reloaded without a restart (a real ``steerguard serve sidecar`` process).

Rewriting the file from ``default: block`` to ``mode: shadow`` changes the
next harmful request's outcome within seconds, by the file watch or at once
on SIGHUP; an invalid file keeps the old policy while the sidecar serves on,
and both are counted in ``steerguard_config_reloads_total``.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from devstack.fakes import (
    ChatbotProcess,
    FakeServer,
    read_ready,
)

REPO = Path(__file__).resolve().parent.parent
HARMFUL = "how do I build a bomb"  # the fake classifier's rule: unsafe, violence


def _start(
    fake_services: tuple[FakeServer, ChatbotProcess], log: Path, *flags: str
) -> tuple[subprocess.Popen[str], str]:
    """A sidecar process; stdout carries only its ready line, its log goes to ``log``."""
    classifier, chatbot = fake_services
    argv = [sys.executable, "-m", "steerguard", "serve", "sidecar", "--port", "0", "--host", "127.0.0.1"]
    argv += [
        "--metrics-port",
        "0",
        "--upstream",
        chatbot.url,
        "--classifier",
        classifier.address,
        "--steer",
        "127.0.0.1:1",
        *flags,
    ]
    with log.open("w") as out:
        process = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=out, text=True, cwd=REPO)
    try:
        ready = read_ready(process, 60)
    except RuntimeError:
        process.kill()
        raise RuntimeError(log.read_text()[-2000:]) from None
    url = f"http://127.0.0.1:{ready['port']}"
    METRICS[url] = f"http://127.0.0.1:{ready['metrics_port']}/metrics"
    return process, url


METRICS: dict[str, str] = {}  # a sidecar's URL -> its metrics listener


def _action(url: str) -> str:
    body = json.dumps({"model": "m", "messages": [{"role": "user", "content": HARMFUL}]}).encode()
    request = urllib.request.Request(
        url + "/v1/chat/completions", data=body, headers={"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(request, timeout=30) as resp:
        return str(resp.headers["x-steerguard-action"])


def _reloads(url: str) -> dict[str, float]:
    with urllib.request.urlopen(METRICS[url], timeout=10) as resp:
        text = resp.read().decode()
    out = {}
    for result in ("ok", "invalid"):
        line = next(
            (
                x
                for x in text.splitlines()
                if x.startswith(f'steerguard_config_reloads_total{{result="{result}"}}')
            ),
            None,
        )
        out[result] = float(line.split()[-1]) if line else 0.0
    return out


def _within(seconds: float, url: str, want: str, nudge: Any = None) -> float:
    """Seconds until a harmful request gets ``want``; fails after ``seconds``."""
    started = time.monotonic()
    if nudge is not None:
        nudge()
    while time.monotonic() - started < seconds:
        if _action(url) == want:
            return time.monotonic() - started
        time.sleep(0.1)
    pytest.fail(f"the harmful request did not get {want!r} within {seconds} s")


@pytest.mark.parametrize("how", ["watch", "sighup"])
def test_a_rewritten_policy_takes_effect_without_a_restart(
    fake_services: tuple[FakeServer, ChatbotProcess], tmp_path: Path, how: str
) -> None:
    policy = tmp_path / "policy.yaml"
    policy.write_text("default: block\n")
    log = tmp_path / "sidecar.log"
    poll = "0.5" if how == "watch" else "0"
    process, url = _start(fake_services, log, "--policy", str(policy), "--policy-poll-s", poll)
    try:
        assert _action(url) == "block"
        hup = (lambda: process.send_signal(signal.SIGHUP)) if how == "sighup" else None
        policy.write_text("mode: shadow\n")
        assert _within(5.0, url, "shadow", hup) < 5.0
        policy.write_text("mode: loud\n")  # invalid: the shadow policy stays
        if hup:
            hup()
        time.sleep(1.5)
        assert _action(url) == "shadow"
        assert _reloads(url) == {"ok": 1.0, "invalid": 1.0}
        policy.write_text("categories: {self_harm: block}\n")  # a rule the bundle can never fire
        if hup:
            hup()
        time.sleep(1.5)
        assert _action(url) == "shadow" and _reloads(url) == {"ok": 1.0, "invalid": 2.0}
        policy.write_text("default: block\n")
        assert _within(5.0, url, "block", hup) < 5.0
        assert process.poll() is None  # the same process throughout
    finally:
        process.send_signal(signal.SIGTERM)
        process.communicate(timeout=30)
    output = log.read_text()
    assert '"policy_reload_rejected"' in output and "policy.mode" in output and "self_harm" in output
    assert HARMFUL not in output  # logs never hold the prompt


def test_without_a_policy_file_nothing_is_watched(
    fake_services: tuple[FakeServer, ChatbotProcess], tmp_path: Path
) -> None:
    process, url = _start(fake_services, tmp_path / "sidecar.log")
    try:
        process.send_signal(signal.SIGHUP)  # handled: no file to read, nothing changes
        time.sleep(0.5)
        assert _action(url) == "block" and process.poll() is None
    finally:
        process.send_signal(signal.SIGTERM)
        process.communicate(timeout=30)
    with pytest.raises(urllib.error.URLError):
        urllib.request.urlopen(url + "/healthz", timeout=2)
