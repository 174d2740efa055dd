"""Run one section of ``steerguard eval`` on a bundle: ``shapes`` or ``responses``.

Why: a bundle that differs from an evaluated one only in one head changes
nothing the other sections read, and the whole evaluation takes over half an
hour on two cores. ``shapes`` (multi-turn chats, long documents) is all a
refitted passage probe (``scripts/refit_passage.py``) changes; ``responses``
(held-out answers) is all an added response probe (``scripts/fit_response.py``)
changes. This writes the section and its target checks as ``SECTION.json``,
the same numbers ``steerguard eval`` writes under that key.

    python scripts/eval_section.py steerguard/bundles/default /tmp/out --section shapes --data ../shared/data
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import bundle_args  # scripts/, on the path when a script runs

from steerguard.bundle import Bundle
from steerguard.evaluation.config import EvalConfig
from steerguard.evaluation.heldout import load_heldout
from steerguard.evaluation.responses import response_section
from steerguard.evaluation.shapes import shape_section
from steerguard.evaluation.targets import response_checks, shape_checks
from steerguard.model.host import ModelHost

SECTIONS = {
    "shapes": (shape_section, shape_checks),
    "responses": (response_section, response_checks),
}


def main() -> None:
    args = bundle_args.parse(__doc__, sections=sorted(SECTIONS))
    section, check = SECTIONS[args.section]
    bundle = Bundle.load(args.bundle)
    host = ModelHost.load(None)
    bundle.verify_model(host.identity)
    cfg = EvalConfig()
    held = load_heldout(bundle, args.data, cfg)
    report: dict[str, Any] = {"bundle_id": bundle.bundle_id, args.section: section(host, bundle, held, cfg)}
    report["checks"] = check(report)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{args.section}.json").write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report["checks"], indent=1))


if __name__ == "__main__":
    main()
