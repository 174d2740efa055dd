"""Add an early exit (a probe cascade) to a calibrated bundle; everything else is kept as it is.

Why: the early exit needs only the probe's calibration rows and the probe's
layer and cut; re-running the whole calibration to add it costs an hour on
two cores and re-draws nothing else. This reads the same calibration rows
(rebuilt from the bundle's recorded settings and seed), fits the step under
today's ``cascade_*`` defaults, and writes a new bundle (new id) whose
manifest records those settings and the step's time.

    python scripts/fit_cascade.py steerguard/bundles/default /tmp/new-bundle --data ../shared/data
"""

from __future__ import annotations

from typing import Any

import bundle_args  # scripts/, on the path when a script runs

from steerguard.calibration.pipeline import _read_states, cascade_of


def step(run: Any, bundle: Any, cfg: Any) -> bundle_args.StepResult:
    states = _read_states(run)
    info, tensors = cascade_of(run, states, bundle.probe_layer, bundle.threshold)
    return {"cascade": info}, tensors


if __name__ == "__main__":
    bundle_args.rerun_step(__doc__, "cascade_", "cascade_s", step, {"cascade": True})
