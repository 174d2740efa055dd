"""What the position heads share (passage and response probes): folds, weights, layer, stored tensors.

Both are logistic heads on states at positions inside a text, fitted with
classes weighted to balance, scored out of fold with every group (a
document, a prompt's answers) in one fold, the layer chosen as the lowest
within ``layer_tolerance`` of the best out-of-fold AUROC (a lower layer
costs less to read), and stored with their bias shifted so their own cut sits
at the prompt probe's threshold: their scores compare with a prompt's.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from steerguard.bundle import cut_shift
from steerguard.calibration.config import FIT
from steerguard.calibration.probe import LinearProbe, fit_binary


def balanced(labels: np.ndarray) -> np.ndarray:
    """Sample weights that give both classes the same total weight."""
    w = np.ones(len(labels))
    for cls in (0, 1):
        m = labels == cls
        if m.any():
            w[m] = len(labels) / (2.0 * m.sum())
    return w


def fit_head(x: np.ndarray, labels: np.ndarray, c: float) -> LinearProbe:
    return fit_binary(x, labels, balanced(labels), c=c)


def grouped_oof(
    x: np.ndarray, labels: np.ndarray, folds: np.ndarray, c: float, fit_on: np.ndarray | None = None
) -> np.ndarray:
    """Out-of-fold unsafe probabilities of every row, ``folds`` fixing each row's fold.

    ``fit_on`` (a row mask) fits the heads on those rows only; every row is still scored.
    """
    out = np.zeros(len(labels))
    usable = np.ones(len(labels), dtype=bool) if fit_on is None else fit_on
    for f in range(FIT.folds):
        test, train = folds == f, (folds != f) & usable
        if not test.any() or len(set(labels[train].tolist())) < 2:
            continue
        out[test] = fit_head(x[train], labels[train], c).predict(x[test])
    return out


def on_threshold(scores: np.ndarray, cut: float, threshold: float) -> np.ndarray:
    """``scores`` with their cut moved to ``threshold``, as :func:`head_tensors`' bias moves it."""
    p = np.clip(scores, 1e-12, 1 - 1e-12)
    z = np.log(p / (1 - p)) + cut_shift(cut, threshold)
    return np.asarray(1 / (1 + np.exp(-z)))


def chosen_layer(selection: Sequence[dict[str, Any]]) -> int:
    """The lowest layer within ``layer_tolerance`` of the best out-of-fold AUROC."""
    top = max(s["auroc"] for s in selection)
    return min(int(s["layer"]) for s in selection if s["auroc"] >= top - FIT.layer_tolerance)


def lowest_cut(benign: Sequence[float] | np.ndarray, max_flagged: float) -> float:
    """The lowest cut that flags at most ``max_flagged`` of these benign units' highest scores."""
    ranked = np.sort(np.asarray(benign, dtype=np.float64))[::-1]
    allowed = int(math.floor(max_flagged * len(ranked)))
    return float(np.nextafter(ranked[allowed], 1.0)) if allowed < len(ranked) else 0.0


def head_tensors(name: str, probe: LinearProbe, cut: float, threshold: float) -> dict[str, torch.Tensor]:
    """The head's bundle tensors under ``name.``, its bias moved so that ``cut`` sits at ``threshold``."""
    shift = cut_shift(cut, threshold)
    return {
        f"{name}.mean": torch.from_numpy(probe.mean),
        f"{name}.std": torch.from_numpy(probe.std),
        f"{name}.weight": torch.from_numpy(np.ascontiguousarray(probe.weight, dtype=np.float32)),
        f"{name}.bias": torch.tensor([float(probe.bias[0]) + shift], dtype=torch.float32),
    }
