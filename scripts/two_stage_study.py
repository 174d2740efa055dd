"""The SafeSwitch two-stage probe, studied: does reading the state after a few pilot tokens help?

SafeSwitch (arXiv 2502.01042) judges a request twice: a first probe on the
prompt's last state, then, after the model has written n *pilot* tokens of
its answer, a second probe on the state there, where the model has begun to
show what it is about to do. This script measures whether that helps the
embedded model. Its answer decides whether the steer service's ``auto``
mode adopts it; the result is in docs/evaluation.md ("Two-stage probe").

1. ``--calibration``: on the bundle's own calibration split, the unsteered
   model writes ``--pilot`` greedy tokens after every prompt (the chat
   template's generation prompt, as the steer service would); the probe
   layer's state is read at the prompt's end (stage 1) and after each number
   of pilot tokens in ``--at``. Probes on each are fitted 5-fold with the
   bundle probe's C, sample weights and threshold rule, and the rules
   (stage 1 alone, stage 2 alone, both must flag, the mean of the two
   scores) are compared out of fold. Saves the states to OUT.
2. ``--heldout RULE AT``: once the rule is chosen, fits stage 2 on all
   calibration rows and reports, on the held-out prompts, the bundle's own
   probe (stage 1 as served) beside the rule: harmful caught, ordinary
   benign flagged, XSTest held-out types safe flagged and unsafe caught.

    python scripts/two_stage_study.py steerguard/bundles/default /tmp/two-stage --calibration
    python scripts/two_stage_study.py steerguard/bundles/default /tmp/two-stage --heldout both 8
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from steerguard.bundle import Bundle
from steerguard.calibration.probe import fit_binary, sample_weights, standardiser
from steerguard.calibration.threshold import choose_threshold
from steerguard.data.examples import Example
from steerguard.model.activations import last_token_states
from steerguard.model.chat import normalise_request
from steerguard.model.host import ModelHost

RULES = ("stage1", "stage2", "both", "mean")


@torch.inference_mode()
def pilot_states(
    host: ModelHost, prompts: Sequence[str], layer: int, pilot: int, at: Sequence[int]
) -> np.ndarray:
    """``[N, 1 + len(at), H]``: the layer's state at the prompt's end, then after ``at`` pilot tokens.

    The pilot tokens are the unsteered model's greedy continuation; a row
    whose answer ends sooner is read at its last token.
    """
    out = np.zeros((len(prompts), 1 + len(at), host.identity.hidden_size), dtype=np.float32)
    order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
    pad = host.tokenizer.pad_token_id or 0
    for start in range(0, len(order), 16):
        idx = order[start : start + 16]
        batch = host.encode([normalise_request(prompts[i]) for i in idx])
        first = last_token_states(host, batch, [layer])[layer]
        made = host.model.generate(
            input_ids=batch.input_ids,
            attention_mask=batch.attention_mask,
            max_new_tokens=pilot,
            do_sample=False,
            pad_token_id=pad,
        )[:, batch.input_ids.shape[1] :]
        rows = [batch.input_ids[r][batch.attention_mask[r].bool()].tolist() for r in range(len(idx))]
        for r in range(len(idx)):
            out[idx[r], 0] = first[r].numpy()
        for j, n in enumerate(at, start=1):
            grown = [row + [t for t in made[r, :n].tolist() if t != pad] for r, row in enumerate(rows)]
            states = last_token_states(host, host.pad(grown), [layer])[layer]
            for r in range(len(idx)):
                out[idx[r], j] = states[r].numpy()
    return out


def combined(rule: str, s1: np.ndarray, s2: np.ndarray, cut1: float, cut2: float) -> np.ndarray:
    """Flags under ``rule`` from the two stages' scores and cuts."""
    if rule == "stage1":
        return s1 >= cut1
    if rule == "stage2":
        return s2 >= cut2
    if rule == "both":
        return (s1 >= cut1) & (s2 >= cut2)
    raise ValueError(rule)


def oof_scores(x: np.ndarray, labels: np.ndarray, kinds: Sequence[str], c: float, hard: float) -> np.ndarray:
    from sklearn.model_selection import StratifiedKFold

    out = np.zeros(len(labels))
    for train, test in StratifiedKFold(5, shuffle=True, random_state=0).split(x, labels):
        w = sample_weights(labels[train], [kinds[i] for i in train], hard)
        probe = fit_binary(x[train], labels[train], w, c=c, standard=standardiser(x[train]))
        out[test] = probe.predict(x[test])
    return out


def report(flags: np.ndarray, labels: np.ndarray, kinds: Sequence[str]) -> dict[str, Any]:
    """Flag rates per kind of row (harmful: caught; benign kinds: flagged)."""
    kinds_arr = np.array(list(kinds))
    out: dict[str, Any] = {}
    for kind in sorted(set(kinds_arr.tolist())):
        m = kinds_arr == kind
        out[kind] = f"{int(flags[m].sum())}/{int(m.sum())}"
    out["harmful_all"] = f"{int(flags[labels == 1].sum())}/{int((labels == 1).sum())}"
    out["benign_all"] = f"{int(flags[labels == 0].sum())}/{int((labels == 0).sum())}"
    return out


