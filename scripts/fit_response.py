"""Add a response probe to a calibrated bundle; everything else is kept as it is.

Why: the response probe is calibration's last step (it needs the bundle's
refusal vector to write refused answers) and nothing else depends on it.
Re-running the whole calibration to add it costs hours on two cores and
re-draws nothing else; this runs the step alone, on the same calibration
split (rebuilt from the bundle's recorded settings and seed), under today's
``response_*`` defaults, and writes a new bundle (new id) whose manifest
records those settings and the step's time.

    python scripts/fit_response.py steerguard/bundles/default /tmp/new-bundle --data ../shared/data
"""

from __future__ import annotations

from typing import Any

import bundle_args  # scripts/, on the path when a script runs

from steerguard.calibration.responses import response_probe


def step(run: Any, bundle: Any, cfg: Any) -> bundle_args.StepResult:
    info, tensors = response_probe(run.host, bundle, run.data, run.calib, cfg)
    return {"response": info}, tensors


if __name__ == "__main__":
    bundle_args.rerun_step(__doc__, "response_", "response_s", step, owns=("response.", "response_"))
