"""Add the passage gate to a calibrated bundle; everything else is kept as it is.

Why: the gate (``steerguard.calibration.passage_gate``) lets a long text's
candidates, its windows' top segment ends and its last paragraph, be read
again by the request probe (``steerguard.passages``), and sets the score a
candidate needs on the probe's out-of-fold scores. It is part of
calibration's passage step; this fits it alone on the bundle's calibration
split (rebuilt from the recorded settings and seed), with today's
``passage_*`` defaults: it refits the probe at the bundle's layer for its
out-of-fold scores (mining included; it stops if the cut differs from the
bundle's), writes the prose that step writes (8 minutes on two cores), and
writes a new bundle (new id).

    python scripts/fit_passage_gate.py steerguard/bundles/default /tmp/new-bundle --data ../shared/data
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import bundle_args  # scripts/, on the path when a script runs

from steerguard.calibration.pipeline import passage_gate, probe_at


def step(run: Any, bundle: Any, cfg: Any) -> bundle_args.StepResult:
    if bundle.passage is None:
        raise SystemExit("the bundle has no passage probe: run scripts/refit_passage.py first")
    fit = probe_at(run, bundle.probe_layer)  # the probe's out-of-fold scores: the candidates' cut
    if abs(fit.threshold.threshold - bundle.threshold) > 1e-3:
        raise SystemExit(
            f"the probe refitted on the rebuilt split has cut {fit.threshold.threshold:.6f}, the "
            f"bundle {bundle.threshold:.6f}: not the bundle's calibration data or settings"
        )
    fields, tensors = passage_gate(run, bundle.probe_layer, bundle.threshold)
    return {"passage": replace(bundle.passage, **fields)}, tensors


if __name__ == "__main__":
    bundle_args.rerun_step(__doc__, "passage_", "passage_gate_s", step)
