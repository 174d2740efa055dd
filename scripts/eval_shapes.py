"""Run only the conversation-shape section of ``steerguard eval`` (multi-turn, long documents).

Why: a bundle that differs from an evaluated one only in its passage probe
(``scripts/refit_passage.py``) changes nothing the other sections read
(single prompts, system prompts, encodings and generation are all shorter
than one view), and the whole evaluation takes over half an hour on two
cores. This writes the section and its target checks as ``shapes.json``,
the same numbers ``steerguard eval`` writes under ``shapes``.

    python scripts/eval_shapes.py steerguard/bundles/default /tmp/shapes --data ../shared/data
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import bundle_args  # scripts/, on the path when a script runs

from steerguard.bundle import Bundle
from steerguard.evaluation.config import EvalConfig
from steerguard.evaluation.heldout import load_heldout
from steerguard.evaluation.shapes import shape_section
from steerguard.evaluation.targets import shape_checks
from steerguard.model.host import ModelHost


def main() -> None:
    args = bundle_args.parse(__doc__)
    bundle = Bundle.load(args.bundle)
    host = ModelHost.load(None)
    bundle.verify_model(host.identity)
    cfg = EvalConfig()
    held = load_heldout(bundle, args.data, cfg)
    report: dict[str, Any] = {"bundle_id": bundle.bundle_id, "shapes": shape_section(host, bundle, held, cfg)}
    report["checks"] = shape_checks(report)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "shapes.json").write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report["checks"], indent=1))


if __name__ == "__main__":
    main()
