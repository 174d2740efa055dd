"""``steerguard calibrate``: labelled prompts → a bundle directory.

The default bundle is rebuilt with::

    SOURCE_DATE_EPOCH=1767225600 steerguard calibrate --data ../shared/data --out steerguard/bundles/default
"""

from __future__ import annotations

import argparse
from typing import Any

from steerguard.calibration.config import DEFAULTS
from steerguard.commands._common import add_model_flags, guarded
from steerguard.settings import add_flag


def register(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "calibrate",
        help="fit the probe, steering vectors and thresholds; write a bundle",
        description="Fit a bundle from labelled prompts (HarmBench/StrongREJECT/refusal_direction/XSTest "
        "files or plain JSONL {prompt, label, category?}) found under --data.",
    )
    add_flag(p, "--data", required=False, default=None, help="directory of labelled prompt files")
    add_flag(p, "--out", required=False, default=None, help="bundle directory to write")
    add_model_flags(p, bundle=False, batch_size=DEFAULTS.batch_size)
    add_flag(p, "--seed", type=int, default=DEFAULTS.seed, help="seed for sampling and splits")
    add_flag(
        p,
        "--benign",
        type=int,
        default=DEFAULTS.benign_calibration,
        help="Alpaca prompts sampled for calibration",
    )
    add_flag(
        p,
        "--no-borderline",
        action="store_true",
        default=False,
        help="leave out the built-in borderline prompts",
    )
    add_flag(
        p,
        "--include-copyright",
        action="store_true",
        default=False,
        help="keep HarmBench copyright behaviours",
    )
    add_flag(
        p, "--no-cache", action="store_true", default=False, help="recompute activations (no on-disk memo)"
    )
    _probe_flags(p)
    add_flag(
        p,
        "--target-refusal",
        type=float,
        default=DEFAULTS.target_refusal,
        help="refusal rate the strength search aims for",
    )
    add_flag(
        p,
        "--max-ppl-ratio",
        type=float,
        default=DEFAULTS.max_ppl_ratio,
        help="largest steered/unsteered perplexity ratio",
    )
    p.set_defaults(func=guarded(main))


def _probe_flags(p: argparse.ArgumentParser) -> None:
    """The probe's head and the rows it is fitted on beyond the labelled prompts."""
    add_flag(
        p,
        "--probe",
        default=DEFAULTS.probe_kind,
        choices=("logistic", "mlp"),
        help="unsafe-probability head: logistic regression (default) or a small MLP ensemble "
        "(fewer benign false flags, more on XSTest-style borderline prompts; see docs/known-limits.md)",
    )
    add_flag(
        p,
        "--mine-negatives",
        type=int,
        default=DEFAULTS.mine_negatives,
        help="add this many benign pool prompts that a first probe scores highest as hard negatives "
        "(0: off; see steerguard/calibration/mining.py)",
    )
    add_flag(
        p, "--mine-pool", type=int, default=DEFAULTS.mine_pool, help="benign pool prompts scored for mining"
    )
    add_flag(
        p,
        "--system-prompts",
        default="builtin",
        help="also fit the probe on a copy of every prompt under one of these system prompts: "
        "'builtin' (default: 12 generic ones), a file with one per line, e.g. your chatbot's own, "
        "or 'none' (the chat template's default system prompt only; see steerguard/data/system_prompts.py)",
    )
    add_flag(
        p,
        "--passage-documents",
        type=int,
        default=DEFAULTS.passage_benign_docs,
        help="benign documents built for the passage probe that reads long texts at every segment "
        "end (0: none; long texts are then read in windows only; see steerguard/passages.py)",
    )
    add_flag(
        p,
        "--no-follow-ups",
        action="store_true",
        help="leave out the built-in follow-up turns fitted as benign rows (steerguard/data/follow_ups.py)",
    )


def main(args: argparse.Namespace) -> int:
    from steerguard.calibration.config import CalibrationConfig
    from steerguard.calibration.pipeline import calibrate
    from steerguard.data import system_prompts
    from steerguard.errors import DataError
    from steerguard.logs import configure_logging
    from steerguard.model.host import ModelHost

    if not args.data or not args.out:
        raise DataError("--data and --out are required")
    configure_logging("console", "warning" if args.quiet else "info")
    cfg = CalibrationConfig(
        seed=args.seed,
        benign_calibration=args.benign,
        builtin_borderline=not args.no_borderline,
        include_copyright=args.include_copyright,
        target_refusal=args.target_refusal,
        max_ppl_ratio=args.max_ppl_ratio,
        probe_kind=args.probe,
        mine_negatives=args.mine_negatives,
        mine_pool=args.mine_pool,
        passage_benign_docs=args.passage_documents,
        follow_ups=not args.no_follow_ups,
        batch_size=args.batch_size,
        progress=not args.quiet,
        use_cache=not args.no_cache,
        system_prompts=system_prompts.resolve(args.system_prompts),
    )
    host = ModelHost.load(args.model, threads=args.threads)
    bundle = calibrate(args.data, host=host, config=cfg)
    bundle_id = bundle.save(args.out)
    print(f"wrote {args.out} ({bundle_id})")
    for line in summary(bundle.manifest):
        print(line)
    return 0


def summary(m: Any) -> list[str]:
    """What a person checks first in a new bundle's manifest (a :class:`steerguard.manifest.Manifest`)."""
    cal = m.metrics["calibration"]
    ref = m.vector("refusal")
    lines = [
        f"probe: layer {m.probe.layer}, threshold {m.probe.threshold:.3f}, "
        f"OOF AUROC {cal['probe_oof_auroc']:.4f}, OOF recall {cal['probe_oof_recall']:.3f}, "
        f"OOF FPR benign {cal['probe_oof_fpr_benign']:.3f} "
        f"/ borderline {cal['probe_oof_fpr_borderline']:.3f}",
        f"refusal vector: {ref.method}, layers {list(ref.layers)}, strength {ref.strength} "
        f"(prompt gain {ref.prompt_gain or 1.0}), "
        f"search refusal {cal['refusal_rate_search']:.2f}, ppl ratio {cal['ppl_ratio_search']:.2f}",
    ]
    mining = (m.splits or {}).get("mining")
    if mining:
        lines.append(
            f"mining: {mining['mined']} hard negatives from {mining['scored']} of {mining['pool']} pool "
            f"prompts (the first probe flagged {mining['first_probe_flagged']:.1%} of them)"
        )
    copies = m.probe.system_prompts
    if copies:
        lines.append(f"system prompts: {copies['count']}, {copies['probe_rows']} probe rows with the copies")
    lines.append(f"categories: {', '.join(m.categories) or 'none'}")
    return lines
