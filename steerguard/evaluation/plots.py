"""PNG plots for the evaluation report (matplotlib, headless ``Agg`` backend)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from steerguard.evaluation.config import TARGETS


def _plt():  # type: ignore[no-untyped-def]
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


@dataclass
class PlotInput:
    """What the plots draw: the report and the raw scores behind it."""

    out: Path
    report: dict[str, Any]
    labels: np.ndarray
    is_hb: np.ndarray
    p_unsafe: np.ndarray
    states: dict[int, torch.Tensor]
    items: list[Any]
    bundle: Any
    baseline_scores: dict[str, np.ndarray]


def write_plots(out: Path, report: dict[str, Any], **data: Any) -> dict[str, str]:
    """Every plot as a PNG in ``out``; returns {name: file name}."""
    p = PlotInput(out, report, **data)
    plt = _plt()
    return {
        "roc_per_layer": _roc(p, plt),
        "score_histograms": _histograms(p, plt),
        "xstest_by_type": _xstest(p, plt),
        "refusal_rates": _refusals(p, plt),
    }


def _roc(p: PlotInput, plt: Any) -> str:
    """ROC per layer (difference-of-means projection) + the probe and baselines."""
    from sklearn.metrics import roc_curve

    fig, ax = plt.subplots(figsize=(7, 6))
    mean_dir = p.bundle.tensors.get("alt.refusal_mean")
    y = p.labels[p.is_hb]
    if mean_dir is not None:
        cmap = plt.get_cmap("viridis")
        layers = sorted(p.states)
        for layer in layers:
            s = (p.states[layer][p.is_hb] @ mean_dir[layer]).numpy()
            fpr, tpr, _ = roc_curve(y, s)
            ax.plot(fpr, tpr, color=cmap(layer / max(1, len(layers) - 1)), lw=0.8, alpha=0.7)
        sm = plt.cm.ScalarMappable(cmap=cmap, norm=plt.Normalize(0, max(layers)))
        fig.colorbar(sm, ax=ax, label="layer (difference-of-means projection)")
    fpr, tpr, _ = roc_curve(y, p.p_unsafe[p.is_hb])
    auc = p.report["probe"]["harmful_vs_benign"]["auroc"]
    ax.plot(fpr, tpr, color="red", lw=2.2, label=f"probe @ layer {p.bundle.probe_layer} (AUROC {auc})")
    for name, s in p.baseline_scores.items():
        f, t, _ = roc_curve(y, s[p.is_hb])
        auc = p.report["baselines"][name]["harmful_vs_benign"]["auroc"]
        ax.plot(f, t, lw=1.4, ls="--", label=f"{name} ({auc})")
    ax.set_xscale("symlog", linthresh=0.01)
    ax.set_xlabel("false positive rate (benign held-out)")
    ax.set_ylabel("true positive rate (harmful held-out)")
    ax.set_title("ROC per layer, harmful vs benign (held-out)")
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    return _save(fig, p.out / "roc_per_layer.png", plt)


def _histograms(p: PlotInput, plt: Any) -> str:
    """Probe score histograms per kind of prompt, with the bundle's cut."""
    fig, ax = plt.subplots(figsize=(7, 4.5))
    bins = np.linspace(0, 1, 41)
    for k in ("harmful", "benign", "xstest_safe", "xstest_unsafe"):
        m = np.array([e.kind == k for e in p.items])
        if m.any():
            ax.hist(p.p_unsafe[m], bins=bins, alpha=0.5, label=f"{k} (n={int(m.sum())})", density=True)
    thr = p.bundle.threshold
    ax.axvline(thr, color="k", ls="--", lw=1, label=f"threshold {thr:.3f}")
    ax.set_xlabel("probe unsafe score")
    ax.set_ylabel("density")
    ax.set_title("Probe score histograms (held-out)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    return _save(fig, p.out / "score_histograms.png", plt)


def _xstest(p: PlotInput, plt: Any) -> str:
    """XSTest false positives by type (held-out types), probe vs baselines."""
    by_type = p.report["xstest"]["probe"]["by_type"]
    safe_types = sorted(t for t, d in by_type.items() if d["label"] == "safe")
    unsafe_types = sorted(t for t, d in by_type.items() if d["label"] == "unsafe")
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.5), sharey=True)
    for ax, types, title in (
        (axes[0], safe_types, "safe prompts flagged (lower is better)"),
        (axes[1], unsafe_types, "unsafe prompts caught (higher is better)"),
    ):
        xs = np.arange(len(types))
        width = 0.8 / (1 + len(p.baseline_scores))
        ax.bar(xs, [by_type[t]["rate"] for t in types], width, label="probe")
        for j, (name, s) in enumerate(p.baseline_scores.items(), start=1):
            vals = []
            for t in types:
                m = np.array([getattr(e, "group", None) == t for e in p.items])
                vals.append(float((s[m] >= 0.5).mean()) if m.any() else 0.0)
            ax.bar(xs + j * width, vals, width, label=name)
        ax.set_xticks(xs + width * len(p.baseline_scores) / 2)
        ax.set_xticklabels(types, rotation=30, ha="right", fontsize=8)
        ax.set_title(title, fontsize=10)
        ax.set_ylim(0, 1)
    axes[0].legend(fontsize=8)
    fig.suptitle("XSTest held-out types")
    fig.tight_layout()
    return _save(fig, p.out / "xstest_by_type.png", plt)


def _refusals(p: PlotInput, plt: Any) -> str:
    """Refusal rates by steering mode, with the AUTO targets."""
    gen = p.report["generation"]
    fig, ax = plt.subplots(figsize=(7, 4))
    modes = gen["refusal_rate_by_mode_on_sample"]
    names = [m for m in ("none", "refusal", "category", "auto") if modes.get(m) is not None]
    ax.bar(names, [modes[m] for m in names], color="tab:blue", label=f"harmful sample (n={modes['n']})")
    ax.bar(
        ["auto: harmful", "auto: benign"],
        [gen["auto"]["harmful_refused"], gen["auto"]["benign_refused"]],
        color=["tab:red", "tab:green"],
    )
    ax.axhline(TARGETS["auto_harmful_refused"].value, color="tab:red", ls=":", lw=1)
    ax.axhline(TARGETS["auto_benign_refused"].value, color="tab:green", ls=":", lw=1)
    ax.set_ylim(0, 1)
    ax.set_ylabel("refusal rate (strict judge)")
    ax.set_title("Refusal rates by steering mode (held-out)")
    fig.tight_layout()
    return _save(fig, p.out / "refusal_rates.png", plt)


def _save(fig: Any, path: Path, plt: Any) -> str:
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path.name
