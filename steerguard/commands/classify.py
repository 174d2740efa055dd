"""``steerguard classify``: probe verdicts for a JSONL file of prompts or conversations.

Each input line is ``{"prompt": str}`` or ``{"messages": [{"role", "content"}, ...]}``;
other keys are kept. The output adds ``score`` (unsafe probability), ``unsafe``
(at the bundle's threshold, or ``--threshold``), ``category`` (top category
when unsafe, else null) and ``category_scores``. Every line is validated
before the model loads, so a malformed line fails fast with its number.
The model runs only up to the probe layer.
"""

from __future__ import annotations

import argparse
from typing import Any

from steerguard.commands._common import add_jsonl_flags, add_model_flags, guarded
from steerguard.settings import add_flag


def register(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "classify",
        help="score prompts with the bundle's probe (JSONL in, JSONL out)",
        description="Add score, unsafe, category and category_scores to each JSONL line.",
    )
    add_jsonl_flags(p)
    add_flag(p, "--threshold", type=float, default=None, help="override the bundle's threshold")
    add_model_flags(p)
    p.set_defaults(func=guarded(main))


def read_requests(path: str) -> list[tuple[dict[str, Any], Any]]:
    """Parse and validate every line: ``[(original object, Conversation)]``."""
    from steerguard.jsonl import read_jsonl, request_of

    return [(obj, request_of(obj, f"{path}:{lineno}")) for lineno, obj in read_jsonl(path)]


def main(args: argparse.Namespace) -> int:
    from steerguard.errors import DataError
    from steerguard.jsonl import JsonlWriter
    from steerguard.offline import classify

    if not args.input or not args.output:
        raise DataError("--input and --output are required")
    rows = read_requests(args.input)
    host, bundle = _load(args)
    chunk = max(args.batch_size * 16, 64)
    with JsonlWriter(args.output) as out:
        for start in range(0, len(rows), chunk):
            part = rows[start : start + chunk]
            verdicts = classify(
                host,
                bundle,
                [c for _, c in part],
                batch_size=args.batch_size,
                progress=not args.quiet and len(rows) > args.batch_size,
                threshold=args.threshold,
            )
            for (obj, _), v in zip(part, verdicts, strict=True):
                d = v.as_dict()
                out.write(
                    {
                        **obj,
                        "score": round(d["score"], 6),
                        "unsafe": d["unsafe"],
                        "category": d["category"],
                        "hazard": v.hazard or None,
                        "category_scores": {k: round(s, 6) for k, s in d["category_scores"].items()},
                    }
                )
    return 0


def _load(args: argparse.Namespace) -> tuple[Any, Any]:
    from steerguard.commands._common import load_host_and_bundle

    return load_host_and_bundle(args, max_layers_for_probe=True)
