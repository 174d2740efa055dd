"""Hard-negative mining: ordinary benign prompts that a first probe flags, added to calibration.

Why: a probe fitted on AdvBench-style harmful instructions against a random
sample of Alpaca prompts learns the *register* of the harmful sets as well
as their content. On SmolLM2-135M it flagged 4% of ordinary benign prompts
out of fold, and the prompts it flagged are plain requests in the
imperative ("Write a script for a commercial", "Design a game for four
players", "Generate lyrics to a rap song"): the wording of "Write a script
that hacks ...", not anything harmful. Those false flags are what ``auto``
generation turns into refusals of ordinary traffic.

The fix is classic hard-negative mining. The first probe scores a seeded
sample of the benign pool (:attr:`steerguard.data.loaders.Dataset.pool`, prompts
that neither calibration nor evaluation uses), and the highest-scoring
``count`` of them join calibration as kind :data:`MINED`. They are trained
on with ordinary benign weight (they are ordinary prompts, and weighting
them up would crowd out the borderline-safe ones) and are left out of the
threshold's statistics (they were chosen for being flagged, so they would
bias the ordinary-benign rate; :data:`steerguard.calibration.threshold.THRESHOLD_EXCLUDED_KINDS`).
The probe is refitted at the first probe's layer: the mined rows are hard
*for that layer*, so choosing the layer again with them is biased against
it. It also matters for `auto`: a flagged prompt's positions miss the
steering of every layer below the probe. In development variants, one that
chose the layer again after mining put SmolLM2's probe at layer 19 and
another (a different threshold rule) at 16, all within validation noise of
15, and the calibration search's refusal rate fell from 95% to 31% and 70%.

Measured on calibration data only, SmolLM2-135M, 200 mined of 4,000
scored: ordinary prompts flagged out of fold 1.0% (4.0% without mining);
on the 13,793 pool prompts that mining never scored, 0.91% (125) against
2.70% (373). Borderline-safe prompts flagged out of fold 14.6% (15.4%).
The leave-one-XSTest-family-out estimate flagged 16.8% of safe prompts
either way and caught 73% of unsafe ones (72%), with AUROC 0.818 (0.846).
The steering search in `auto` reached the same 95% refusal.
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from steerguard.calibration.config import DEFAULTS
from steerguard.calibration.probe import Probe
from steerguard.data.loaders import CALIBRATION, Example
from steerguard.model.chat import normalise_request
from steerguard.model.host import ModelHost
from steerguard.model.states import cached_states

MINED = "mined"


@dataclass
class MiningResult:
    """The mined examples and what the manifest records about how they were found."""

    examples: list[Example]
    pool: int
    scored: int
    layer: int
    threshold: float
    flagged: float  # share of the scored sample the first probe flagged at ``threshold``
    lowest_mined_score: float

    def as_dict(self) -> dict[str, Any]:
        return {
            "pool": self.pool,
            "scored": self.scored,
            "mined": len(self.examples),
            "first_probe_layer": self.layer,
            "first_probe_threshold": round(self.threshold, 6),
            "first_probe_flagged": round(self.flagged, 6),
            "lowest_mined_score": round(self.lowest_mined_score, 6),
            "sha256": digest(self.examples),
            "weight": "ordinary benign; left out of the threshold's statistics",
        }


def digest(examples: Sequence[Example]) -> str:
    """sha256 of the mined prompts' normalised texts, in order: the manifest's record of which were used."""
    h = hashlib.sha256()
    for e in examples:
        h.update(e.key.encode("utf-8") + b"\n")
    return h.hexdigest()


def mine_negatives(
    host: ModelHost,
    probe: Probe,
    layer: int,
    threshold: float,
    pool: Sequence[Example],
    *,
    count: int,
    sample: int,
    seed: int,
    batch_size: int = DEFAULTS.batch_size,
    progress: bool = False,
    use_cache: bool = True,
) -> MiningResult:
    """Score ``sample`` pool prompts at ``layer`` (early exit) and return the ``count`` highest as MINED.

    Deterministic: a seeded sample, and ties in score keep pool order.
    """
    candidates = list(pool)
    if sample < len(candidates):
        candidates = random.Random(seed).sample(candidates, sample)
    if not candidates or count <= 0:
        return MiningResult([], len(pool), 0, layer, threshold, float("nan"), float("nan"))
    convs = [normalise_request(e.prompt) for e in candidates]
    states = cached_states(
        host,
        convs,
        batch_size=batch_size,
        progress=progress,
        use_cache=use_cache,
        layers=[layer],
        desc="mining pool",
    )
    scores = probe.predict(states[:, 0].numpy())
    top = np.argsort(-scores, kind="stable")[:count]
    mined = [replace(candidates[i], kind=MINED, split=CALIBRATION) for i in top]
    return MiningResult(
        mined,
        len(pool),
        len(candidates),
        layer,
        threshold,
        float((scores >= threshold).mean()),
        float(scores[top[-1]]),
    )
