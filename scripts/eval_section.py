"""Run one section of ``steerguard eval`` on a bundle: ``probe``, ``shapes``, ``responses``, ...

Why: a bundle that differs from an evaluated one only in one head changes
nothing the other sections read, and the whole evaluation takes over half an
hour on two cores. ``shapes`` (multi-turn chats, long documents) is all a
refitted passage probe (``scripts/refit_passage.py``) changes; ``responses``
(held-out answers) is all an added response probe (``scripts/fit_response.py``)
changes; ``generation`` (AUTO's answers, and the refusal head beside the
refusal vector) is all an added refusal head (``scripts/fit_refusal_head.py``)
changes; ``categories`` is all a refitted category head
(``scripts/fit_categories.py``) changes; ``category_answers`` (AUTO's
answers with category vectors, judged) is all a tuned category strength
(``scripts/tune_categories.py``) changes; ``probe`` (the prompt probe,
XSTest, other system prompts, encoded
requests and the early exit's own section) is what an added early exit
(``scripts/fit_cascade.py``) changes besides ``shapes``. This writes the
section and its target checks as ``SECTION.json``, the same numbers
``steerguard eval`` writes under that key.

    python scripts/eval_section.py steerguard/bundles/default /tmp/out --section shapes --data ../shared/data
    python scripts/eval_section.py ... --section shapes --shapes long_document long_document_middle
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import bundle_args  # scripts/, on the path when a script runs

from steerguard.bundle import Bundle
from steerguard.evaluation.category_answers import category_answer_section
from steerguard.evaluation.config import EvalConfig
from steerguard.evaluation.encodings import encoding_section
from steerguard.evaluation.generation import generation_section
from steerguard.evaluation.heldout import HeldOut, load_heldout
from steerguard.evaluation.report import eval_states
from steerguard.evaluation.responses import response_section
from steerguard.evaluation.scans import scans_section
from steerguard.evaluation.scoring import (
    ProbeScores,
    cascade_section,
    cascaded,
    category_section,
    probe_section,
    served_categories,
    system_prompt_section,
    xstest_section,
)
from steerguard.evaluation.shapes import shape_section
from steerguard.evaluation.targets import (
    category_answer_checks,
    category_checks,
    generation_checks,
    probe_checks,
    response_checks,
    shape_checks,
)
from steerguard.model.host import ModelHost
from steerguard.model.states import cached_states

SECTIONS = {
    "generation": (
        lambda host, bundle, held, cfg: generation_section(host, bundle, held.harmful, held.benign, cfg),
        generation_checks,
    ),
    "scans": (scans_section, lambda report: {}),
    "category_answers": (category_answer_section, category_answer_checks),
    "shapes": (shape_section, shape_checks),
    "responses": (response_section, response_checks),
}


def probe_report(host: ModelHost, bundle: Bundle, held: HeldOut, cfg: EvalConfig) -> dict[str, Any]:
    """The report's probe-side sections, as ``steerguard eval`` computes them, and their checks."""
    states = eval_states(host, bundle, held, cfg)
    scores = bundle.score(states[bundle.probe_layer])
    probe = ProbeScores(
        served_categories(host, bundle, held, scores, cfg), cascaded(bundle, states), bundle.threshold
    )
    report: dict[str, Any] = {
        "probe": probe_section(held, bundle, probe, states),
        "xstest": xstest_section(held, probe),
        "cascade": cascade_section(held, bundle, probe, scores),
        "system_prompts": system_prompt_section(host, bundle, held, probe, cfg),
        "encodings": encoding_section(host, bundle, held.harmful, held.benign, cfg),
    }
    report["checks"] = probe_checks(report)
    return report


def category_report(host: ModelHost, bundle: Bundle, held: HeldOut, cfg: EvalConfig) -> dict[str, Any]:
    """Top-1 category accuracy on the held-out harmful prompts, as the classifier serves categories."""
    states = cached_states(
        host, held.convs, batch_size=cfg.batch_size, progress=cfg.progress, layers=[bundle.probe_layer]
    )[:, 0]
    served = served_categories(host, bundle, held, bundle.score(states), cfg)
    section = category_section(held.items, bundle.categories, served.categories, bundle.category_unsure_below)
    return {"categories": section, "checks": category_checks(section)}


def main() -> None:
    args = bundle_args.parse(__doc__, sections=sorted([*SECTIONS, "probe", "categories"]))
    bundle = Bundle.load(args.bundle)
    host = ModelHost.load(None)
    bundle.verify_model(host.identity)
    cfg = EvalConfig(shapes=tuple(args.shapes))
    held = load_heldout(bundle, args.data, cfg)
    report: dict[str, Any] = {"bundle_id": bundle.bundle_id}
    if args.section == "probe":
        report.update(probe_report(host, bundle, held, cfg))
    elif args.section == "categories":
        report.update(category_report(host, bundle, held, cfg))
    else:
        section, check = SECTIONS[args.section]
        report[args.section] = section(host, bundle, held, cfg)
        report["checks"] = check(report)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{args.section}.json").write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report["checks"], indent=1))


if __name__ == "__main__":
    main()
