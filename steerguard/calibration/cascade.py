"""The early exit (a probe cascade): a cheap probe at a shallow layer that clears confident prompts.

Why: nearly every request a guard sees is benign, and most of those are
plainly so well before the probe layer. Production probe cascades
(Constitutional Classifiers++) run a cheap first stage and send only
uncertain inputs on. Here the first stage is a logistic probe on the last
prompt token's state at a shallower layer; a prompt scoring below its exit
cut is judged safe there and the deeper layers never run.

How the layer and cut are chosen, on calibration rows only (the probe's own
rows: calibration prompts, their system-prompt copies, follow-up turns):

- Per candidate layer, out-of-fold early scores (folds keep a prompt's
  copies together, as the probe's do).
- The exit cut is the largest that lets at most ``max_unsafe_exit`` of the
  harmful rows the probe catches (out of fold) leave early, and never above
  the probe's threshold, so an exited score is always a safe one. Harmful
  rows the probe misses anyway are not counted: the cascade is judged by
  the catches it loses. (Per harmful kind, 1% of 124 blunt requests is one
  row: cuts set per kind let only 55% of benign rows leave, against 82%.)
- The layer is the one with the lowest expected cost on ordinary benign
  traffic, in layers run: ``e + 1`` for all, plus ``probe - e`` for those
  that do not exit.

Only safe verdicts exit: an unsafe one needs the probe layer's state for its
category. The hard negatives mined from the pool are not among these rows
(they are mined for the probe's layer); that costs exits, not safety.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from steerguard.calibration.probe import fit_binary, sample_weights
from steerguard.calibration.selection import out_of_fold
from steerguard.calibration.threshold import HARD_NEGATIVE_KINDS
from steerguard.manifest import CascadeInfo

HARMFUL = 1


@dataclass(frozen=True)
class CascadeRows:
    """The probe's calibration rows: per-layer states, labels, kinds, copy clusters."""

    states: dict[int, np.ndarray]
    labels: np.ndarray
    kinds: list[str]
    clusters: list[str] | None


@dataclass(frozen=True)
class CascadeSettings:
    layers: tuple[int, ...]
    probe_layer: int
    threshold: float
    max_unsafe_exit: float
    c: float
    hard_weight: float
    seed: int


def exit_cut(scores: np.ndarray, caught: np.ndarray, max_unsafe_exit: float) -> float:
    """The largest cut that lets at most ``max_unsafe_exit`` of the ``caught`` rows score below it."""
    ranked = np.sort(scores[caught])
    allowed = int(np.floor(max_unsafe_exit * len(ranked)))  # caught rows that may leave early
    return float(ranked[allowed]) if allowed < len(ranked) else 1.0


def _layer_record(rows: CascadeRows, layer: int, caught: np.ndarray, s: CascadeSettings) -> dict[str, Any]:
    scores = out_of_fold(
        rows.states[layer],
        rows.labels,
        rows.kinds,
        seed=s.seed,
        hard_weight=s.hard_weight,
        clusters=rows.clusters,
    )
    cut = min(exit_cut(scores, caught, s.max_unsafe_exit), s.threshold)
    kinds = np.array(rows.kinds)
    leaves = scores < cut
    ordinary = (rows.labels != HARMFUL) & ~np.isin(kinds, HARD_NEGATIVE_KINDS)
    hard = (rows.labels != HARMFUL) & np.isin(kinds, HARD_NEGATIVE_KINDS)
    benign_exit = float(leaves[ordinary].mean())
    cost = (layer + 1 + (1.0 - benign_exit) * (s.probe_layer - layer)) / (s.probe_layer + 1)
    return {
        "layer": layer,
        "exit_cut": round(cut, 6),
        "benign_exit": round(benign_exit, 4),
        "hard_exit": round(float(leaves[hard].mean()), 4),
        "unsafe_exit": round(float(leaves[rows.labels == HARMFUL].mean()), 4),
        "relative_cost": round(cost, 4),
        "scores": scores,
    }


def fit_cascade(rows: CascadeRows, s: CascadeSettings) -> tuple[CascadeInfo, dict[str, torch.Tensor]]:
    """The early exit's layer, cut and head (see the module docstring)."""
    probe_oof = out_of_fold(
        rows.states[s.probe_layer],
        rows.labels,
        rows.kinds,
        seed=s.seed,
        hard_weight=s.hard_weight,
        clusters=rows.clusters,
    )
    full = probe_oof >= s.threshold
    caught = full & (rows.labels == HARMFUL)
    records = [_layer_record(rows, layer, caught, s) for layer in s.layers if layer < s.probe_layer]
    if not records:
        raise ValueError("no cascade layer before the probe layer")
    best = min(records, key=lambda r: (r["relative_cost"], r["layer"]))
    cascaded = full & ~(best["scores"] < best["exit_cut"])
    x = rows.states[best["layer"]]
    head = fit_binary(x, rows.labels, sample_weights(rows.labels, rows.kinds, s.hard_weight), c=s.c)
    info = CascadeInfo(
        layer=int(best["layer"]),
        exit_cut=float(best["exit_cut"]),
        max_unsafe_exit=s.max_unsafe_exit,
        unsafe_exit=best["unsafe_exit"],
        benign_exit=best["benign_exit"],
        hard_exit=best["hard_exit"],
        agreement=round(float((cascaded == full).mean()), 4),
        c=s.c,
        layer_selection=[{k: v for k, v in r.items() if k != "scores"} for r in records],
    )
    tensors = {"cascade.mean": torch.from_numpy(head.mean), "cascade.std": torch.from_numpy(head.std)}
    tensors.update(head.tensors("cascade"))
    return info, tensors
