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

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from steerguard.calibration.config import DEFAULTS, FIT
from steerguard.calibration.threshold import HARD_NEGATIVE_KINDS


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
    c: float = DEFAULTS.probe_c,
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
    hidden: int = FIT.mlp_hidden,
    members: int = FIT.mlp_members,
    weight_decay: float = FIT.mlp_weight_decay,
    dropout: float = FIT.mlp_dropout,
    epochs: int = FIT.mlp_epochs,
    lr: float = FIT.mlp_lr,
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

    kind: str = DEFAULTS.probe_kind
    c: float = DEFAULTS.probe_c
    hidden: int = FIT.mlp_hidden
    members: int = FIT.mlp_members
    weight_decay: float = FIT.mlp_weight_decay
    dropout: float = FIT.mlp_dropout
    epochs: int = FIT.mlp_epochs
    seed: int = DEFAULTS.seed

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
    c: float = FIT.category_c,
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
