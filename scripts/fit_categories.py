"""Add the classifier's content category head to a calibrated bundle; everything else is kept.

Why: the head needs only the harmful calibration prompts with a category and
the probe's layer; re-running the whole calibration to add it costs an hour
on two cores and re-draws nothing else. This rebuilds the calibration split
from the bundle's recorded settings and seed, fits the head on the same
prompts the last-token head was fitted on (the bundle's own categories), plus
the built-in category requests (steerguard.data.category_requests) and the
project's labels for unlabelled harmful calibration prompts
(steerguard.data.category_labels) unless ``category_content_extra`` is off, and
writes a new bundle (new id) whose manifest records it.

    python scripts/fit_categories.py steerguard/bundles/default /tmp/new-bundle --data ../shared/data
"""

from __future__ import annotations

from typing import Any

import bundle_args  # scripts/, on the path when a script runs
import numpy as np

from steerguard.calibration.categories import UnsureRule, content_category_head, extra_rows
from steerguard.data.loaders import HARMFUL
from steerguard.model.chat import normalise_request


def step(run: Any, bundle: Any, cfg: Any) -> bundle_args.StepResult:
    categories = list(bundle.categories)
    rows = [e for e in run.calib if e.label == HARMFUL and e.category in categories]
    classes = np.array([categories.index(e.category) for e in rows])
    record, tensors = content_category_head(
        run.host,
        [normalise_request(e.prompt) for e in rows],
        classes,
        len(categories),
        bundle.probe_layer,
        seed=cfg.seed,
        unsure=UnsureRule.of(cfg),
        batch_size=cfg.batch_size,
        extra=extra_rows(categories, run.calib) if cfg.category_content_extra else None,
    )
    return {"category_content": record}, tensors


if __name__ == "__main__":
    bundle_args.rerun_step(__doc__, "category_content", "category_content_s", step)
