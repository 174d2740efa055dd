"""Add SafeSwitch's refusal head to a calibrated bundle; everything else is kept.

Why: the head needs only the harmful calibration prompts, their categories
and the model; re-running the whole calibration to add it costs hours on two
cores and re-draws nothing else. This rebuilds the calibration split from
the bundle's recorded settings and seed, fits the head under today's
``refusal_head_*`` settings and writes a new bundle (new id) whose manifest
records it, with the policy ``refusal_head_policy`` gives.

    python scripts/fit_refusal_head.py steerguard/bundles/default /tmp/new-bundle --data ../shared/data
"""

from __future__ import annotations

from typing import Any

import bundle_args  # scripts/, on the path when a script runs

from steerguard.calibration.pipeline import head_policy, refusal_head
from steerguard.data.loaders import HARMFUL


def step(run: Any, bundle: Any, cfg: Any) -> bundle_args.StepResult:
    record, tensors = refusal_head(run, [e for e in run.calib if e.label == HARMFUL], bundle)
    return {"refusal_head": record, "policy": head_policy(cfg)}, tensors


if __name__ == "__main__":
    bundle_args.rerun_step(__doc__, "refusal_head", "refusal_head_s", step)
