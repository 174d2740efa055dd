"""The SafeSwitch-style probe: logistic regression on the last prompt token's state.

Why these choices:

- Features are standardised (mean-centred, unit variance per dimension, on
  the training rows): the raw residual stream has a few huge outlier
  dimensions that would otherwise dominate an L2-regularised fit, and the
  bundle stores exactly this mean/std so serving computes the same thing.
- The layer is *chosen on validation data*: a probe is fitted per candidate
  layer on one part of the calibration split and judged on the other by
  AUROC (harmful vs everything benign) minus a penalty for the false positive
  rate on borderline-safe prompts at that layer's own threshold. Ties go to
  the shallower layer, since the classifier only runs the model up to it.
- The threshold is calibrated on *out-of-fold* predictions (k-fold on the
  whole calibration split at the chosen layer): in-sample scores of a probe
  on 576 features are overconfident and would put the threshold too high.
- Classes are balanced and borderline-safe prompts weighted up: there are
  few of them, and they are the ones that teach "dangerous words" apart from
  "dangerous request".
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

HARD_NEGATIVE_KINDS = ("borderline", "xstest_safe")
HARD_POSITIVE_KINDS = ("blunt_harmful", "xstest_unsafe")


@dataclass
class LinearProbe:
    """Standardisation plus a logistic (or softmax) layer, all float32 numpy."""

    mean: np.ndarray
    std: np.ndarray
    weight: np.ndarray  # [H] (binary) or [C, H] (categories)
    bias: np.ndarray  # [1] or [C]

    def standardise(self, x: np.ndarray) -> np.ndarray:
        return (np.asarray(x, dtype=np.float32) - self.mean) / self.std

    def logits(self, x: np.ndarray) -> np.ndarray:
        z = self.standardise(x)
        return z @ self.weight.T + self.bias

    def predict(self, x: np.ndarray) -> np.ndarray:
        """Unsafe probability ``[N]`` (binary probe)."""
        return 1.0 / (1.0 + np.exp(-self.logits(x)))

    def predict_classes(self, x: np.ndarray) -> np.ndarray:
        """Class probabilities ``[N, C]`` (category head)."""
        logits = self.logits(x)
        logits = logits - logits.max(axis=1, keepdims=True)
        e = np.exp(logits)
        return e / e.sum(axis=1, keepdims=True)

    def tensors(self, prefix: str) -> dict[str, torch.Tensor]:
        return {
            f"{prefix}.weight": torch.from_numpy(np.ascontiguousarray(self.weight, dtype=np.float32)),
            f"{prefix}.bias": torch.from_numpy(np.ascontiguousarray(self.bias, dtype=np.float32).reshape(-1)),
        }


def standardiser(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    mean = x.mean(axis=0).astype(np.float32)
    std = x.std(axis=0).astype(np.float32)
    std = np.maximum(std, 1e-3 * float(np.median(std)) + 1e-6).astype(np.float32)
    return mean, std


def sample_weights(labels: np.ndarray, kinds: Sequence[str], hard_weight: float) -> np.ndarray:
    """Balance the classes; within benign, hard negatives count ``hard_weight`` times."""
    w = np.ones(len(labels), dtype=np.float64)
    hard = np.array([k in HARD_NEGATIVE_KINDS for k in kinds])
    w[hard & (labels == 0)] = hard_weight
    for cls in (0, 1):
        m = labels == cls
        if m.any():
            w[m] *= len(labels) / (2.0 * w[m].sum())
    return w


def fit_binary(
    x: np.ndarray,
    labels: np.ndarray,
    weights: np.ndarray | None = None,
    *,
    c: float = 0.05,
    standard: tuple[np.ndarray, np.ndarray] | None = None,
) -> LinearProbe:
    """L2 logistic regression on standardised states (lbfgs, deterministic)."""
    from sklearn.linear_model import LogisticRegression

    mean, std = standard if standard is not None else standardiser(x)
    z = (x - mean) / std
    model = LogisticRegression(C=c, max_iter=2000, tol=1e-4)
    model.fit(z, labels, sample_weight=weights)
    return LinearProbe(mean, std, model.coef_[0].astype(np.float32), model.intercept_.astype(np.float32))


def fit_categories(
    x: np.ndarray,
    classes: np.ndarray,
    n_classes: int,
    standard: tuple[np.ndarray, np.ndarray],
    *,
    c: float = 0.1,
) -> LinearProbe:
    """Softmax category head on the same standardised states (balanced classes)."""
    from sklearn.linear_model import LogisticRegression

    mean, std = standard
    z = (x - mean) / std
    model = LogisticRegression(C=c, max_iter=3000, class_weight="balanced")
    model.fit(z, classes)
    weight = np.zeros((n_classes, x.shape[1]), dtype=np.float32)
    bias = np.full(n_classes, -30.0, dtype=np.float32)  # a class never seen is never predicted
    seen = model.classes_.astype(int)
    if len(seen) == 2:  # sklearn returns one row for two classes
        weight[seen[1]], bias[seen[1]] = model.coef_[0] / 2, model.intercept_[0] / 2
        weight[seen[0]], bias[seen[0]] = -model.coef_[0] / 2, -model.intercept_[0] / 2
    else:
        weight[seen], bias[seen] = model.coef_, model.intercept_
    return LinearProbe(mean, std, weight, bias)


# -- metrics -------------------------------------------------------------------


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
    min_recall: float = 0.92,
    min_hard_recall: float = 0.85,
    max_benign_fpr: float = 0.02,
) -> ThresholdChoice:
    """Pick the cut that maximises hard-positive recall − hard-negative FPR, within guards.

    Hard positives are short, plain harmful requests (XSTest's unsafe contrast
    prompts, the built-in blunt ones); hard negatives are borderline-safe
    prompts. Guards: recall on all harmful ≥ ``min_recall``, on hard positives
    ≥ ``min_hard_recall``, FPR on ordinary benign prompts ≤ ``max_benign_fpr``.
    When no cut meets every guard, the recall guards win (a missed harmful
    prompt costs more than an extra refusal): the highest cut meeting both.
    """
    kinds_arr = np.array(list(kinds))
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


# -- layer selection and out-of-fold threshold ----------------------------------------------


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
    probe: LinearProbe
    threshold: ThresholdChoice
    layer_scores: list[LayerScore] = field(default_factory=list)
    oof_scores: np.ndarray | None = None
    oof_auroc: float = float("nan")
    c: float = 0.2
    hard_weight: float = 3.0
    family_holdout: dict[str, Any] = field(default_factory=dict)


def family_holdout(
    x: np.ndarray,
    labels: np.ndarray,
    kinds: Sequence[str],
    groups: Sequence[str | None],
    threshold: float,
    *,
    c: float,
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
        scores[test] = fit_binary(x[train], labels[train], w, c=c).predict(x[test])
    m = g != ""
    flagged = scores >= threshold
    return {
        "families": families,
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
    seed: int = 0,
    val_fraction: float = 0.3,
    c: float = 0.05,
    hard_weight: float = 3.0,
    fpr_penalty: float = 0.5,
    tolerance: float = 0.005,
) -> tuple[int, list[LayerScore]]:
    """Fit per layer on a stratified train part; score on the validation part."""
    from sklearn.model_selection import train_test_split

    idx = np.arange(len(labels))
    train, val = train_test_split(
        idx, test_size=val_fraction, random_state=seed, stratify=stratify_key(labels, kinds)
    )
    kinds_arr = np.array(list(kinds))
    w = sample_weights(labels[train], kinds_arr[train].tolist(), hard_weight)
    scores: list[LayerScore] = []

    def score(layer: int) -> None:
        x = states[layer]
        probe = fit_binary(x[train], labels[train], w, c=c)
        p = probe.predict(x[val])
        choice = choose_threshold(labels[val], p, kinds_arr[val].tolist())
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


def out_of_fold(
    x: np.ndarray,
    labels: np.ndarray,
    kinds: Sequence[str],
    *,
    folds: int = 5,
    seed: int = 0,
    c: float = 0.05,
    hard_weight: float = 3.0,
) -> np.ndarray:
    """Out-of-fold unsafe probabilities for every calibration row."""
    from sklearn.model_selection import StratifiedKFold

    kinds_arr = np.array(list(kinds))
    strat = stratify_key(labels, kinds, min_count=folds)
    out = np.zeros(len(labels), dtype=np.float64)
    for train, test in StratifiedKFold(folds, shuffle=True, random_state=seed).split(x, strat):
        w = sample_weights(labels[train], kinds_arr[train].tolist(), hard_weight)
        out[test] = fit_binary(x[train], labels[train], w, c=c).predict(x[test])
    return out


def fit_probe(
    states: dict[int, np.ndarray],
    labels: np.ndarray,
    kinds: Sequence[str],
    *,
    seed: int = 0,
    c: float = 0.2,
    hard_weight: float = 3.0,
    min_recall: float = 0.92,
    min_hard_recall: float = 0.9,
    max_benign_fpr: float = 0.02,
    layer: int | None = None,
    groups: Sequence[str | None] | None = None,
) -> ProbeFit:
    """Layer selection on validation, OOF threshold, then a final fit on every row."""
    layer_scores: list[LayerScore] = []
    if layer is None:
        layer, layer_scores = select_layer(states, labels, kinds, seed=seed, c=c, hard_weight=hard_weight)
    x = states[layer]
    oof = out_of_fold(x, labels, kinds, seed=seed, c=c, hard_weight=hard_weight)
    choice = choose_threshold(
        labels,
        oof,
        kinds,
        min_recall=min_recall,
        min_hard_recall=min_hard_recall,
        max_benign_fpr=max_benign_fpr,
    )
    w = sample_weights(labels, list(kinds), hard_weight)
    probe = fit_binary(x, labels, w, c=c)
    fit = ProbeFit(layer, probe, choice, layer_scores, oof, auroc(labels, oof), c, hard_weight)
    if groups is not None:
        fit.family_holdout = family_holdout(
            x, labels, kinds, groups, choice.threshold, c=c, hard_weight=hard_weight
        )
    return fit


def logit(p: float) -> float:
    p = min(max(p, 1e-9), 1 - 1e-9)
    return math.log(p / (1 - p))