def calibration_rows(bundle: Bundle, data: str) -> tuple[Any, list[Example]]:
    from steerguard.calibration.config import CalibrationConfig
    from steerguard.calibration.pipeline import _load

    record = bundle.manifest.calibration
    cfg = CalibrationConfig.from_record(dict(record.config) if record else {})
    run = _load(data, None, None, cfg, None)
    return run.host, list(run.calib)


def probe_settings(bundle: Bundle) -> tuple[float, float]:
    """The bundle probe's C and hard-negative weight, which stage 2 is fitted with too."""
    probe = bundle.manifest.probe
    return float(probe.c or 0.05), float(probe.hard_negative_weight or 1.0)


def rule_flags(
    rule: str, s1: np.ndarray, s2: np.ndarray, labels: np.ndarray, kinds: Sequence[str]
) -> np.ndarray:
    """Flags under ``rule``; every cut comes from the bundle's threshold rule on ``labels``."""

    def cut(scores: np.ndarray) -> float:
        return choose_threshold(labels, scores, kinds).threshold

    if rule == "mean":
        both = (s1 + s2) / 2
        return both >= cut(both)
    return combined(rule, s1, s2, cut(s1), cut(s2))


def study_calibration(args: argparse.Namespace, bundle: Bundle) -> dict[str, Any]:
    saved = Path(args.out) / "calibration.npz"
    if not saved.exists():  # the pilot tokens take ~11 minutes on 2 cores; read them once
        host, calib = calibration_rows(bundle, args.data)
        states = pilot_states(host, [e.prompt for e in calib], bundle.probe_layer, args.pilot, args.at)
        labels, kinds = np.array([e.label for e in calib]), np.array([e.kind for e in calib])
        np.savez(saved, states=states, labels=labels, kinds=kinds)
    loaded = np.load(saved)
    states, labels, kinds = loaded["states"], loaded["labels"], [str(k) for k in loaded["kinds"]]
    c, hard = probe_settings(bundle)
    s1 = oof_scores(states[:, 0], labels, kinds, c, hard)
    out: dict[str, Any] = {"rows": len(labels), "pilot": args.pilot}
    for j, n in enumerate(args.at, start=1):
        s2 = oof_scores(states[:, j], labels, kinds, c, hard)
        for rule in RULES:
            if rule == "stage1" and j > 1:
                continue
            key = "stage1" if rule == "stage1" else f"{rule}@{n}"
            out[key] = report(rule_flags(rule, s1, s2, labels, kinds), labels, kinds)
    return out


def study_heldout(args: argparse.Namespace, bundle: Bundle) -> dict[str, Any]:
    from steerguard.evaluation.config import EvalConfig
    from steerguard.evaluation.heldout import load_heldout

    rule, n = args.heldout[0], int(args.heldout[1])
    saved = np.load(Path(args.out) / "calibration.npz")
    j = 1 + list(args.at).index(n)
    labels, kinds = saved["labels"], [str(k) for k in saved["kinds"]]
    c, hard = probe_settings(bundle)
    x2 = saved["states"][:, j]
    stage2 = fit_binary(x2, labels, sample_weights(labels, kinds, hard), c=c, standard=standardiser(x2))
    cut2 = choose_threshold(labels, oof_scores(x2, labels, kinds, c, hard), kinds).threshold
    held = load_heldout(bundle, args.data, EvalConfig())
    host = ModelHost.load(None)
    states = pilot_states(host, held.prompts, bundle.probe_layer, args.pilot, args.at)
    s1 = bundle.score(torch.from_numpy(states[:, 0])).unsafe.numpy()
    s2 = stage2.predict(states[:, j])
    h_labels = np.array([e.label for e in held.items])
    h_kinds = [e.kind for e in held.items]
    served = s1 >= bundle.threshold
    if rule == "mean":
        raise SystemExit("the mean rule has no served stage-1 scale; compare it on calibration only")
    flags = combined(rule, s1, s2, bundle.threshold, cut2)
    return {
        "rule": rule,
        "at": n,
        "cut2": cut2,
        "stage1": report(served, h_labels, h_kinds),
        rule: report(flags, h_labels, h_kinds),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("bundle")
    parser.add_argument("out")
    parser.add_argument("--data", default="../shared/data")
    parser.add_argument("--pilot", type=int, default=8, help="pilot tokens written after each prompt")
    parser.add_argument("--at", type=int, nargs="+", default=[2, 4, 8], help="pilot counts read")
    mode = parser.add_mutually_exclusive_group(required=True)
    mode.add_argument("--calibration", action="store_true")
    mode.add_argument("--heldout", nargs=2, metavar=("RULE", "AT"))
    args = parser.parse_args()
    torch.manual_seed(0)
    Path(args.out).mkdir(parents=True, exist_ok=True)
    bundle = Bundle.load(args.bundle)
    result = study_calibration(args, bundle) if args.calibration else study_heldout(args, bundle)
    name = "calibration.json" if args.calibration else "heldout.json"
    (Path(args.out) / name).write_text(json.dumps(result, indent=1))
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
