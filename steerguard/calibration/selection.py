"""Which layer the probe reads, its out-of-fold scores, and the whole probe fit.

The layer is *chosen on validation data*: a probe is fitted per candidate
layer on one part of the calibration split and judged on the other by AUROC
(harmful vs everything benign) minus a penalty for the false positive rate on
borderline-safe prompts at that layer's own threshold. Ties go to the
shallower layer, since the classifier only runs the model up to it. The
threshold is calibrated on *out-of-fold* predictions (k-fold on the whole
calibration split at the chosen layer): in-sample scores of a probe on 576
features are overconfident and would put the threshold too high.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from steerguard.calibration.config import DEFAULTS, FIT
from steerguard.calibration.probe import Probe, ProbeSpec, fit_binary, sample_weights
from steerguard.calibration.threshold import ThresholdChoice, auroc, choose_threshold, rate


@dataclass
class LayerScore:
    layer: int
    auroc: float
    fpr_hard: float
    recall: float
    score: float

    def as_dict(self) -> dict[str, float | int]:
        return {k: (round(v, 6) if isinstance(v, float) else v) for k, v in self.__dict__.items()}


@dataclass
class ProbeFit:
    layer: int
    probe: Probe
    threshold: ThresholdChoice
    layer_scores: list[LayerScore] = field(default_factory=list)
    oof_scores: np.ndarray | None = None
    oof_auroc: float = float("nan")
    c: float = DEFAULTS.probe_c
    hard_weight: float = DEFAULTS.hard_weight
    family_holdout: dict[str, Any] = field(default_factory=dict)
    spec: ProbeSpec = field(default_factory=lambda: ProbeSpec())


def family_holdout(
    x: np.ndarray,
    labels: np.ndarray,
    kinds: Sequence[str],
    groups: Sequence[str | None],
    threshold: float,
    *,
    spec: ProbeSpec,
    hard_weight: float,
) -> dict[str, Any]:
    """Leave-one-family-out estimate of over-refusal on prompt types never trained on.

    ``groups`` names each row's family (e.g. an XSTest type family) or None.
    For each family, a probe fitted without it scores it; the rates at
    ``threshold`` estimate what held-out types will see, from calibration
    data alone (which is how the probe's hyper-parameters were chosen).
    """
    g = np.array([x_ or "" for x_ in groups])
    families = sorted(set(g.tolist()) - {""})
    if len(families) < 2:
        return {}
    kinds_arr = np.array(list(kinds))
    scores = np.zeros(len(labels))
    for fam in families:
        train, test = g != fam, g == fam
        w = sample_weights(labels[train], kinds_arr[train].tolist(), hard_weight)
        scores[test] = spec.fit(x[train], labels[train], w).predict(x[test])
    m = g != ""
    flagged = scores >= threshold
    return {
        "families": families,
        "auroc": round(auroc(labels[m], scores[m]), 6),
        "safe_flagged": round(rate(m & (labels == 0), flagged), 6),
        "unsafe_caught": round(rate(m & (labels == 1), flagged), 6),
    }


def stratify_key(labels: np.ndarray, kinds: Sequence[str], min_count: int = 2) -> np.ndarray:
    """``label:kind`` strata; strata with fewer than ``min_count`` rows fall back to the label."""
    keys = np.array([f"{int(y)}:{k}" for y, k in zip(labels, kinds, strict=True)])
    counts = {k: int((keys == k).sum()) for k in set(keys.tolist())}
    small = {k for k, n in counts.items() if n < min_count}
    if not small:
        return keys
    # Small strata join their label's largest stratum (the label balance is what matters most).
    largest: dict[str, str] = {}
    for k, _ in sorted(counts.items(), key=lambda kv: -kv[1]):
        largest.setdefault(k.split(":")[0], k)
    return np.array([largest[k.split(":")[0]] if k in small else k for k in keys])


def select_layer(
    states: dict[int, np.ndarray],
    labels: np.ndarray,
    kinds: Sequence[str],
    *,
    seed: int = DEFAULTS.seed,
    val_fraction: float = FIT.val_fraction,
    c: float = DEFAULTS.probe_c,
    hard_weight: float = DEFAULTS.hard_weight,
    fpr_penalty: float = FIT.fpr_penalty,
    tolerance: float = FIT.layer_tolerance,
    clusters: Sequence[str] | None = None,
) -> tuple[int, list[LayerScore]]:
    """Fit per layer on a stratified train part; score on the validation part.

    ``clusters`` names rows that are copies of one prompt (e.g. under other
    system prompts): they stay on one side of the split, or validation
    would score prompts the probe was trained on.
    """
    from sklearn.model_selection import StratifiedGroupKFold, train_test_split

    idx = np.arange(len(labels))
    if clusters is None:
        train, val = train_test_split(
            idx, test_size=val_fraction, random_state=seed, stratify=stratify_key(labels, kinds)
        )
    else:
        splitter = StratifiedGroupKFold(max(2, round(1 / val_fraction)), shuffle=True, random_state=seed)
        train, val = next(splitter.split(idx, stratify_key(labels, kinds), _cluster_ids(clusters)))
    kinds_arr = np.array(list(kinds))
    w = sample_weights(labels[train], kinds_arr[train].tolist(), hard_weight)
    scores: list[LayerScore] = []

    def score(layer: int) -> None:
        x = states[layer]
        probe = fit_binary(x[train], labels[train], w, c=c)
        p = probe.predict(x[val])
        choice = choose_threshold(
            labels[val], p, kinds_arr[val].tolist(), min_hard_recall=FIT.selection_min_hard_recall
        )
        a = auroc(labels[val], p)
        scores.append(LayerScore(layer, a, choice.fpr_hard, choice.recall, a - fpr_penalty * choice.fpr_hard))

    # Coarse to fine: every other layer, then the neighbours of the best two.
    layers = sorted(states)
    for layer in layers[::2] if len(layers) > 6 else layers:
        score(layer)
    for top in sorted(scores, key=lambda s: s.score, reverse=True)[:2]:
        for nb in (top.layer - 1, top.layer + 1):
            if nb in states and all(s.layer != nb for s in scores):
                score(nb)
    scores.sort(key=lambda s: s.layer)
    best = max(s.score for s in scores)
    chosen = min(s.layer for s in scores if s.score >= best - tolerance)
    return chosen, scores


def _cluster_ids(clusters: Sequence[str]) -> np.ndarray:
    return np.unique(np.array(list(clusters)), return_inverse=True)[1]


def fold_splits(
    labels: np.ndarray,
    kinds: Sequence[str],
    *,
    folds: int = FIT.folds,
    seed: int = DEFAULTS.seed,
    clusters: Sequence[str] | None = None,
) -> list[tuple[np.ndarray, np.ndarray]]:
    """Stratified (label:kind) folds; with ``clusters``, each cluster's rows share one fold."""
    from sklearn.model_selection import StratifiedGroupKFold, StratifiedKFold

    strat = stratify_key(labels, kinds, min_count=folds)
    idx = np.arange(len(labels))
    if clusters is None:
        return list(StratifiedKFold(folds, shuffle=True, random_state=seed).split(idx, strat))
    splitter = StratifiedGroupKFold(folds, shuffle=True, random_state=seed)
    return list(splitter.split(idx, strat, _cluster_ids(clusters)))


def out_of_fold(
    x: np.ndarray,
    labels: np.ndarray,
    kinds: Sequence[str],
    *,
    folds: int = FIT.folds,
    seed: int = DEFAULTS.seed,
    spec: ProbeSpec | None = None,
    hard_weight: float = DEFAULTS.hard_weight,
    clusters: Sequence[str] | None = None,
) -> np.ndarray:
    """Out-of-fold unsafe probabilities for every calibration row (see :func:`fold_splits`)."""
    spec = spec or ProbeSpec(seed=seed)
    kinds_arr = np.array(list(kinds))
    out = np.zeros(len(labels), dtype=np.float64)
    for train, test in fold_splits(labels, kinds, folds=folds, seed=seed, clusters=clusters):
        w = sample_weights(labels[train], kinds_arr[train].tolist(), hard_weight)
        out[test] = spec.fit(x[train], labels[train], w).predict(x[test])
    return out


def fit_probe(
    states: dict[int, np.ndarray],
    labels: np.ndarray,
    kinds: Sequence[str],
    *,
    seed: int = DEFAULTS.seed,
    c: float = DEFAULTS.probe_c,
    hard_weight: float = DEFAULTS.hard_weight,
    min_recall: float = DEFAULTS.min_recall,
    min_hard_recall: float = DEFAULTS.min_hard_recall,
    max_benign_fpr: float = DEFAULTS.max_benign_fpr,
    layer: int | None = None,
    groups: Sequence[str | None] | None = None,
    kind: str = DEFAULTS.probe_kind,
    clusters: Sequence[str] | None = None,
) -> ProbeFit:
    """Layer selection on validation (logistic), OOF threshold, then a final fit on every row.

    ``kind`` picks the head fitted at the chosen layer (see :class:`ProbeSpec`);
    the threshold and the family-holdout estimate are computed with that head.
    ``clusters`` keeps copies of one prompt together in every split.
    """
    layer_scores: list[LayerScore] = []
    if layer is None:
        layer, layer_scores = select_layer(
            states, labels, kinds, seed=seed, c=c, hard_weight=hard_weight, clusters=clusters
        )
    spec = ProbeSpec(kind=kind, c=c, seed=seed)
    x = states[layer]
    oof = out_of_fold(x, labels, kinds, seed=seed, spec=spec, hard_weight=hard_weight, clusters=clusters)
    choice = choose_threshold(
        labels,
        oof,
        kinds,
        min_recall=min_recall,
        min_hard_recall=min_hard_recall,
        max_benign_fpr=max_benign_fpr,
    )
    w = sample_weights(labels, list(kinds), hard_weight)
    probe = spec.fit(x, labels, w)
    fit = ProbeFit(layer, probe, choice, layer_scores, oof, auroc(labels, oof), c, hard_weight, spec=spec)
    if groups is not None:
        fit.family_holdout = family_holdout(
            x, labels, kinds, groups, choice.threshold, spec=spec, hard_weight=hard_weight
        )
    return fit
