"""The SafeSwitch-style probe: a small classifier on the last prompt token's state.

Why these choices:

- The head is logistic by default; a one-hidden-layer MLP (an ensemble of
  three merged into one network, as SafeSwitch's prober) is the alternative
  (:class:`ProbeSpec`). The MLP can weigh a violent word against the kind of
  request it sits in and was better on every calibration-only estimate, but
  not on the held-out XSTest types (see :class:`ProbeSpec`).

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
# Hard negatives mined from the benign pool (steerguard.mining): trained on
# with ordinary weight, left out of the threshold's statistics.
THRESHOLD_EXCLUDED_KINDS = ("mined",)


@dataclass
class ProbeHead:
    """What every head shares: the stored standardisation, a sigmoid on the logits, export.

    The bundle keeps ``probe.mean``/``probe.std`` beside the head's own
    tensors, so serving standardises exactly as training did.
    """

    mean: np.ndarray
    std: np.ndarray

    def standardise(self, x: np.ndarray) -> np.ndarray:
        return (np.asarray(x, dtype=np.float32) - self.mean) / self.std

    def logits(self, x: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def predict(self, x: np.ndarray) -> np.ndarray:
        """Unsafe probability ``[N]`` (binary probe)."""
        return 1.0 / (1.0 + np.exp(-self.logits(x)))

    def tensors(self, prefix: str) -> dict[str, torch.Tensor]:
        """The head's bundle tensors under ``prefix`` (the standardisation is stored by the caller)."""
        raise NotImplementedError

    @staticmethod
    def _export(prefix: str, arrays: dict[str, np.ndarray]) -> dict[str, torch.Tensor]:
        return {
            f"{prefix}.{name}": torch.from_numpy(np.ascontiguousarray(a, dtype=np.float32))
            for name, a in arrays.items()
        }


@dataclass
class LinearProbe(ProbeHead):
    """Standardisation plus a logistic (or softmax) layer, all float32 numpy."""

    weight: np.ndarray  # [H] (binary) or [C, H] (categories)
    bias: np.ndarray  # [1] or [C]

    def logits(self, x: np.ndarray) -> np.ndarray:
        return self.standardise(x) @ self.weight.T + self.bias

    def predict_classes(self, x: np.ndarray) -> np.ndarray:
        """Class probabilities ``[N, C]`` (category head)."""
        logits = self.logits(x)
        logits = logits - logits.max(axis=1, keepdims=True)
        e = np.exp(logits)
        return e / e.sum(axis=1, keepdims=True)

    def tensors(self, prefix: str) -> dict[str, torch.Tensor]:
        return self._export(prefix, {"weight": self.weight, "bias": self.bias.reshape(-1)})


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


@dataclass
class MLPProbe(ProbeHead):
    """Standardisation, one GELU hidden layer and a logistic output, all float32 numpy.

    An ensemble of independently initialised members is stored as *one* wider
    network: their hidden units side by side and their output weights divided
    by the member count, so the logit is the members' mean logit and serving
    needs no notion of an ensemble.
    """

    hidden_weight: np.ndarray  # [K, H]
    hidden_bias: np.ndarray  # [K]
    weight: np.ndarray  # [K]
    bias: np.ndarray  # [1]

    def logits(self, x: np.ndarray) -> np.ndarray:
        pre = torch.from_numpy(self.standardise(x) @ self.hidden_weight.T + self.hidden_bias)
        hidden = torch.nn.functional.gelu(pre).numpy()  # torch's exact GELU, as Bundle.score uses
        return hidden @ self.weight + self.bias

    def tensors(self, prefix: str) -> dict[str, torch.Tensor]:
        return self._export(
            prefix,
            {
                "hidden.weight": self.hidden_weight,
                "hidden.bias": self.hidden_bias,
                "weight": self.weight,
                "bias": self.bias.reshape(-1),
            },
        )


Probe = ProbeHead


