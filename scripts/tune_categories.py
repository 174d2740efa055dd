"""Tune a calibrated bundle's category-vector strength on judged answers; everything else is kept.

Why: the strength search is calibration's last step (its judge needs the
response probe) and nothing else depends on it; re-running the whole
calibration costs hours on two cores. This rebuilds the calibration split
from the bundle's recorded settings and seed, runs the search under today's
``category_tune_*`` settings and writes a new bundle (new id) whose manifest
records it (``category_search``).

    python scripts/tune_categories.py steerguard/bundles/default /tmp/new-bundle --data ../shared/data
"""

from __future__ import annotations

from typing import Any

import bundle_args  # scripts/, on the path when a script runs

from steerguard.calibration.pipeline import category_strength


def step(run: Any, bundle: Any, cfg: Any) -> bundle_args.StepResult:
    tuned = category_strength(run, bundle)
    return {"vectors": tuned.manifest.vectors, "category_search": tuned.manifest.category_search}, {}


if __name__ == "__main__":
    bundle_args.rerun_step(__doc__, "category_tune", "category_tune_s", step)
