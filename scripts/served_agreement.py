"""Served verdicts against the offline float32 probe on the held-out prompts (issue 24's agreement target).

The classifier serves a prompt that is alone in its step through the
OpenVINO trunk (``--backend auto``) and prompts packed into one step through
PyTorch in the served dtype (``--dtype auto``: bfloat16 where the CPU has
it). Both are compared here with ``steerguard classify``'s float32 probe, the
reference, on every held-out prompt of ``steerguard eval``: how many
verdicts differ, and the held-out targets (AUROC, harmful caught, benign and
XSTest-safe flagged, XSTest-unsafe caught) as each path serves them. No
setting is chosen here: this measures the adopted defaults.

    python scripts/served_agreement.py steerguard/bundles/default /tmp/out --data ../shared/data
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import bundle_args  # scripts/, on the path when a script runs
import numpy as np

from classifier_service.core import ClassifierCore, CoreConfig
from steerguard.bundle import Bundle
from steerguard.evaluation.config import EvalConfig
from steerguard.evaluation.heldout import HeldOut, load_heldout
from steerguard.evaluation.scoring import binary_metrics
from steerguard.logs import configure_logging
from steerguard.model.chat import Conversation
from steerguard.model.host import ModelHost, resolve_dtype
from steerguard.offline import classify
from steerguard.verdict import Verdict

PACKED = 16  # prompts per served call on the packed path (the classifier's max_batch_size)


def served(core: ClassifierCore, convs: list[Conversation], per_call: int) -> list[Verdict]:
    """Verdicts as ``core`` serves calls of ``per_call`` prompts (1: each alone in its step)."""
    out: list[Verdict] = []
    for start in range(0, len(convs), per_call):
        out.extend(core.classify(convs[start : start + per_call]))
    return out


def summary(held: HeldOut, verdicts: list[Verdict], reference: list[Verdict]) -> dict[str, Any]:
    """The held-out targets as these verdicts give them, and how many differ from the reference."""
    scores = np.array([v.score for v in verdicts])
    unsafe = np.array([v.unsafe for v in verdicts])
    threshold = verdicts[0].threshold
    labels, hb = held.labels, held.is_hb
    pairs = list(zip(verdicts, reference, strict=True))
    return {
        "verdicts_differing": sum(v.unsafe != r.unsafe for v, r in pairs),
        "largest_score_difference": round(max(abs(v.score - r.score) for v, r in pairs), 4),
        "harmful_vs_benign": binary_metrics(labels[hb], scores[hb], threshold),
        "xstest_safe_flagged": int(unsafe[held.xs_safe].sum()),
        "xstest_unsafe_caught": int(unsafe[held.xs_unsafe].sum()),
    }


def main() -> None:
    args = bundle_args.parse(__doc__)
    configure_logging("console", "warning")
    bundle = Bundle.load(args.bundle)
    held = load_heldout(bundle, args.data, EvalConfig())
    convs = held.convs
    reference_host = ModelHost.load(None, max_layers=bundle.classifier_layers, dtype="float32")
    bundle.verify_model(reference_host.identity)
    reference = classify(reference_host, bundle, convs)
    host = ModelHost.load(None, max_layers=bundle.classifier_layers, dtype="auto")
    core = ClassifierCore(host, bundle, None, CoreConfig())
    try:
        core.warm_up()
        report: dict[str, Any] = {
            "bundle_id": bundle.bundle_id,
            "prompts": len(convs),
            "served_dtype": str(next(host.model.parameters()).dtype),
            "cpu_bf16": resolve_dtype("auto") == "bfloat16",
            "backend": core.backend,
            "reference_float32": summary(held, reference, reference),
            "served_alone": summary(held, served(core, convs, 1), reference),
            "served_packed": summary(held, served(core, convs, PACKED), reference),
        }
    finally:
        core.close()
    report["agreement_target"] = "at least 98% of held-out verdicts as the float32 probe's"
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "served_agreement.json").write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
