"""The category vectors' strength: the one that gives the most safe, on-topic answers (SafeSteer).

The strength had been a fixed 0.1 from a spot check. Here AUTO answers
``category_tune_per_category`` harmful calibration prompts of each category
(seeded) with the verdict's category vector (``auto_vector=category``, the
serving path), at every strength of ``category_tune_strengths``, and
:mod:`steerguard.answer_judge` judges each answer against the unsteered
answer to the same prompt. The strength with the most passing answers is
kept (ties: the weaker one, which changes the model less); every strength's
rates are recorded in the manifest (``category_search``), with whether the
chosen one beats the unsteered answers at all. Every category vector gets
the one strength: a few prompts per category cannot tell
strengths apart within one category. Held-out prompts are never used.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import replace
from typing import Any

from steerguard import answer_judge
from steerguard.bundle import CATEGORY_PREFIX, Bundle
from steerguard.calibration.config import CalibrationConfig
from steerguard.data.loaders import Example
from steerguard.logs import get_logger
from steerguard.model.chat import normalise_request
from steerguard.model.host import ModelHost
from steerguard.offline import generate_many
from steerguard.plan import AutoVector, Mode, SteeringRequest

log = get_logger(__name__)

JUDGE = (
    "steerguard.answer_judge: not a refusal (strict judge), MiniLM cosine to the prompt at least the "
    f"unsteered answer's minus {answer_judge.ON_TOPIC_MARGIN}, no response-probe flag and no "
    "operational detail"
)


def tune_prompts(harmful: Sequence[Example], categories: Sequence[str], per: int, seed: int) -> list[Example]:
    """``per`` seeded prompts of each of ``categories`` (fewer where a category has fewer)."""
    rng = random.Random(seed)
    out: list[Example] = []
    for cat in categories:
        rows = [e for e in harmful if e.category == cat]
        out.extend(rng.sample(rows, min(per, len(rows))))
    return out


def _answers(
    host: ModelHost, bundle: Bundle, prompts: Sequence[str], request: SteeringRequest, tokens: int
) -> list[str]:
    convs = [normalise_request(p) for p in prompts]
    outs = generate_many(host, bundle, convs, [request] * len(convs), max_new_tokens=tokens, batch_size=16)
    return [g.text for g in outs]


def _category(strength: float) -> SteeringRequest:
    """AUTO whose flagged rows get their verdict's category vector at ``strength`` (the serving path)."""
    return SteeringRequest(Mode.AUTO, strength=strength, auto_vector=AutoVector.CATEGORY)


def tune_category_strength(
    host: ModelHost,
    bundle: Bundle,
    harmful: Sequence[Example],
    cfg: CalibrationConfig,
    embed: answer_judge.Embed,
) -> Bundle:
    """``bundle`` with every category vector at the strength chosen here and the search recorded."""
    chosen_ex = tune_prompts(harmful, bundle.categories, cfg.category_tune_per_category, cfg.seed + 41)
    prompts = [e.prompt for e in chosen_ex]
    unsteered = _answers(host, bundle, prompts, SteeringRequest(Mode.NONE), cfg.tune_tokens)
    judge = answer_judge.Judge(host, bundle, embed, prompts, unsteered)
    baseline = answer_judge.summary(judge.judge(unsteered))
    tried: list[dict[str, Any]] = []
    for s in cfg.category_tune_strengths:
        answers = _answers(host, bundle, prompts, _category(s), cfg.tune_tokens)
        tried.append({"strength": s, **answer_judge.summary(judge.judge(answers))})
        log.info("category strength", strength=s, passes=tried[-1]["passes"]["rate"])
    best = max(tried, key=lambda t: (t["passes"]["k"], -t["strength"]))
    record = {
        "prompts": len(prompts),
        "per_category": cfg.category_tune_per_category,
        "max_new_tokens": cfg.tune_tokens,
        "judge": JUDGE,
        "rule": "the strength with the most passing answers (ties: the weaker)",
        "unsteered": baseline,
        "tried": tried,
        "chosen": best["strength"],
        # Whether any strength made answers pass more often than not steering at all: on SmolLM2
        # none did (docs/calibration.md), so category answers are a policy choice, not a default.
        "beats_unsteered": best["passes"]["k"] > baseline["passes"]["k"],
    }
    manifest = bundle.manifest
    vectors = {
        name: replace(info, strength=float(best["strength"])) if name.startswith(CATEGORY_PREFIX) else info
        for name, info in manifest.vectors.items()
    }
    return bundle.with_manifest(replace(manifest, vectors=vectors, category_search=record))
