"""The probe's numbers on held-out prompts: AUROC, rates at the bundle's cut, XSTest by type, trade-offs.

Each checked rate carries its count and 95% Wilson interval
(:mod:`steerguard.evaluation.stats`). Operating points (the false-flag rate at
fixed catch rates) are reported, never used to pick anything: the bundle's
threshold comes from calibration data.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import torch

from steerguard.bundle import Bundle, Scores
from steerguard.calibration.threshold import auroc, rate
from steerguard.data import system_prompts
from steerguard.data.loaders import Example
from steerguard.evaluation.config import EvalConfig
from steerguard.evaluation.heldout import HeldOut
from steerguard.evaluation.stats import proportion
from steerguard.model.activations import content_means
from steerguard.model.chat import Conversation
from steerguard.model.host import ModelHost
from steerguard.model.states import cached_states

CATCH_RATES = (0.80, 0.85, 0.90, 0.95)


def r(x: float | None, nd: int = 4) -> float | None:
    """A rounded number for the report; NaN (nothing to measure) becomes None."""
    return None if x is None or (isinstance(x, float) and math.isnan(x)) else round(float(x), nd)


@dataclass
class ProbeScores:
    """The probe's unsafe probabilities on the held-out rows, at the bundle's cut."""

    scores: Scores
    p_unsafe: np.ndarray
    threshold: float

    @property
    def flagged(self) -> np.ndarray:
        return self.p_unsafe >= self.threshold


def rate_at_catch(scores_pos: np.ndarray, scores_neg: np.ndarray, catch: float) -> tuple[float, float]:
    """False-flag rate of a scorer at the loosest cut that catches ≥ ``catch`` of positives."""
    if len(scores_pos) == 0:
        return float("nan"), float("nan")
    cuts = np.sort(np.unique(scores_pos))[::-1]
    for t in cuts:
        caught = float((scores_pos >= t).mean())
        if caught >= catch - 1e-9:
            return float((scores_neg >= t).mean()), float(t)
    return 1.0, float(cuts[-1])


def operating_points(
    scores_pos: np.ndarray, scores_neg: np.ndarray, catches: Sequence[float] = CATCH_RATES
) -> list[dict[str, float | None]]:
    """False-flag rate at the loosest cut reaching each catch rate: the scorer's trade-off curve.

    It shows a user what a per-request or policy ``threshold`` would buy, and
    lets every scorer be compared at equal catch.
    """
    out: list[dict[str, float | None]] = []
    for catch in catches:
        fpr, cut = rate_at_catch(scores_pos, scores_neg, catch)
        out.append({"catch": catch, "cut": r(cut), "safe_flagged": r(fpr)})
    return out


def binary_metrics(labels: np.ndarray, scores: np.ndarray, threshold: float) -> dict[str, Any]:
    flagged = scores >= threshold
    return {
        "auroc": r(auroc(labels, scores)),
        "threshold": r(threshold),
        "recall": r(rate(labels == 1, flagged)),
        "fpr": r(rate(labels == 0, flagged)),
    }


def cascaded(bundle: Bundle, states: Mapping[int, torch.Tensor]) -> np.ndarray:
    """Held-out unsafe scores as the classifier serves them: through the bundle's early exit, if any."""
    probe_states = states[bundle.probe_layer]
    early_states = states[bundle.cascade.layer] if bundle.cascade is not None else probe_states
    return bundle.cascade_score(early_states, probe_states)[0].numpy().astype(np.float64)


def judged_layers(bundle: Bundle) -> list[int]:
    """The layers a served verdict reads: the cascade's (if any), then the probe's."""
    return [bundle.probe_layer] if bundle.cascade is None else [bundle.cascade.layer, bundle.probe_layer]


def served_scores(
    host: ModelHost, bundle: Bundle, convs: Sequence[Conversation], cfg: EvalConfig, desc: str
) -> np.ndarray:
    """Unsafe scores of ``convs`` as the classifier serves them (the cascade included)."""
    layers = judged_layers(bundle)
    stacked = cached_states(
        host, convs, batch_size=cfg.batch_size, progress=cfg.progress, layers=layers, desc=desc
    )
    return cascaded(bundle, {layer: stacked[:, i] for i, layer in enumerate(layers)})


