"""Generation on held-out prompts, through the serving path (AUTO): refusals, fluency, exactness.

Strict-judge (:mod:`steerguard.judge`) refusal rates on harmful and benign
prompts, the perplexity of steered vs unsteered outputs under the unsteered
model, and whether unflagged rows reproduced their unsteered tokens exactly;
the other modes' refusal rates on a small sample, for the plot.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from steerguard import judge
from steerguard.bundle import REFUSAL, Bundle
from steerguard.data import refusals
from steerguard.data.loaders import Example
from steerguard.evaluation.config import EvalConfig
from steerguard.evaluation.heldout import subsample
from steerguard.evaluation.scoring import r
from steerguard.evaluation.stats import proportion
from steerguard.manifest import REFUSAL_HEAD, PolicyInfo
from steerguard.model.chat import Conversation, normalise_request
from steerguard.model.host import ModelHost
from steerguard.offline import Generated, generate_many, perplexity
from steerguard.plan import AutoVector, Mode, SteeringRequest


@dataclass
class Runs:
    """The sampled prompts (harmful first) and their unsteered and AUTO generations."""

    harmful: list[Example]
    benign: list[Example]
    convs: list[Conversation]
    plain: list[Generated]
    auto: list[Generated]

    @property
    def nh(self) -> int:
        return len(self.harmful)

    @property
    def flagged(self) -> list[bool]:
        return [bool(g.applied.verdict and g.applied.verdict.unsafe) for g in self.auto]


def _mean(values: list[bool]) -> float:
    return float(np.mean(values)) if values else float("nan")


def generation_section(
    host: ModelHost, bundle: Bundle, harmful: list[Example], benign: list[Example], cfg: EvalConfig
) -> dict[str, Any]:
    h = subsample(harmful, cfg.gen_harmful, cfg.seed + 3)
    b = subsample(benign, cfg.gen_benign, cfg.seed + 4)
    convs = [normalise_request(e.prompt) for e in h + b]
    kw = generation_kwargs(cfg)
    plain = generate_many(
        host, bundle, convs, [SteeringRequest(Mode.NONE)] * len(convs), desc="unsteered", **kw
    )
    auto = generate_many(host, bundle, convs, [SteeringRequest(Mode.AUTO)] * len(convs), desc="auto", **kw)
    runs = Runs(h, b, convs, plain, auto)
    refused_plain = [judge.is_refusal(g.text) for g in plain]
    refused_auto = [judge.is_refusal(g.text) for g in auto]
    modes, ppl_cat = _other_modes(host, bundle, runs, cfg, refused_plain, refused_auto)
    return {
        "harmful_prompts": runs.nh,
        "benign_prompts": len(b),
        "max_new_tokens": cfg.max_new_tokens,
        "auto": _auto_rates(runs, refused_auto),
        "unsteered": {
            "harmful_refused": r(_mean(refused_plain[: runs.nh])),
            "benign_refused": r(_mean(refused_plain[runs.nh :])),
        },
        "exactness": _exactness(runs),
        "fluency": {**_fluency(host, runs), "ppl_category_mode": r(ppl_cat)},
        "refusal_rate_by_mode_on_sample": modes,
        "refusal_head_vs_vector": _head_comparison(host, bundle, runs, cfg),
        "samples": _samples(runs),
    }


def _informative(runs: Runs, outs: list[Generated], refused: list[bool]) -> dict[str, Any]:
    """Of refused harmful prompts with a category, how many refusals name it (steerguard.data.refusals)."""
    named = [
        refusals.names_category(outs[i].text, str(e.category))
        for i, e in enumerate(runs.harmful)
        if refused[i] and e.category in refusals.NAMES
    ]
    return {"names_category": r(_mean(named)), "names_category_count": proportion(named)}


def _variant(host: ModelHost, runs: Runs, outs: list[Generated], refused: list[bool]) -> dict[str, Any]:
    """One way of answering flagged rows: refusal rates, fluency, informativeness."""
    return {
        "harmful_refused": r(_mean(refused[: runs.nh])),
        "harmful_refused_count": proportion(refused[: runs.nh]),
        "benign_refused": r(_mean(refused[runs.nh :])),
        "benign_refused_count": proportion(refused[runs.nh :]),
        **_fluency(host, replace(runs, auto=outs)),
        **_informative(runs, outs, refused),
    }


def _head_comparison(host: ModelHost, bundle: Bundle, runs: Runs, cfg: EvalConfig) -> dict[str, Any] | None:
    """AUTO's flagged rows answered by the refusal vector vs by the refusal head, side by side.

    AUTO as served is either where the bundle's policy names it for every
    category (the head by default, the vector with ``refusal_head_policy``
    off); the other is generated here.
    """
    if not bundle.has_refusal_head:
        return None
    policy = bundle.manifest.policy
    by = {
        AutoVector.REFUSAL: runs.auto if _only(policy, REFUSAL) else None,
        AutoVector.REFUSAL_HEAD: runs.auto if _only(policy, REFUSAL_HEAD) else None,
    }
    for choice, outs in by.items():
        if outs is None:
            requests = [SteeringRequest(Mode.AUTO, auto_vector=choice)] * len(runs.convs)
            by[choice] = generate_many(
                host, bundle, runs.convs, requests, desc=f"auto, {choice.value}", **generation_kwargs(cfg)
            )
    by_vector, by_head = by[AutoVector.REFUSAL], by[AutoVector.REFUSAL_HEAD]
    assert by_vector is not None and by_head is not None
    return {
        "refusal_vector": _variant(host, runs, by_vector, [judge.is_refusal(g.text) for g in by_vector]),
        "refusal_head": _variant(host, runs, by_head, [judge.is_refusal(g.text) for g in by_head]),
        "served_by_policy": policy.default,
        "head_samples": [
            {"prompt": e.prompt[:160], "head": g.text[:300]}
            for e, g in zip(runs.harmful[:4], by_head, strict=False)
        ],
    }


def _only(policy: PolicyInfo, choice: str) -> bool:
    return policy.default == choice and all(v == choice for v in policy.per_category.values())


def generation_kwargs(cfg: EvalConfig) -> dict[str, Any]:
    return {"max_new_tokens": cfg.max_new_tokens, "batch_size": cfg.gen_batch_size, "progress": cfg.progress}


def _auto_rates(runs: Runs, refused: list[bool]) -> dict[str, Any]:
    nh, flagged = runs.nh, runs.flagged
    per_cat: dict[str, dict[str, Any]] = {}
    for i, e in enumerate(runs.harmful):
        d = per_cat.setdefault(e.category or "uncategorised", {"n": 0, "refused": 0})
        d["n"] += 1
        d["refused"] += int(refused[i])
    for d in per_cat.values():
        d["rate"] = r(d["refused"] / d["n"])
    return {
        "harmful_refused": r(_mean(refused[:nh])),
        "benign_refused": r(_mean(refused[nh:])),
        "harmful_flagged": r(_mean(flagged[:nh])),
        "benign_flagged": r(_mean(flagged[nh:])),
        "harmful_refused_by_category": per_cat,
        "harmful_refused_count": proportion(refused[:nh]),
        "benign_refused_count": proportion(refused[nh:]),
    }


def _exactness(runs: Runs) -> dict[str, Any]:
    """Unflagged AUTO rows must be token-exact copies of their unsteered generations."""
    unflagged = [i for i, f in enumerate(runs.flagged) if not f]
    exact = sum(runs.auto[i].token_ids == runs.plain[i].token_ids for i in unflagged)
    return {
        "unflagged_rows": len(unflagged),
        "identical_to_unsteered": exact,
        "all_identical": exact == len(unflagged),
    }


def _fluency(host: ModelHost, runs: Runs) -> dict[str, Any]:
    """Perplexity of steered harmful rows' outputs vs their unsteered outputs, under the unsteered model."""
    steered = [i for i, f in enumerate(runs.flagged) if f and i < runs.nh]
    convs = [runs.convs[i] for i in steered]
    ppl_steered = perplexity(host, convs, [runs.auto[i].token_ids for i in steered])
    ppl_plain = perplexity(host, convs, [runs.plain[i].token_ids for i in steered])
    return {
        "steered_rows": len(steered),
        "ppl_steered": r(ppl_steered),
        "ppl_unsteered": r(ppl_plain),
        "ppl_ratio": r(ppl_steered / ppl_plain) if ppl_plain and not math.isnan(ppl_plain) else None,
    }


