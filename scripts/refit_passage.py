"""Re-fit only the passage probe of a calibrated bundle; everything else is kept as it is.

Why: the passage probe is calibration's step 3b and the only part long texts
depend on. Re-running the whole calibration to change it costs hours on two
cores and re-draws nothing else; this runs step 3b alone, on the same
calibration split (rebuilt from the bundle's recorded settings and seed),
under today's ``passage_*`` defaults, and writes a new bundle (new id) whose
manifest records those settings and the step's time.

    python scripts/refit_passage.py steerguard/bundles/default /tmp/new-bundle --data ../shared/data
"""

from __future__ import annotations

from typing import Any

import bundle_args  # scripts/, on the path when a script runs

from steerguard.calibration.pipeline import passage_probe


def step(run: Any, bundle: Any, cfg: Any) -> bundle_args.StepResult:
    info, tensors = passage_probe(run, bundle.probe_layer, bundle.threshold)
    return {"passage": info}, tensors


if __name__ == "__main__":
    bundle_args.rerun_step(__doc__, "passage_", "passage_s", step)