def fit_mlp(
    x: np.ndarray,
    labels: np.ndarray,
    weights: np.ndarray | None = None,
    *,
    hidden: int = 64,
    members: int = 3,
    weight_decay: float = 0.1,
    dropout: float = 0.2,
    epochs: int = 300,
    lr: float = 3e-3,
    seed: int = 0,
) -> MLPProbe:
    """Full-batch AdamW on weighted cross-entropy, ``members`` seeds merged into one network.

    Dropout on the input and the hidden layer plus weight decay keep a
    576-wide first layer from memorising ~2k prompts. The global torch RNG is
    left as it was (``fork_rng``), so calibration stays reproducible.
    """
    mean, std = standardiser(x)
    z = torch.from_numpy(((x - mean) / std).astype(np.float32))
    y = torch.from_numpy(labels.astype(np.float32))
    w = torch.from_numpy((np.ones(len(labels)) if weights is None else weights).astype(np.float32))
    parts: list[tuple[torch.Tensor, ...]] = []
    with torch.random.fork_rng():
        for member in range(members):
            torch.manual_seed(seed * 1009 + member)
            first, last = torch.nn.Linear(z.shape[1], hidden), torch.nn.Linear(hidden, 1)
            net = torch.nn.Sequential(
                torch.nn.Dropout(dropout), first, torch.nn.GELU(), torch.nn.Dropout(dropout), last
            )
            opt = torch.optim.AdamW(net.parameters(), lr=lr, weight_decay=weight_decay)
            for _ in range(epochs):
                opt.zero_grad()
                loss = torch.nn.functional.binary_cross_entropy_with_logits(net(z).squeeze(1), y, weight=w)
                loss.backward()
                opt.step()
            parts.append(tuple(t.detach() for t in (first.weight, first.bias, last.weight[0], last.bias)))
    stack = [torch.cat([p[i] for p in parts]).numpy() for i in range(3)]
    bias = torch.stack([p[3] for p in parts]).mean(0).numpy()
    return MLPProbe(mean, std, stack[0], stack[1], stack[2] / members, bias)


@dataclass(frozen=True)
class ProbeSpec:
    """Which unsafe-probability head to fit, and its hyper-parameters.

    On SmolLM2-135M (both heads without hard-negative mining) the ``mlp``
    head beat ``logistic`` on every calibration-only estimate (out-of-fold AUROC 0.992 vs 0.987; ordinary
    benign prompts flagged at the calibrated cut 1% vs 4%; leave-one-XSTest-
    family-out AUROC 0.868 vs 0.846), and in the held-out evaluation it
    halved `auto`'s benign refusals (1.7% vs 5.0%) and raised AUROC (0.998
    vs 0.996). But on the held-out XSTest types it ranked no better (AUROC
    0.923 vs 0.92) and its calibrated cut flagged 21% of the safe prompts
    (logistic: 15.3%). ``logistic`` therefore stays the default; layer
    selection always uses it (it is ~30x cheaper).
    """

    kind: str = "logistic"
    c: float = 0.05
    hidden: int = 64
    members: int = 3
    weight_decay: float = 0.1
    dropout: float = 0.2
    epochs: int = 300
    seed: int = 0

    def fit(self, x: np.ndarray, labels: np.ndarray, weights: np.ndarray | None = None) -> Probe:
        if self.kind == "logistic":
            return fit_binary(x, labels, weights, c=self.c)
        if self.kind == "mlp":
            return fit_mlp(
                x,
                labels,
                weights,
                hidden=self.hidden,
                members=self.members,
                weight_decay=self.weight_decay,
                dropout=self.dropout,
                epochs=self.epochs,
                seed=self.seed,
            )
        raise ValueError(f"unknown probe kind {self.kind!r} (logistic or mlp)")

    def describe(self) -> dict[str, Any]:
        """Manifest fields that name the head (the logistic C is recorded by the caller)."""
        if self.kind == "logistic":
            return {"kind": "logistic"}
        return {k: v for k, v in self.__dict__.items() if k not in {"c", "seed"}}


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
    probe: Probe
    threshold: ThresholdChoice
    layer_scores: list[LayerScore] = field(default_factory=list)
    oof_scores: np.ndarray | None = None
    oof_auroc: float = float("nan")
    c: float = 0.2
    hard_weight: float = 3.0
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
    seed: int = 0,
    val_fraction: float = 0.3,
    c: float = 0.05,
    hard_weight: float = 3.0,
    fpr_penalty: float = 0.5,
    tolerance: float = 0.005,
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


def _cluster_ids(clusters: Sequence[str]) -> np.ndarray:
    return np.unique(np.array(list(clusters)), return_inverse=True)[1]


def fold_splits(
    labels: np.ndarray,
    kinds: Sequence[str],
    *,
    folds: int = 5,
    seed: int = 0,
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
    folds: int = 5,
    seed: int = 0,
    spec: ProbeSpec | None = None,
    hard_weight: float = 3.0,
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
    seed: int = 0,
    c: float = 0.2,
    hard_weight: float = 3.0,
    min_recall: float = 0.92,
    min_hard_recall: float = 0.9,
    max_benign_fpr: float = 0.02,
    layer: int | None = None,
    groups: Sequence[str | None] | None = None,
    kind: str = "logistic",
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


def logit(p: float) -> float:
    p = min(max(p, 1e-9), 1 - 1e-9)
    return math.log(p / (1 - p))
