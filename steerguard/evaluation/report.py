"""``steerguard eval``: every target measured on held-out prompts, in one run.

The steps, each in its own module:

- :mod:`.heldout`: calibration's held-out split, rebuilt from the bundle's record;
- :mod:`.scoring`: the probe on those prompts (AUROC, rates at the bundle's
  cut, XSTest by type, trade-off curves) and under system prompts
  calibration never used (reported, not a target);
- :mod:`.baselines`: keyword blocklist, MiniLM + logistic regression and the
  chat model's own verdict, on the same prompts;
- :mod:`.encodings`: held-out harmful prompts in base64, rot13, reversed text and
  leetspeak, judged as the classifier judges them (with their readings);
- :mod:`.shapes`: multi-turn chats and long documents built from the held-out
  split, judged through the classifier's views;
- :mod:`.generation`: AUTO generation through the serving path;
- :mod:`.targets`: each target of :data:`.config.TARGETS` checked;
- :mod:`.plots`: PNG plots.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from steerguard import judge
from steerguard.bundle import Bundle
from steerguard.calibration.config import CalibrationConfig
from steerguard.evaluation.baselines import baseline_scores, baseline_section
from steerguard.evaluation.category_answers import category_answer_section
from steerguard.evaluation.config import TARGETS, EvalConfig
from steerguard.evaluation.encodings import encoding_section
from steerguard.evaluation.generation import generation_section
from steerguard.evaluation.heldout import HeldOut, load_heldout
from steerguard.evaluation.plots import write_plots
from steerguard.evaluation.responses import response_section
from steerguard.evaluation.scans import scans_section
from steerguard.evaluation.scoring import (
    ProbeScores,
    cascade_section,
    cascaded,
    probe_catch,
    probe_section,
    served_categories,
    system_prompt_section,
    xstest_section,
)
from steerguard.evaluation.shapes import shape_section
from steerguard.evaluation.targets import checks
from steerguard.logs import get_logger
from steerguard.model.activations import collect_states
from steerguard.model.host import ModelHost
from steerguard.model.states import cached_states

__all__ = ["EvalConfig", "evaluate"]

log = get_logger(__name__)


def eval_states(host: ModelHost, bundle: Bundle, held: HeldOut, cfg: EvalConfig) -> dict[int, torch.Tensor]:
    """Last-token states of every held-out prompt at every layer the host runs (memoised when it runs all)."""
    n_layers = bundle.manifest.model.num_layers
    layers = list(range(min(n_layers, host.loaded_layers)))
    if host.loaded_layers == n_layers:
        stacked = cached_states(host, held.convs, batch_size=cfg.batch_size, progress=cfg.progress)
        return {layer: stacked[:, layer] for layer in layers}
    return collect_states(host, held.convs, layers, batch_size=cfg.batch_size, progress=cfg.progress)


def _data_section(held: HeldOut, data_dir: str | Path) -> dict[str, Any]:
    labels, is_xs = held.labels, ~held.is_hb
    return {
        "root": str(data_dir),
        "sources": [s.as_dict() for s in held.data.sources],
        "warnings": held.warnings,
        "heldout_counts": {
            "harmful": len(held.harmful),
            "benign": len(held.benign),
            "xstest_safe": int(((labels == 0) & is_xs).sum()),
            "xstest_unsafe": int(((labels == 1) & is_xs).sum()),
        },
        "xstest_heldout_types": sorted({str(e.group) for e in held.xstest}),
    }


def evaluate(
    data_dir: str | Path,
    out_dir: str | Path,
    *,
    bundle: Bundle,
    host: ModelHost,
    config: EvalConfig | None = None,
) -> dict[str, Any]:
    """Measure every target on held-out prompts; write ``report.json`` and plots to ``out_dir``."""
    cfg = config or EvalConfig()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    t0 = t = time.time()
    timings: dict[str, float] = {}
    held = load_heldout(bundle, data_dir, cfg)
    states = eval_states(host, bundle, held, cfg)
    scores = bundle.score(states[bundle.probe_layer])
    served = served_categories(host, bundle, held, scores, cfg)
    probe = ProbeScores(served, cascaded(bundle, states), bundle.threshold)
    timings["probe_s"] = time.time() - t
    report: dict[str, Any] = {
        "bundle_id": bundle.bundle_id,
        "bundle": bundle.info(),
        "data": _data_section(held, data_dir),
        "targets": {t.name: t.value for t in TARGETS.values()},
        "probe": probe_section(held, bundle, probe, states),
        "xstest": xstest_section(held, probe),
        "cascade": cascade_section(held, bundle, probe, scores),
    }
    t = time.time()
    report["system_prompts"] = system_prompt_section(host, bundle, held, probe, cfg)
    timings["system_prompts_s"] = time.time() - t
    t = time.time()
    hard_weight = CalibrationConfig.from_record(_recorded_config(bundle)).hard_weight
    baselines = baseline_scores(host, held, cfg, hard_weight)
    report["baselines"] = baseline_section(held, baselines, probe_catch(held, probe))
    timings["baselines_s"] = time.time() - t
    t = time.time()
    report["encodings"] = encoding_section(host, bundle, held.harmful, held.benign, cfg)
    timings["encodings_s"] = time.time() - t
    t = time.time()
    report["shapes"] = shape_section(host, bundle, held, cfg)
    timings["shapes_s"] = time.time() - t
    t = time.time()
    report["responses"] = response_section(host, bundle, held, cfg)
    timings["responses_s"] = time.time() - t
    t = time.time()
    report["generation"] = generation_section(host, bundle, held.harmful, held.benign, cfg)
    timings["generation_s"] = time.time() - t
    t = time.time()
    report["scans"] = scans_section(host, bundle, held, cfg)
    timings["scans_s"] = time.time() - t
    t = time.time()
    report["category_answers"] = category_answer_section(host, bundle, held, cfg)
    timings["category_answers_s"] = time.time() - t
    report["checks"] = checks(report)
    timings["total_s"] = time.time() - t0
    report["timings_s"] = {k: round(v, 1) for k, v in timings.items()}
    report["judge"] = judge.__doc__.strip().splitlines()[0] if judge.__doc__ else "steerguard.judge"
    report["plots"] = _plots(out, report, held, probe, states, bundle, baselines)
    (out / "report.json").write_text(json.dumps(report, indent=2, sort_keys=False) + "\n")
    return report


def _recorded_config(bundle: Bundle) -> dict[str, Any]:
    return bundle.manifest.calibration.config if bundle.manifest.calibration is not None else {}


def _plots(
    out: Path,
    report: dict[str, Any],
    held: HeldOut,
    probe: ProbeScores,
    states: dict[int, torch.Tensor],
    bundle: Bundle,
    baselines: dict[str, np.ndarray],
) -> dict[str, Any]:
    try:
        return write_plots(
            out,
            report,
            labels=held.labels,
            is_hb=held.is_hb,
            p_unsafe=probe.p_unsafe,
            states=states,
            items=held.items,
            bundle=bundle,
            baseline_scores=baselines,
        )
    except Exception as exc:  # plots are a convenience; the numbers matter more
        log.warning("plots failed", error=str(exc))
        return {"error": str(exc)}
