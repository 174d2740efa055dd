"""Category answers on held-out harmful prompts: ``steerguard eval``'s ``category_answers`` section.

The generation section's harmful prompts (the same seeded sample) are
answered twice, greedily: unsteered, and in AUTO with
``auto_vector=category`` (a flagged row gets its verdict's category vector
at the bundle's strength; an unflagged one is answered unsteered, as served).
:mod:`steerguard.answer_judge` judges each AUTO answer against the
unsteered answer to the same prompt. Reported: passing, not refused and on
topic, unsafe (by the response probe and by operational detail), over all
rows (the targets: what a user gets) and over the flagged rows alone; per
source category; and the unsteered answers judged the same way, for scale.
"""

from __future__ import annotations

from typing import Any

from steerguard import answer_judge
from steerguard.bundle import CATEGORY_PREFIX, Bundle
from steerguard.evaluation.baselines import MiniLM
from steerguard.evaluation.config import EvalConfig
from steerguard.evaluation.generation import generation_kwargs
from steerguard.evaluation.heldout import HeldOut, subsample
from steerguard.model.chat import normalise_request
from steerguard.model.host import ModelHost
from steerguard.offline import generate_many
from steerguard.plan import AutoVector, Mode, SteeringRequest


def category_answer_section(
    host: ModelHost, bundle: Bundle, held: HeldOut, cfg: EvalConfig
) -> dict[str, Any]:
    """The section's figures; ``{"skipped": reason}`` when the bundle cannot judge or steer them."""
    if bundle.response is None or not bundle.categories:
        return {"skipped": "the bundle has no response probe or no category vectors"}
    harmful = subsample(held.harmful, cfg.gen_harmful, cfg.seed + 3)
    prompts = [e.prompt for e in harmful]
    convs = [normalise_request(p) for p in prompts]
    kw = generation_kwargs(cfg)
    plain = generate_many(
        host, bundle, convs, [SteeringRequest(Mode.NONE)] * len(convs), desc="unsteered", **kw
    )
    request = SteeringRequest(Mode.AUTO, auto_vector=AutoVector.CATEGORY)
    auto = generate_many(host, bundle, convs, [request] * len(convs), desc="auto, category", **kw)
    unsteered = [g.text for g in plain]
    judge = answer_judge.Judge(host, bundle, MiniLM().embed, prompts, unsteered)
    judged = judge.judge([g.text for g in auto])
    baseline = judge.judge(unsteered)
    flagged = [i for i, g in enumerate(auto) if g.applied.verdict and g.applied.verdict.unsafe]
    categories = sorted({str(e.category) for e in harmful if e.category})
    return {
        "prompts": len(prompts),
        "strength": bundle.default_strength(CATEGORY_PREFIX + bundle.categories[0]),
        "on_topic_margin": answer_judge.ON_TOPIC_MARGIN,
        "all": answer_judge.summary(judged),
        "flagged_rows": answer_judge.summary([judged[i] for i in flagged]),
        "unsteered": answer_judge.summary(baseline),
        "by_category": {
            c: answer_judge.summary([j for j, e in zip(judged, harmful, strict=True) if e.category == c])
            for c in categories
        },
        "samples": [
            {"prompt": p[:160], "answer": g.text[:300], "passes": j.passes, "unsafe": j.unsafe}
            for p, g, j in list(zip(prompts, auto, judged, strict=True))[:6]
        ],
    }
