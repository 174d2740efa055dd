"""``steerguard eval``: held-out metrics, baselines and plots for a bundle.

Writes ``report.json`` and PNG plots to ``--out`` and prints one line per
target (PASS/MISS). The full run takes ~15 minutes on 2 CPU cores;
``--quick`` caps every held-out set for a smoke run.
"""

from __future__ import annotations

import argparse
from typing import Any

from steerguard.commands._common import add_model_flags, guarded
from steerguard.evaluation.config import DEFAULTS
from steerguard.settings import add_flag


def register(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "eval",
        help="evaluate a bundle on held-out prompts against targets and baselines",
        description="Measure the probe, XSTest over-refusal, baselines and AUTO generation on prompts "
        "not used in calibration; write report.json and PNG plots.",
    )
    add_flag(p, "--data", default=None, help="directory of labelled prompt files (as given to calibrate)")
    add_flag(p, "--out", default="reports/eval", help="report directory")
    add_flag(
        p,
        "--gen-harmful",
        type=int,
        default=DEFAULTS.gen_harmful,
        help="held-out harmful prompts generated in AUTO",
    )
    add_flag(
        p,
        "--gen-benign",
        type=int,
        default=DEFAULTS.gen_benign,
        help="held-out benign prompts generated in AUTO",
    )
    add_flag(
        p, "--max-new-tokens", type=int, default=DEFAULTS.max_new_tokens, help="tokens generated per prompt"
    )
    add_flag(
        p, "--no-self-verdict", action="store_true", default=False, help="skip the LLM self-verdict baseline"
    )
    add_flag(p, "--quick", action="store_true", default=False, help="small subsets (smoke run)")
    add_model_flags(p, batch_size=DEFAULTS.batch_size)
    p.set_defaults(func=guarded(main))


def main(args: argparse.Namespace) -> int:
    import json

    from steerguard.commands._common import load_host_and_bundle
    from steerguard.errors import DataError
    from steerguard.evaluation.config import EvalConfig
    from steerguard.evaluation.report import evaluate
    from steerguard.evaluation.targets import summary_lines, system_prompt_lines
    from steerguard.logs import configure_logging

    if not args.data:
        raise DataError("--data is required")
    configure_logging("console", "warning")
    cfg = EvalConfig(
        gen_harmful=args.gen_harmful,
        gen_benign=args.gen_benign,
        max_new_tokens=args.max_new_tokens,
        batch_size=args.batch_size,
        self_verdict=not args.no_self_verdict,
        progress=not args.quiet,
    )
    if args.quick:
        cfg.quick()
    host, bundle = load_host_and_bundle(args)
    report = evaluate(args.data, args.out, bundle=bundle, host=host, config=cfg)
    print(f"report: {args.out}/report.json ({report['timings_s']['total_s']} s)")
    for line in summary_lines(report) + system_prompt_lines(report):
        print(line)
    if report["data"]["warnings"]:
        print("warnings:", json.dumps(report["data"]["warnings"]))
    return 0