def _category_requests(bundle: Bundle, runs: Runs, few: list[int]) -> list[SteeringRequest]:
    """CATEGORY requests for the sample: the prompt's own category, else the verdict's likeliest."""
    reqs = []
    for i in few:
        c: str | None = runs.harmful[i].category if runs.harmful[i].category in bundle.categories else None
        if c is None:
            v = runs.auto[i].applied.verdict
            c = max(v.category_scores, key=v.category_scores.__getitem__) if v and v.category_scores else None
        reqs.append(SteeringRequest(Mode.CATEGORY, c or bundle.categories[0]))
    return reqs


def _other_modes(
    host: ModelHost,
    bundle: Bundle,
    runs: Runs,
    cfg: EvalConfig,
    refused_plain: list[bool],
    refused_auto: list[bool],
) -> tuple[dict[str, Any], float]:
    """Refusal rates of every mode on a small harmful sample (for the plot) and CATEGORY's perplexity."""
    few = list(range(min(cfg.gen_modes_sample, runs.nh)))
    modes: dict[str, Any] = {
        "n": len(few),
        "none": r(_mean([refused_plain[i] for i in few])) if few else None,
        "auto": r(_mean([refused_auto[i] for i in few])) if few else None,
    }
    if not few:
        return modes, float("nan")
    convs, kw = [runs.convs[i] for i in few], generation_kwargs(cfg)
    ref = generate_many(host, bundle, convs, [SteeringRequest(Mode.REFUSAL)] * len(few), desc="refusal", **kw)
    modes["refusal"] = r(_mean([judge.is_refusal(g.text) for g in ref]))
    if not bundle.categories:
        return modes, float("nan")
    cat_out = generate_many(host, bundle, convs, _category_requests(bundle, runs, few), desc="category", **kw)
    modes["category"] = r(_mean([judge.is_refusal(g.text) for g in cat_out]))
    return modes, perplexity(host, convs, [g.token_ids for g in cat_out])


def _samples(runs: Runs) -> list[dict[str, Any]]:
    examples, nh = runs.harmful + runs.benign, runs.nh
    shown = list(range(min(4, nh))) + list(range(nh, min(nh + 3, len(runs.convs))))
    return [
        {
            "prompt": examples[i].prompt[:200],
            "kind": examples[i].kind,
            "unsteered": runs.plain[i].text[:300],
            "auto": runs.auto[i].text[:300],
            "steering": runs.auto[i].applied.as_dict(),
        }
        for i in shown
    ]