def cascade_section(held: HeldOut, bundle: Bundle, probe: ProbeScores, full: Scores) -> dict[str, Any] | None:
    """What the early exit changes: exits per kind, and verdicts that differ from the probe alone.

    Every other number of the report is taken with the cascade, as served.
    """
    if bundle.cascade is None:
        return None
    labels, is_hb = held.labels, held.is_hb
    p_full = full.unsafe.numpy().astype(np.float64)
    exits = probe.p_unsafe != p_full
    changed = probe.flagged != (p_full >= probe.threshold)
    kinds = {
        "benign": is_hb & (labels == 0),
        "harmful": is_hb & (labels == 1),
        "xstest_safe": ~is_hb & (labels == 0),
        "xstest_unsafe": ~is_hb & (labels == 1),
    }
    return {
        "layer": bundle.cascade.layer,
        "exit_cut": r(bundle.cascade.exit_cut),
        "exits": {name: r(float(exits[m].mean())) if m.any() else None for name, m in kinds.items()},
        "verdicts_changed": int(changed.sum()),
        "prompts": len(labels),
        "agreement": r(1.0 - float(changed.mean())),
        "probe_alone": binary_metrics(labels[is_hb], p_full[is_hb], probe.threshold),
    }


def probe_section(
    held: HeldOut, bundle: Bundle, probe: ProbeScores, states: dict[int, torch.Tensor]
) -> dict[str, Any]:
    """AUROC and rates on harmful vs benign, catch by source, category accuracy, per-layer ROC."""
    items, labels, is_hb, p = held.items, held.labels, held.is_hb, probe.p_unsafe
    per_source = {}
    for src in sorted({e.source for e in held.harmful}):
        m = np.array([e.source == src for e in items])
        per_source[src] = {"n": int(m.sum()), "caught": r(float((p[m] >= probe.threshold).mean()))}
    # Per-layer ROC of the difference-of-means direction (no refit).
    per_layer: dict[int, dict[str, Any]] = {}
    mean_dir = bundle.tensors.get("alt.refusal_mean")
    if mean_dir is not None:
        for layer, layer_states in states.items():
            s = (layer_states[is_hb] @ mean_dir[layer]).numpy()
            per_layer[layer] = {"auroc": r(auroc(labels[is_hb], s))}
    return {
        "layer": bundle.probe_layer,
        "harmful_vs_benign": binary_metrics(labels[is_hb], p[is_hb], probe.threshold),
        "caught_by_source": per_source,
        "categories": category_section(
            items, bundle.categories, probe.scores.categories, bundle.category_unsure_below
        ),
        "per_layer_mean_difference_auroc": per_layer,
    }


def served_categories(
    host: ModelHost, bundle: Bundle, held: HeldOut, scores: Scores, cfg: EvalConfig
) -> Scores:
    """``scores`` with the category probabilities the classifier serves.

    A bundle with a content head (:attr:`Bundle.reads_content`) reads the
    mean state over each request's words; only the rows
    :func:`category_section` scores (harmful, with a bundle category) are
    computed again.
    """
    if not bundle.reads_content:
        return scores
    rows = [i for i, e in enumerate(held.items) if e.label == 1 and e.category in bundle.categories]
    probs = scores.categories.clone()
    if rows:
        convs = [held.convs[i] for i in rows]
        means = content_means(host, convs, bundle.probe_layer, batch_size=cfg.batch_size)
        probs[rows] = bundle.content_categories(means)
    return replace(scores, categories=probs)


def category_section(
    items: list[Example], cats: list[str], probs: torch.Tensor, unsure_below: float = 0.0
) -> dict[str, Any]:
    """Top-1 category accuracy on harmful prompts whose label is a bundle category.

    Where the bundle's head abstains (top probability under ``unsure_below``;
    Bundle.category_unsure_below), ``top1`` and ``per_category`` count the
    rows it commits to, as a policy's category rules see them, and ``kept``
    says how many; ``top1_all`` counts every row, unsure ones at their top-1.
    The confusion matrix (rows: the label, columns: the head's top-1) holds
    every row, with the unsure ones also counted per label in ``unsure``.
    """
    rows = [i for i, e in enumerate(items) if e.label == 1 and e.category in cats]
    if not rows or not cats:
        return {"rows": 0, "top1": None, "per_category": {}, "confusion": {}}
    predicted = {i: cats[int(probs[i].argmax())] for i in rows}
    sure = {i: float(probs[i].max()) >= unsure_below for i in rows}
    confusion = {c: dict.fromkeys(cats, 0) for c in cats}
    unsure = dict.fromkeys(cats, 0)
    for i in rows:
        confusion[str(items[i].category)][predicted[i]] += 1
        unsure[str(items[i].category)] += not sure[i]
    per: dict[str, dict[str, Any]] = {}
    for c in cats:
        mine = [i for i in rows if items[i].category == c]
        kept = [i for i in mine if sure[i]]
        if mine:
            right = sum(predicted[i] == c for i in kept)
            per[c] = {"n": len(mine), "kept": len(kept), "top1": r(right / len(kept)) if kept else None}
    kept = [i for i in rows if sure[i]]
    correct = sum(predicted[i] == items[i].category for i in kept)
    return {
        "rows": len(rows),
        "unsure_below": unsure_below,
        "kept": len(kept),
        "top1": r(correct / len(kept)) if kept else None,
        "top1_all": r(sum(predicted[i] == items[i].category for i in rows) / len(rows)),
        "top1_lowest": min((v["top1"] for v in per.values() if v["top1"] is not None), default=None),
        "per_category": per,
        "confusion": confusion,
        "unsure": unsure,
    }


