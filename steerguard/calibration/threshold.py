"""The probe's cut, chosen on out-of-fold scores, and the rates it is judged by.

Hard positives are short, plain harmful requests; hard negatives are
borderline-safe prompts. The cut trades the one against the other within
guards on recall and on the ordinary-benign false-flag rate (defaults in
:mod:`steerguard.calibration.config`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from steerguard.calibration.config import DEFAULTS

HARD_NEGATIVE_KINDS = ("borderline", "xstest_safe")
HARD_POSITIVE_KINDS = ("blunt_harmful", "xstest_unsafe")
# Hard negatives mined from the benign pool (steerguard.calibration.mining): trained on
# with ordinary weight, left out of the threshold's statistics.
THRESHOLD_EXCLUDED_KINDS = ("mined",)


def auroc(labels: np.ndarray, scores: np.ndarray) -> float:
    from sklearn.metrics import roc_auc_score

    if len(set(labels.tolist())) < 2:
        return float("nan")
    return float(roc_auc_score(labels, scores))


def rate(mask: np.ndarray, flagged: np.ndarray) -> float:
    n = int(mask.sum())
    return float(flagged[mask].mean()) if n else float("nan")


@dataclass
class ThresholdChoice:
    threshold: float
    recall: float
    fpr_benign: float
    fpr_hard: float
    rule: str
    recall_hard: float = float("nan")

    def as_dict(self) -> dict[str, Any]:
        return {k: (round(v, 6) if isinstance(v, float) else v) for k, v in self.__dict__.items()}


def choose_threshold(
    labels: np.ndarray,
    scores: np.ndarray,
    kinds: Sequence[str],
    *,
    min_recall: float = DEFAULTS.min_recall,
    min_hard_recall: float = DEFAULTS.min_hard_recall,
    max_benign_fpr: float = DEFAULTS.max_benign_fpr,
) -> ThresholdChoice:
    """Pick the cut that maximises hard-positive recall − hard-negative FPR, within guards.

    Hard positives are short, plain harmful requests (XSTest's unsafe contrast
    prompts, the built-in blunt ones); hard negatives are borderline-safe
    prompts. Guards: recall on all harmful ≥ ``min_recall``, on hard positives
    ≥ ``min_hard_recall``, FPR on ordinary benign prompts ≤ ``max_benign_fpr``.
    When no cut meets every guard, the recall guards win (a missed harmful
    prompt costs more than an extra refusal): the highest cut meeting both.

    Mined rows (:data:`THRESHOLD_EXCLUDED_KINDS`) take no part: they were
    picked *because* a first probe flagged them, so counting them would
    bias the ordinary-benign rate upwards.
    """
    keep = ~np.isin(np.array(list(kinds)), THRESHOLD_EXCLUDED_KINDS)
    labels, scores = labels[keep], scores[keep]
    kinds_arr = np.array(list(kinds))[keep]
    hard = np.isin(kinds_arr, HARD_NEGATIVE_KINDS) & (labels == 0)
    plain = (labels == 0) & ~hard
    pos = labels == 1
    hard_pos = pos & np.isin(kinds_arr, HARD_POSITIVE_KINDS)
    candidates = np.unique(np.concatenate([scores, [0.5]]))
    best: tuple[float, float] | None = None
    fallback: float | None = None
    for t in candidates:
        flagged = scores >= t
        recall = rate(pos, flagged)
        recall_hard = rate(hard_pos, flagged) if hard_pos.any() else recall
        fpr_hard = rate(hard, flagged) if hard.any() else 0.0
        fpr_plain = rate(plain, flagged) if plain.any() else 0.0
        recall_ok = recall >= min_recall and recall_hard >= min_hard_recall
        j = recall_hard - fpr_hard
        if recall_ok and fpr_plain <= max_benign_fpr and (best is None or j >= best[0]):  # ties: higher cut
            best = (j, float(t))
        if recall_ok and (fallback is None or t > fallback):
            fallback = float(t)
    guards = f"recall>={min_recall}, hard recall>={min_hard_recall}"
    if best is not None:
        t, rule = best[1], f"max hard recall - hard FPR s.t. {guards}, FPR(benign)<={max_benign_fpr}"
    elif fallback is not None:
        t, rule = fallback, f"highest cut with {guards}"
    else:
        t, rule = 0.5, "default 0.5"
    flagged = scores >= t
    return ThresholdChoice(
        t,
        rate(pos, flagged),
        rate(plain, flagged) if plain.any() else 0.0,
        rate(hard, flagged) if hard.any() else 0.0,
        rule,
        rate(hard_pos, flagged) if hard_pos.any() else float("nan"),
    )
