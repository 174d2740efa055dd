"""``steerguard generate``: greedy answers with steering, JSONL in and out.

Modes: ``none`` (unsteered), ``refusal`` (refusal vector on every row),
``category`` (the row's category vector: the line's ``category`` key, else
``--category``, else the probe's top category), ``auto`` (the probe reads its
layer during the prompt's own forward pass and steers only flagged rows, with
the vector the bundle's policy names; the others produce exactly their
unsteered tokens) and ``scans`` (``auto`` plus the refusal vector subtracted on
safe rows). A line may override the mode with its own ``"mode"`` key.
``--auto-vector`` says what a flagged ``auto``/``scans`` row gets: the bundle's
``policy`` (default), the ``refusal`` vector, the verdict's ``category``
vector, or the bundle's ``refusal-head`` (an informative refusal, SafeSwitch).

The output adds ``response``, ``finish_reason`` and ``steering`` (mode, vector,
layers, strength, and the probe verdict for gated modes).
"""

from __future__ import annotations

import argparse
from typing import Any

from steerguard.commands._common import add_jsonl_flags, add_model_flags, guarded
from steerguard.settings import add_flag

MODES = ("none", "refusal", "category", "auto", "scans", "refusal-head")
AUTO_VECTORS = ("policy", "refusal", "category", "refusal-head")


def register(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "generate",
        help="generate answers with activation steering (JSONL in, JSONL out)",
        description="Add response and steering to each JSONL line.",
    )
    add_jsonl_flags(p)
    add_flag(p, "--mode", choices=MODES, default="auto", help="steering mode")
    add_flag(
        p, "--category", default="", help="category for --mode category (else the line's or the probe's)"
    )
    add_flag(
        p,
        "--strength",
        type=float,
        default=0.0,
        help="steering strength relative to residual norm (0: bundle default)",
    )
    add_flag(
        p,
        "--auto-vector",
        choices=AUTO_VECTORS,
        default="policy",
        help="what a row auto/scans flags gets (policy: the bundle's policy)",
    )
    add_flag(p, "--max-new-tokens", type=int, default=64, help="tokens to generate per prompt")
    add_model_flags(p)
    p.set_defaults(func=guarded(main))


def build_requests(
    rows: list[tuple[dict[str, Any], Any]], args: argparse.Namespace, bundle: Any, host: Any, lines: list[int]
) -> list[Any]:
    """One :class:`SteeringRequest` per line (validated against the bundle, errors name the line)."""
    from steerguard.errors import DataError, InvalidInput
    from steerguard.plan import AutoVector, Mode, SteeringRequest, validate

    reqs: list[Any] = []
    need_category: list[int] = []
    for i, (obj, _) in enumerate(rows):
        mode_name = str(obj.get("mode") or args.mode).lower()
        if mode_name not in MODES:
            raise DataError(f"{args.input}:{lines[i]}: unknown mode {mode_name!r}")
        mode = Mode(mode_name)
        category = ""
        if mode is Mode.CATEGORY:
            category = str(obj.get("category") or args.category or "")
            if not category:
                need_category.append(i)
        auto_vector = AutoVector(args.auto_vector) if mode.gated else AutoVector.POLICY
        reqs.append(SteeringRequest(mode, category, float(args.strength), auto_vector))
    if need_category:
        from steerguard.offline import classify

        verdicts = classify(host, bundle, [rows[i][1] for i in need_category], batch_size=args.batch_size)
        for i, v in zip(need_category, verdicts, strict=True):
            top = max(v.category_scores, key=v.category_scores.__getitem__) if v.category_scores else ""
            reqs[i] = SteeringRequest(Mode.CATEGORY, top, float(args.strength))
    for i, r in enumerate(reqs):
        try:
            validate(r, bundle)
        except InvalidInput as exc:
            raise DataError(f"{args.input}:{lines[i]}: {exc.reason}") from exc
    return reqs


def main(args: argparse.Namespace) -> int:
    from steerguard.commands._common import load_host_and_bundle
    from steerguard.errors import DataError
    from steerguard.jsonl import JsonlWriter, read_jsonl, request_of
    from steerguard.offline import generate_many

    if not args.input or not args.output:
        raise DataError("--input and --output are required")
    if args.max_new_tokens < 1:
        raise DataError("--max-new-tokens must be at least 1")
    rows, lines = [], []
    for lineno, obj in read_jsonl(args.input):
        rows.append((obj, request_of(obj, f"{args.input}:{lineno}")))
        lines.append(lineno)
    host, bundle = load_host_and_bundle(args)
    requests = build_requests(rows, args, bundle, host, lines)
    chunk = max(args.batch_size * 8, 32)
    with JsonlWriter(args.output) as out:
        for start in range(0, len(rows), chunk):
            part = rows[start : start + chunk]
            outs = generate_many(
                host,
                bundle,
                [c for _, c in part],
                requests[start : start + chunk],
                max_new_tokens=args.max_new_tokens,
                batch_size=args.batch_size,
                progress=not args.quiet and len(rows) > 1,
            )
            for (obj, _), g in zip(part, outs, strict=True):
                line = dict(obj)
                line["response"] = g.text
                line["finish_reason"] = g.finish_reason
                line["steering"] = g.applied.as_dict()
                out.write(line)
    return 0