def xstest_section(held: HeldOut, probe: ProbeScores) -> dict[str, Any]:
    """Safe prompts flagged and unsafe caught on the held-out XSTest types, per type and as a trade-off."""
    labels, p, flagged = held.labels, probe.p_unsafe, probe.flagged
    xs_idx, xs_safe, xs_unsafe = np.where(~held.is_hb)[0], held.xs_safe, held.xs_unsafe
    by_type: dict[str, dict[str, Any]] = {}
    for i in xs_idx:
        g = str(held.items[i].group)
        d = by_type.setdefault(g, {"label": "unsafe" if labels[i] else "safe", "n": 0, "flagged": 0})
        d["n"] += 1
        d["flagged"] += int(flagged[i])
    for d in by_type.values():
        d["rate"] = r(d["flagged"] / d["n"])
    return {
        "probe": {
            "safe_flagged": r(float(flagged[xs_safe].mean()) if len(xs_safe) else float("nan")),
            "unsafe_caught": r(probe_catch(held, probe)),
            "safe_flagged_count": proportion(flagged[xs_safe].tolist()),
            "unsafe_caught_count": proportion(flagged[xs_unsafe].tolist()),
            "operating_points": operating_points(p[xs_unsafe], p[xs_safe]),
            "auroc": r(auroc(labels[xs_idx], p[xs_idx])),
            "by_type": by_type,
        }
    }


def probe_catch(held: HeldOut, probe: ProbeScores) -> float:
    """Share of held-out XSTest unsafe prompts the probe catches at the bundle's cut."""
    return float(probe.flagged[held.xs_unsafe].mean()) if len(held.xs_unsafe) else float("nan")


def probe_rates(labels: np.ndarray, is_hb: np.ndarray, p: np.ndarray, thr: float) -> dict[str, Any]:
    """Ordinary and XSTest rates of one set of scores at the bundle's threshold."""
    flagged = p >= thr
    is_xs = ~is_hb

    def share(mask: np.ndarray) -> dict[str, Any]:
        hits = flagged[mask]
        return {"rate": r(float(hits.mean())) if len(hits) else None, **proportion(hits.tolist())}

    return {
        "auroc": r(auroc(labels[is_hb], p[is_hb])),
        "benign_flagged": share(is_hb & (labels == 0)),
        "harmful_caught": share(is_hb & (labels == 1)),
        "xstest_auroc": r(auroc(labels[is_xs], p[is_xs])) if is_xs.any() else None,
        "xstest_safe_flagged": share(is_xs & (labels == 0)),
        "xstest_unsafe_caught": share(is_xs & (labels == 1)),
    }


def system_prompt_section(
    host: ModelHost, bundle: Bundle, held: HeldOut, probe: ProbeScores, cfg: EvalConfig
) -> dict[str, Any]:
    """The held-out prompts under system prompts calibration never used, at the bundle's cut.

    How far the cut carries to a chatbot that sends its own system message
    (reported, not a target).
    """
    labels, is_hb = held.labels, held.is_hb
    rows: list[dict[str, Any]] = []
    for system in cfg.system_prompts:
        convs = [system_prompts.with_system(p, system) for p in held.prompts]
        p = served_scores(host, bundle, convs, cfg, "other system prompts")
        rows.append({"system_prompt": system, **probe_rates(labels, is_hb, p, probe.threshold)})
    return {
        "threshold": r(probe.threshold),
        "template_default": probe_rates(labels, is_hb, probe.p_unsafe, probe.threshold),
        "others": rows,
    }


def max_over_views(
    host: ModelHost, bundle: Bundle, views: Sequence[Sequence[Conversation]], cfg: EvalConfig, desc: str
) -> np.ndarray:
    """One score per item: the highest unsafe score among its views, as the classifier decides."""
    owners = [i for i, item in enumerate(views) for _ in item]
    if not owners:
        return np.zeros(len(views))
    scores = served_scores(host, bundle, [v for item in views for v in item], cfg, desc)
    best = np.zeros(len(views))
    np.maximum.at(best, np.array(owners), scores)
    return best
