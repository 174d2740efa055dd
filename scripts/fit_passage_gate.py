"""Add the passage gate to a calibrated bundle; everything else is kept as it is.

Why: the gate (``steerguard.calibration.passage_gate``) lets a long text's
candidates, its windows' top segment ends and its last paragraph, be read
again by the request probe (``steerguard.passages``). It is part of
calibration's passage step; this fits it alone on the bundle's calibration
split (rebuilt from the recorded settings and seed), with today's
``passage_*`` defaults, writing the prose that step writes (8 minutes on two
cores), and writes a new bundle (new id).

    python scripts/fit_passage_gate.py steerguard/bundles/default /tmp/new-bundle --data ../shared/data
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import bundle_args  # scripts/, on the path when a script runs

from steerguard.calibration.pipeline import passage_gate


def step(run: Any, bundle: Any, cfg: Any) -> bundle_args.StepResult:
    if bundle.passage is None:
        raise SystemExit("the bundle has no passage probe: run scripts/refit_passage.py first")
    fields, tensors = passage_gate(run, bundle.probe_layer, bundle.threshold)
    return {"passage": replace(bundle.passage, **fields)}, tensors


if __name__ == "__main__":
    bundle_args.rerun_step(__doc__, "passage_", "passage_gate_s", step)
